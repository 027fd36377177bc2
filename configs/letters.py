"""The source task: a ResNet-18 trained with full labels on the built-in letters, the offline
stand-in for an ImageNet trunk that configs/demo_finetune.py and demo_large_finetune.py fine-tune.

The demo's input and network (96x96, ResNet-18 at width 16; --config.model.width=8 for the trunk of
demo_large), trained from scratch on mosaics of letters (prepare/letters.py: 26 classes, 25,600
training mosaics, disjoint from the demo's digits) with every label known: AN on full labels,
alpha 1 (BoostLU belongs to the target task). No flips: a mirrored b is a d. Batch 64 with a short
warm-up and cosine decay, to end on a converged trunk in few CPU minutes.

    python -m bridgegap_jax.main --config=configs/letters.py \
        --workdir=~/bridgegap_weights/source_runs/letters_resnet18_w16
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.data.name = "letters"
    config.data.train_labels = "full"
    config.data.random_flip = False
    config.loss.scheme = "AN"
    config.model.alpha = 1.0
    config.train.batch_size = 64
    config.train.lr = 2e-3
    config.train.warmup_epochs = 0.5
    config.train.lr_decay = "cosine"
    config.train.num_epochs = 12
    config.train.eval_batch_size = 256
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 400
    return config
