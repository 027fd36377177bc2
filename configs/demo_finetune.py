"""The demo in the paper's regime: fine-tune a pretrained trunk (Adam, the head at 10x, a fine-tuning lr).

configs/demo.py with its ResNet-18 (width 16) started from the stand-in for an ImageNet trunk: the
trunk trained on the built-in letters (configs/letters.py), exported and converted as a torchvision
file is (docs/weights.md, "A pretrained trunk made offline"). `python scripts/study.py finetune` trains the
demo table with it and from scratch.
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.model.pretrained = "~/bridgegap_weights/letters_resnet18_w16"  # the converted letters trunk
    # The lowest lr of the sweep within 1 validation mAP of its best, 3x below the from-scratch lr
    # (docs/weights.md, "A pretrained trunk made offline": 3e-4 gave 86.08, 1e-3 86.19; 1e-4 84.29).
    config.train.lr = 3e-4
    return config
