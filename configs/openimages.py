"""OpenImages V3 (2017_11), partially verified labels, ResNet-101 (docs/method.md, "OpenImages").

Large Loss Matters: 20 epochs at lr 2e-5, delta_rel searched in {0.005, 0.01}; batch size,
input size and alpha were not published (defaults: 16, 448, 5).

Prepare once: python -m bridgegap_jax.prepare openimages --source=<2017_11 CSVs + images/> --data_dir=<data_dir>
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "openimages"
    config.model.depth = 101
    config.model.pretrained = "~/bridgegap_weights/resnet101_v1"
    config.loss.delta_rel = 0.005
    config.train.num_epochs = 20
    config.train.lr = 2e-5
    config.train.log_every_steps = 500
    config.train.checkpoint_every_steps = 5000
    return config
