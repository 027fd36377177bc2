"""Your own data (docs/own_data.md): a dataset prepared from a folder of images and a label
table, fine-tuned from the ImageNet ResNet-50 at the protocol's settings (configs/base.py: 448x448,
batch 16, Adam at lr 1e-5 with the head at 10x, 10 epochs, LL-R, BoostLU alpha 5).

    python -m bridgegap_jax.prepare folder --images=DIR --labels=FILE --name=NAME --data_dir=DATA
    python -m bridgegap_jax.main --config=configs/folder.py --config.data.name=folder:NAME \\
        --config.data.data_dir=DATA --workdir=runs/NAME

config.data.name has no default: give folder:NAME (the --name of prepare) or the path of the
prepared folder. The trunk is `~/bridgegap_weights/resnet50_v1` (docs/weights.md).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = ""  # required on the command line: folder:NAME or the prepared folder's path
    return config
