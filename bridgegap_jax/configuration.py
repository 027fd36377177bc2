"""The run's config: checked completely before anything is written, then turned into the run's parts.

`check(config)` checks every field on its own (types, ranges, known names, sizes); `check_with(config,
dataset, num_devices, process_count)` the rules that need the dataset, the devices and this host's
memory. A refused config raises ConfigError naming the field and the fix, before the workdir
exists. The builders below are the only place where config fields become a model, an optimizer, a
loss scheme or pipeline options.
"""

from __future__ import annotations

import math
import os

import ml_collections

from bridgegap_jax import images, input_pipeline, schemes, steps
from bridgegap_jax.errors import UserError
from bridgegap_jax.datasets import catalog, masks
from bridgegap_jax.layers import BATCH_NORMS, MAX_POOLS, STEMS
from bridgegap_jax.models import RESNET_STAGES

NONFINITE_POLICIES = ("stop", "skip")
LR_DECAYS = ("none", "cosine")
# Fields that only decide what happens from the next step on, so a resumed run may change them (the
# change is recorded in metrics.jsonl): what a non-finite step does (the checkpoint holds none of them;
# 'skip' back to 'stop' is refused once steps were skipped, trainer.py), when to log and to save, and
# how many processes decode (every batch is the same whoever decodes it, tested).
CHANGEABLE_ON_RESUME = (
    "train.nonfinite",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "data.workers",
)
MAX_IMAGE_SIZE = 2048  # 4.6x the protocol's 448: one batch of 64 such images is 0.8 GB on the host
WORKERS_PER_CORE = 4  # decoding processes beyond this only compete for the cores, each with its memory
BUFFERED_BATCHES = 3  # batches the training process holds besides the workers' 2 each (prefetch, in use)


class ConfigError(UserError, ValueError):
    """A config value that cannot run; the message names the field and what to do."""


