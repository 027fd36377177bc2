"""The demo at 8x the training mosaics (12,800), for studying large batches on a CPU or one GPU.

The demo's input and ResNet-18 at half its width (8: a grid of 27 runs fits a few CPU hours); 8
epochs, so batch 512 still takes 200 steps. The learning rate is the demo's for batch 16:
large-batch recipes scale it (train.lr_scaling).
`python scripts/study.py batch` trains the grid of batches and recipes on it.
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.data.name = "demo_large"
    config.model.width = 8
    config.train.num_epochs = 8
    config.train.eval_batch_size = 256
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 200
    return config
