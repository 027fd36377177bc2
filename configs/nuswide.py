"""NUS-WIDE, single positive, ResNet-50 at 448 (docs/method.md, "Protocol").

Prepare once: python -m bridgegap_jax.prepare nuswide --source=<folder with formatted_*.npy>
  --images=<Flickr/ folder> --data_dir=<data_dir>
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "nuswide"
    return config