def _require(condition: bool, field: str, value, rule: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}={value!r}: {rule}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(config: ml_collections.ConfigDict) -> None:
    """Every field on its own: raises ConfigError for the first that cannot run."""
    data, model, loss, train = config.data, config.model, config.loss, config.train
    _require(_is_int(config.seed), "seed", config.seed, "must be an integer")
    name_problem = catalog.name_problem(data.name)
    _require(name_problem is None, "data.name", data.name, name_problem)
    _require(
        isinstance(data.data_dir, str) and data.data_dir != "",
        "data.data_dir",
        data.data_dir,
        "must be the folder that holds the prepared datasets",
    )
    _require(
        _is_int(data.image_size) and data.image_size >= 32,
        "data.image_size",
        data.image_size,
        "must be an integer >= 32 (the ResNet downsamples by 32: at least one CAM cell)",
    )
    _require(
        data.image_size <= MAX_IMAGE_SIZE,
        "data.image_size",
        data.image_size,
        f"must be <= {MAX_IMAGE_SIZE}: one image of that size is {memory(batch_bytes(1, data.image_size))} of host "
        "memory as uint8, a batch of them that many times more, and their activations far more on the devices "
        "(the protocol uses 448)",
    )
    _require(
        data.resize in images.RESIZE_METHODS,
        "data.resize",
        data.resize,
        f"must be one of {', '.join(images.RESIZE_METHODS)}",
    )
    _require(
        data.train_labels in input_pipeline.TRAIN_LABELS,
        "data.train_labels",
        data.train_labels,
        f"must be one of {', '.join(input_pipeline.TRAIN_LABELS)}",
    )
    try:
        simulated = masks.parse(data.observation) is not None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _require(
        not simulated or data.train_labels == "observed",
        "data.observation",
        data.observation,
        "simulates observed labels from the full labels, so it needs config.data.train_labels=observed",
    )
    _require(
        data.workers is None or (_is_int(data.workers) and data.workers >= 0),
        "data.workers",
        data.workers,
        "must be None (one decoding process per CPU core), 0 (decode in the training process) or a count",
    )
    cores = input_pipeline.default_workers()
    _require(
        data.workers is None or data.workers <= WORKERS_PER_CORE * cores,
        "data.workers",
        data.workers,
        f"must be at most {WORKERS_PER_CORE} per CPU core ({WORKERS_PER_CORE * cores} here): each is a process of "
        "its own, with its memory and 2 batches in shared memory, and more of them only compete for the cores",
    )
    _require(
        model.depth in RESNET_STAGES, "model.depth", model.depth, f"must be one of {sorted(RESNET_STAGES)}"
    )
    _require(
        _is_int(model.width) and model.width >= 1, "model.width", model.width, "must be a positive integer"
    )
    _require(
        _is_number(model.alpha) and model.alpha > 0,
        "model.alpha",
        model.alpha,
        "must be > 0 (BoostLU's factor on positive CAM cells; 1 = no boost)",
    )
    _require(
        model.dtype in steps.DTYPES, "model.dtype", model.dtype, f"must be one of {', '.join(steps.DTYPES)}"
    )
    _require(
        model.head_dtype in steps.DTYPES,
        "model.head_dtype",
        model.head_dtype,
        f"must be one of {', '.join(steps.DTYPES)}",
    )
    for field, allowed in (("batch_norm", BATCH_NORMS), ("max_pool", MAX_POOLS), ("stem", STEMS)):
        _require(
            model[field] in allowed, f"model.{field}", model[field], f"must be one of {', '.join(allowed)}"
        )
    _require(
        isinstance(model.pretrained, str),
        "model.pretrained",
        model.pretrained,
        "must be a converted trunk's folder, or '' to train from scratch",
    )
    _require(
        _is_int(model.bn_group_size) and model.bn_group_size >= 0,
        "model.bn_group_size",
        model.bn_group_size,
        "must be 0 (BatchNorm over the whole batch, the protocol) or a group size such as 16",
    )
    _require(
        loss.scheme in schemes.REGISTRY,
        "loss.scheme",
        loss.scheme,
        f"must be one of {', '.join(schemes.REGISTRY)}",
    )
    _require(
        loss.delta_rel is None or (_is_number(loss.delta_rel) and 0 <= loss.delta_rel < 1),
        "loss.delta_rel",
        loss.delta_rel,
        "must be in [0, 1), or None for the scheme's paper value",
    )
    for field in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "checkpoint_every_steps"):
        value = train[field]
        _require(_is_int(value) and value >= 1, f"train.{field}", value, "must be an integer >= 1")
    _require(_is_number(train.lr) and train.lr > 0, "train.lr", train.lr, "must be > 0")
    _require(
        _is_number(train.head_lr_mult) and train.head_lr_mult > 0,
        "train.head_lr_mult",
        train.head_lr_mult,
        "must be > 0",
    )
    _require(
        train.optimizer in steps.OPTIMIZERS,
        "train.optimizer",
        train.optimizer,
        f"must be one of {', '.join(steps.OPTIMIZERS)}",
    )
    _require(
        train.weight_decay is None or (_is_number(train.weight_decay) and train.weight_decay >= 0),
        "train.weight_decay",
        train.weight_decay,
        "must be >= 0, or None for the optimizer's paper value",
    )
    _require(
        train.optimizer != "adam" or not train.weight_decay,
        "train.weight_decay",
        train.weight_decay,
        "adam trains without weight decay (the protocol): leave it None, or choose "
        "--config.train.optimizer=lamb or lars",
    )
    _require(
        train.nonfinite in NONFINITE_POLICIES,
        "train.nonfinite",
        train.nonfinite,
        "must be 'stop' (end the run at the first non-finite loss or gradient) or 'skip' (drop such steps)",
    )
    _require(
        train.lr_scaling in steps.LR_SCALINGS,
        "train.lr_scaling",
        train.lr_scaling,
        f"must be one of {', '.join(steps.LR_SCALINGS)} (from the protocol's batch of {steps.REFERENCE_BATCH})",
    )
    _require(
        _is_number(train.warmup_epochs) and 0 <= train.warmup_epochs <= train.num_epochs,
        "train.warmup_epochs",
        train.warmup_epochs,
        "must be between 0 and train.num_epochs",
    )
    _require(
        train.lr_decay in LR_DECAYS,
        "train.lr_decay",
        train.lr_decay,
        f"must be one of {', '.join(LR_DECAYS)}",
    )
    _require(
        _is_int(loss.group_size) and loss.group_size >= 0,
        "loss.group_size",
        loss.group_size,
        "must be 0 (rank the whole batch, the protocol) or a group size such as 16",
    )


