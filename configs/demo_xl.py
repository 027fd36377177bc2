"""demo_large_finetune on 5x the training mosaics: the proxy of `python scripts/study.py steps_to_target`.

`demo_xl` is demo_large with 65,536 = 2^16 training mosaics (its 12,800 are the first; the same
validation and test splits), so that every batch from 16 to 4,096 divides an epoch: no smaller last
batch, and batch 4,096 takes 16 steps per epoch. The width-8 letters trunk is fine-tuned as in
configs/demo_large_finetune.py (Adam at 3e-4, the head at 10x). Batch 16 trains 2 epochs here:
8,192 steps, more than demo_large_finetune's 8 epochs (6,400 steps, 102,400 images).
"""

from configs import demo_large_finetune


def get_config():
    config = demo_large_finetune.get_config()
    config.data.name = "demo_xl"
    config.train.num_epochs = 2
    config.train.checkpoint_every_steps = 256
    return config
