"""demo_large in the paper's regime: fine-tune the width-8 letters trunk (Adam, the head at 10x).

configs/demo_large.py (ResNet-18 at width 8, 8 epochs) started from the trunk of
`configs/letters.py --config.model.width=8`, exported and converted as a torchvision file is
(docs/weights.md, "A pretrained trunk made offline"). `python scripts/study.py finetune_batch` trains the
large-batch grid on it.
"""

from configs import demo_large


def get_config():
    config = demo_large.get_config()
    config.model.pretrained = "~/bridgegap_weights/letters_resnet18_w8"  # the converted letters trunk
    # The lowest lr of the sweep within 1 validation mAP of its best, 3x below the from-scratch lr
    # (docs/weights.md, "A pretrained trunk made offline": 3e-4 gave 94.02, 1e-3 94.87; 1e-4 90.60).
    config.train.lr = 3e-4
    return config
