"""Defaults of the paper's single-positive protocol (docs/method.md, "Protocol"); dataset configs patch these.

Any field can be overridden on the command line, e.g. `--config.loss.scheme=LL-Ct`; a field
that does not exist is an error.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # model init and data order (shuffle, flips)

    config.data = ml_collections.ConfigDict()
    config.data.name = "voc"  # demo | voc | coco | nuswide | cub | openimages | folder:NAME | a path
    config.data.data_dir = "~/tensorflow_datasets"  # where prepared datasets live
    config.data.image_size = 448
    config.data.train_labels = "observed"  # 'observed' (partial labels) or 'full' (the upper bound)
    config.data.observation = (
        "stored"  # stored | single_positive | k_positives:K | fraction:F (datasets/masks.py)
    )
    config.data.random_flip = True
    # 'bilinear' (OpenCV) is ~0.6 grey levels from the reference's PIL resize at 448 and ~3x cheaper
    # per core; 'pil' is the reference's resize exactly (docs/data.md, "Input pipeline").
    config.data.resize = "bilinear"
    config.data.workers = config_dict.placeholder(int)  # decoding processes; None: one per CPU core

    config.model = ml_collections.ConfigDict()
    config.model.depth = 50
    config.model.width = 64
    config.model.alpha = 5.0  # BoostLU; 1.0 = plain AN / LL
    config.model.dtype = "float32"  # trunk compute: float32 | bfloat16 (parameters stay float32)
    # Speed options (bridgegap_jax/model/layers.py): the same function up to float rounding, same variables.
    config.model.batch_norm = "flax"  # flax | fused (BN + residual add + ReLU as one op, own backward)
    config.model.max_pool = "reduce_window"  # reduce_window | strided (no select-and-scatter backward)
    config.model.stem = "conv"  # conv | space_to_depth (the 7x7/2 stem conv as 4x4/1 on 2x2 blocks)
    config.model.head_dtype = "float32"  # CAM head matmul operands: float32 | bfloat16 (float32 sums)
    # Large batches: BatchNorm statistics over each group of G rows ("ghost" BN; 16 = the protocol's
    # statistics at any batch); 0 = over the whole batch.
    config.model.bn_group_size = 0
    # ImageNet trunk converted once by `python -m bridgegap_jax.model.pretrained` ('' = random init).
    config.model.pretrained = "~/bridgegap_weights/resnet50_v1"

    config.loss = ml_collections.ConfigDict()
    config.loss.scheme = "LL-R"  # AN | LL-R | LL-Ct | LL-Cp
    config.loss.delta_rel = config_dict.placeholder(float)  # None: the scheme's paper value
    # Large batches: rank the losses of each group of G rows on its own (16 = as batches of 16); 0 = the batch.
    config.loss.group_size = 0

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 16
    config.train.num_epochs = 10
    config.train.lr = 1e-5  # for a batch of 16; see lr_scaling
    config.train.head_lr_mult = 10.0
    # adam (the protocol) | lamb | lars: layer-wise trust ratios for large batches (optimizer.py). Their lr
    # is on another scale: LAMB moves each kernel by ~lr x |w| per step, LARS by ~lr x 0.001 x |w|.
    config.train.optimizer = "adam"
    config.train.weight_decay = config_dict.placeholder(float)  # None: adam 0, lamb 0.01, lars 1e-4
    # Large batches (the protocol: none, 0, none): lr x (batch / 16) ** {0, 1/2, 1}, a linear warm-up
    # over the first warmup_epochs, and an optional cosine decay to 0 at the end.
    config.train.lr_scaling = "none"
    config.train.warmup_epochs = 0.0
    config.train.lr_decay = "none"
    config.train.eval_batch_size = 64
    # Also validate every N training steps (0: only at each epoch's end, the protocol): recorded in
    # metrics.jsonl as 'step_validation' (steps-to-target curves); the best checkpoint stays per epoch.
    config.train.validate_every_steps = 0
    config.train.log_every_steps = 100
    # The gradient noise scale B_simple (run/noise_scale.py), measured at every log point: the batch's
    # gradient is taken again in this many equal parts (on one device; on several, one per device), at
    # the cost of one forward and backward pass of the batch per log point. 4: parts of 4 rows at the
    # protocol's batch of 16, 3 degrees of freedom for the spread of the parts' gradients, while
    # BatchNorm still normalises over several images. 0 = off.
    config.train.noise_scale_parts = 4
    config.train.checkpoint_every_steps = 1000
    # A non-finite loss or gradient: 'stop' the run (nothing non-finite is saved), or 'skip' the step.
    config.train.nonfinite = "stop"
    return config
