"""The built-in demo: digit mosaics from scikit-learn (no download), a small ResNet-18 at 96x96.

Trains in a few minutes on 2 CPU cores. Trained from scratch, so a larger lr than the paper's
fine-tuning lr.

`--config=configs/demo.py:tiny` is the same run shrunk to seconds, a smoke test of the whole
command (the tests run it): 32x32 inputs, a width-8 ResNet-18, batch 64 (25 steps per epoch),
2 epochs, a checkpoint every 10 steps, decoding in the training process. Its mAP means nothing.
"""

from configs import base

VARIANTS = ("", "tiny")


def get_config(variant: str = ""):
    """`variant`: the text after ':' in --config=configs/demo.py:VARIANT ('' or 'tiny')."""
    if variant not in VARIANTS:
        raise ValueError(
            f"no variant {variant!r}: use --config=configs/demo.py or --config=configs/demo.py:tiny"
        )
    config = base.get_config()
    config.data.name = "demo"
    config.data.image_size = 96
    config.model.depth = 18
    config.model.width = 16
    config.model.pretrained = ""  # trained from scratch
    config.train.lr = 1e-3
    config.train.num_epochs = 20  # every variant still improves at 10 (single positive learns slowly)
    config.train.log_every_steps = 25
    config.train.checkpoint_every_steps = 50
    if variant == "tiny":
        config.data.image_size = 32
        config.data.workers = 0  # starting decoding processes would take longer than the run
        config.model.width = 8
        config.train.batch_size = 64
        config.train.num_epochs = 2
        config.train.log_every_steps = 5
        config.train.checkpoint_every_steps = 10
    return config
