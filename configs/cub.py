"""CUB-200-2011 attributes, single positive, ResNet-50 at 448 (docs/method.md, "Protocol").

Prepare once: python -m bridgegap_jax.prepare cub --source=<folder with CUB_200_2011/> --data_dir=<data_dir>
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "cub"
    return config
