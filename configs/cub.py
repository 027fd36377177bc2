"""CUB-200-2011 attributes, single positive, ResNet-50 at 448 (SPEC §4)."""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "cub"
    return config
