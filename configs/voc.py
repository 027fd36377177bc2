"""PASCAL VOC 2012, single positive, ResNet-50 at 448 (docs/method.md, "Protocol").

Prepare once: python -m bridgegap_jax.prepare voc --source=<folder with VOCdevkit/> --data_dir=<data_dir>
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "voc"
    return config
