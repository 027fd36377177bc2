"""The built-in demo: digit mosaics from scikit-learn (no download), a small ResNet-18 at 96x96.

Trains in a few minutes on 2 CPU cores. Trained from scratch, so a larger lr than the paper's
fine-tuning lr.
"""

from configs import base


def get_config():
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
    return config
