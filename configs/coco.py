"""MS-COCO 2014, single positive, ResNet-50 at 448 (docs/method.md, "Protocol").

Prepare once: python -m bridgegap_jax.prepare coco --source=<folder with annotations/, train2014/, val2014/>
  --data_dir=<data_dir>
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "coco"
    return config
