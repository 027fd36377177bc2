"""OpenImages V3 on a pod slice: the openimages.py protocol at a global batch of 512, in its 20 epochs.

A batch of 16 cannot fill a pod (docs/method.md, "Large batches"). This is the recipe of the README's
fine-tuning batch study ("Training on a pod"), which fine-tunes a pretrained trunk as this config
does: LARS at 1,000x the protocol's Adam lr (a LARS step moves each kernel by about 0.001 lr x |w|,
so this is a tenth of an Adam step's size), scaled by sqrt(512 / 16) after one epoch of linear
warm-up, cosine decay to 0, and BatchNorm statistics and large-loss ranking within each group of 16
images (the protocol's normalisation and rejected or corrected fraction). It keeps the protocol's
20 epochs, so it takes 32x fewer steps. On the study's demo this recipe at batch 512 matched batch
16 in the same epochs (3 seeds each); Adam, with any lr scaling, fell 18 mAP or more short there.
The demo is a small stand-in (a 12,800-image task, a trunk pretrained offline on glyphs): check the
first epochs' validation mAP against a batch-16 run if you can afford one.

512 = 32 images per chip on a v4-32 (16 chips, 4 hosts), 8 per chip on a v5e-64. The global batch
must be a multiple of the device count and of 16.

Prepare once: python -m bridgegap_jax.prepare openimages --source=<2017_11 CSVs + images/> --data_dir=<data_dir>
"""

from configs import openimages


def get_config():
    config = openimages.get_config()
    config.train.batch_size = 512
    config.train.optimizer = "lars"  # momentum 0.9, weight decay 1e-4, trust ratio 0.001 |w| / |g|
    config.train.lr = 1_000 * config.train.lr  # 0.02; x sqrt(32) after the warm-up: 0.113
    config.train.lr_scaling = "sqrt"
    config.train.warmup_epochs = 1.0
    config.train.lr_decay = "cosine"
    config.model.bn_group_size = 16
    config.loss.group_size = 16
    config.model.dtype = "bfloat16"  # the trunk's compute; parameters, gradients and the loss stay float32
    config.train.eval_batch_size = 512
    config.train.log_every_steps = 100  # 6,650 steps per epoch at 512
    config.train.checkpoint_every_steps = 1000
    return config