def check_with(
    config: ml_collections.ConfigDict, dataset: catalog.Dataset, num_devices: int, process_count: int = 1
) -> None:
    """The rules that need the dataset, the device count and this host (its processes, its memory)."""
    train = config.train
    num_train = dataset.split_sizes["train"]
    _require(
        train.batch_size % num_devices == 0,
        "train.batch_size",
        train.batch_size,
        f"must be divisible by the {num_devices} devices",
    )
    _require(
        train.batch_size <= num_train,
        "train.batch_size",
        train.batch_size,
        f"is larger than the {num_train} training examples of {dataset.name}",
    )
    _require(
        train.eval_batch_size % num_devices == 0,
        "train.eval_batch_size",
        train.eval_batch_size,
        f"must be a multiple of the {num_devices} devices",
    )
    available = host_memory()
    held = 2 * workers(config) + BUFFERED_BATCHES
    for field in ("batch_size", "eval_batch_size"):
        rows = -(-train[field] // process_count)  # this process's rows of each global batch
        needed = held * batch_bytes(rows, config.data.image_size)
        _require(
            needed <= available,
            f"train.{field}",
            train[field],
            f"would need {memory(needed)} of host memory, more than the {memory(available)} here: the input pipeline holds "
            f"{held} batches of this process's {rows} images of {config.data.image_size}x{config.data.image_size} "
            "(uint8) at once; lower it (or config.data.workers)",
        )


def model(config: ml_collections.ConfigDict, num_classes: int):
    m = config.model
    return steps.make_model(
        num_classes,
        depth=m.depth,
        width=m.width,
        alpha=m.alpha,
        dtype=m.dtype,
        batch_norm=m.batch_norm,
        max_pool=m.max_pool,
        stem=m.stem,
        head_dtype=m.head_dtype,
        bn_group_size=m.bn_group_size,
    )


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int = 1):
    """The trunk's learning rate by step (the head's is head_lr_mult times it)."""
    t = config.train
    return steps.lr_schedule(
        t.lr,
        batch_size=t.batch_size,
        scaling=t.lr_scaling,
        warmup_steps=round(t.warmup_epochs * steps_per_epoch),
        decay_steps=t.num_epochs * steps_per_epoch if t.lr_decay == "cosine" else 0,
    )


def optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int = 1):
    """The config's optimizer with its schedule; `steps_per_epoch` turns its epochs into steps (any
    value will do where only the optimizer's structure matters, as for a restore target)."""
    t = config.train
    return steps.make_optimizer(
        lr_schedule(config, steps_per_epoch), t.head_lr_mult, t.optimizer, t.weight_decay
    )


def scheme(config: ml_collections.ConfigDict, dataset: catalog.Dataset) -> schemes.Scheme:
    return schemes.create(
        config.loss.scheme, config.loss.delta_rel, dataset.unobserved_value, config.loss.group_size
    )


def pipeline_options(
    config: ml_collections.ConfigDict, num_devices: int, process_index: int = 0, process_count: int = 1
) -> input_pipeline.Options:
    data = config.data
    return input_pipeline.Options(
        image_size=data.image_size,
        batch_size=config.train.batch_size,
        eval_batch_size=config.train.eval_batch_size,
        seed=config.seed,
        resize=data.resize,
        random_flip=data.random_flip,
        train_labels=data.train_labels,
        observation=data.observation,
        process_index=process_index,
        process_count=process_count,
        row_multiple=num_devices,
    )


def batch_bytes(rows: int, image_size: int) -> int:
    """Bytes of `rows` images as the pipeline holds them on the host (uint8 RGB)."""
    return rows * image_size * image_size * 3


def memory(size: float) -> str:
    """Bytes in KiB, MiB, GiB or TiB."""
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:,.1f} {unit}"


def host_memory() -> int:
    """Bytes of memory of this host."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def workers(config: ml_collections.ConfigDict) -> int:
    return input_pipeline.default_workers() if config.data.workers is None else config.data.workers


def data_dir(config: ml_collections.ConfigDict) -> str:
    return os.path.expanduser(config.data.data_dir)
