"""The run's config: checked completely before anything is written, then turned into the run's parts.

`check(config)` applies RULES, one table of every field's type, range or choices and message (and
the few rules between fields); `check_with(config, dataset, num_devices, process_count)` the rules
that need the dataset, the devices and this host's memory. A refused config raises ConfigError
naming the field and what it allows, before the workdir exists; nothing downstream checks again.
The builders below are the only place where config fields become a model, an optimizer, a loss
scheme or pipeline options.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import ml_collections

from bridgegap_jax.base.errors import UserError
from bridgegap_jax.data import catalog, images, input_pipeline, masks
from bridgegap_jax.model import resnet
from bridgegap_jax.model.layers import SPEED_OPTIONS
from bridgegap_jax.run import optimizer as optimizer_lib
from bridgegap_jax.run import schemes

NONFINITE_POLICIES = ("stop", "skip")
# Fields that only decide what happens from the next step on, so a resumed run may change them (the
# change is recorded in metrics.jsonl): what a non-finite step does (the checkpoint holds none of them;
# 'skip' back to 'stop' is refused once steps were skipped, trainer.py), when to log and to save, and
# how many processes decode (every batch is the same whoever decodes it, tested), and how the noise
# scale is measured (it never enters the step).
CHANGEABLE_ON_RESUME = (
    "train.nonfinite",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.noise_scale_parts",
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


def _at_least(minimum: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and value >= minimum


def _positive(value) -> bool:
    return _is_number(value) and value > 0


def _observation_parses(value) -> bool:
    try:
        masks.parse(value)
    except ValueError:
        return False
    return True


class Rule(NamedTuple):
    """`field`'s value must pass `allows`, else ConfigError `config.FIELD=VALUE: ALLOWED`."""

    field: str
    allows: Callable[[Any], bool]  # the value -> whether it can run; with `across`, the config -> ...
    allowed: str | Callable[[Any], str]  # what can; a function of the value where the message needs it
    across: bool = False  # a rule between fields: `allows` reads the config (its fields checked before)


def one_of(field: str, choices, why: str = "") -> Rule:
    """`field` must be one of `choices`, a registry read when checked (schemes.register adds to it)."""
    return Rule(
        field,
        lambda value: isinstance(value, Hashable) and value in choices,
        lambda _: f"must be one of {', '.join(map(str, choices))}{why}",
    )


# Every rule of a config on its own (the dataset, the devices and this host's memory: check_with),
# in the order they are checked; the modules that read a field hold its choices.
RULES = (
    Rule("seed", _is_int, "must be an integer"),
    Rule("data.name", lambda name: catalog.name_problem(name) is None, catalog.name_problem),
    Rule(
        "data.data_dir",
        lambda value: isinstance(value, str) and value != "",
        "must be the folder that holds the prepared datasets",
    ),
    Rule(
        "data.image_size",
        _at_least(32),
        "must be an integer >= 32 (the ResNet downsamples by 32: at least one CAM cell)",
    ),
    Rule(
        "data.image_size",
        lambda size: size <= MAX_IMAGE_SIZE,
        lambda size: (
            f"must be <= {MAX_IMAGE_SIZE}: one image of that size is {memory(batch_bytes(1, size))} of "
            "host memory as uint8, a batch of them that many times more, and their activations far more on the "
            "devices (the protocol uses 448)"
        ),
    ),
    one_of("data.resize", images.RESIZE_METHODS),
    one_of("data.train_labels", input_pipeline.TRAIN_LABELS),
    Rule("data.observation", _observation_parses, f"must be {masks.ALLOWED}"),
    Rule(
        "data.observation",
        lambda config: masks.parse(config.data.observation) is None or config.data.train_labels == "observed",
        "simulates observed labels from the full labels, so it needs config.data.train_labels=observed",
        across=True,
    ),
    Rule(
        "data.workers",
        lambda workers: workers is None or _at_least(0)(workers),
        "must be None (one decoding process per CPU core), 0 (decode in the training process) or a count",
    ),
    Rule(
        "data.workers",
        lambda workers: workers is None or workers <= WORKERS_PER_CORE * input_pipeline.default_workers(),
        lambda _: (
            f"must be at most {WORKERS_PER_CORE} per CPU core ({WORKERS_PER_CORE * input_pipeline.default_workers()} "
            "here): each is a process of its own, with its memory and 2 batches in shared memory, and more of them "
            "only compete for the cores"
        ),
    ),
    one_of("model.depth", resnet.RESNET_STAGES),
    Rule("model.width", _at_least(1), "must be a positive integer"),
    Rule("model.alpha", _positive, "must be > 0 (BoostLU's factor on positive CAM cells; 1 = no boost)"),
    one_of("model.dtype", resnet.DTYPES),
    *(one_of(f"model.{option.field}", option.choices) for option in SPEED_OPTIONS),
    Rule(
        "model.pretrained",
        lambda path: isinstance(path, str),
        "must be a converted trunk's folder, or '' to train from scratch",
    ),
    Rule(
        "model.bn_group_size",
        _at_least(0),
        "must be 0 (BatchNorm over the whole batch, the protocol) or a group size such as 16",
    ),
    one_of("loss.scheme", schemes.REGISTRY),
    Rule(
        "loss.delta_rel",
        lambda delta: delta is None or (_is_number(delta) and 0 <= delta < 1),
        "must be in [0, 1), or None for the scheme's paper value",
    ),
    *(
        Rule(f"train.{field}", _at_least(1), "must be an integer >= 1")
        for field in (
            "batch_size",
            "eval_batch_size",
            "num_epochs",
            "log_every_steps",
            "checkpoint_every_steps",
        )
    ),
    Rule(
        "train.validate_every_steps",
        _at_least(0),
        "must be 0 (validate at each epoch's end only) or a number of training steps",
    ),
    Rule("train.lr", _positive, "must be > 0"),
    Rule("train.head_lr_mult", _positive, "must be > 0"),
    one_of("train.optimizer", optimizer_lib.OPTIMIZERS),
    Rule(
        "train.weight_decay",
        lambda decay: decay is None or (_is_number(decay) and decay >= 0),
        "must be >= 0, or None for the optimizer's paper value",
    ),
    Rule(
        "train.weight_decay",
        lambda config: config.train.optimizer != "adam" or not config.train.weight_decay,
        "adam trains without weight decay (the protocol): leave it None, or choose "
        "--config.train.optimizer=lamb or lars",
        across=True,
    ),
    one_of(
        "train.nonfinite",
        NONFINITE_POLICIES,
        " ('stop': end the run at the first non-finite loss or gradient; 'skip': drop such steps)",
    ),
    one_of(
        "train.lr_scaling",
        optimizer_lib.LR_SCALINGS,
        f" (from the protocol's batch of {optimizer_lib.REFERENCE_BATCH})",
    ),
    Rule(
        "train.warmup_epochs",
        lambda config: (
            _is_number(config.train.warmup_epochs)
            and 0 <= config.train.warmup_epochs <= config.train.num_epochs
        ),
        "must be between 0 and train.num_epochs",
        across=True,
    ),
    one_of("train.lr_decay", optimizer_lib.LR_DECAYS),
    Rule(
        "train.noise_scale_parts",
        lambda parts: _is_int(parts) and (parts == 0 or parts >= 2),
        "must be 0 (no noise scale) or the number of parts (>= 2) the batch's gradient is measured in",
    ),
    Rule(
        "loss.group_size",
        _at_least(0),
        "must be 0 (rank the whole batch, the protocol) or a group size such as 16",
    ),
)


def check(config: ml_collections.ConfigDict, only: Sequence[str] = ()) -> None:
    """Every rule of RULES (or of the fields that start with one of `only`), in order: raises
    ConfigError for the first that the config breaks."""
    for rule in RULES:
        if only and not rule.field.startswith(tuple(only)):
            continue
        section, _, name = rule.field.rpartition(".")
        fields = config[section] if section else config
        if name not in fields:
            raise ConfigError(f"config.{rule.field} is missing (configs/base.py has every field)")
        value = fields[name]
        if not rule.allows(config if rule.across else value):
            allowed = rule.allowed if isinstance(rule.allowed, str) else rule.allowed(value)
            raise ConfigError(f"config.{rule.field}={value!r}: {allowed}")


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
    parts = train.noise_scale_parts
    _require(
        not parts or num_devices > 1 or train.batch_size % parts == 0,
        "train.noise_scale_parts",
        parts,
        f"must divide train.batch_size={train.batch_size} (the noise scale measures the batch's gradient in that "
        "many equal parts); choose a divisor, or 0 for no noise scale",
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


# config.model fields that are not the classifier's: `pretrained` names the converted trunk whose
# weights the trainer loads into the initial state (pretrained.load_pretrained_trunk), not a layer.
WEIGHT_FIELDS = ("pretrained",)


def model(config: ml_collections.ConfigDict, num_classes: int) -> resnet.CAMClassifier:
    """The classifier of config.model: every field but WEIGHT_FIELDS is its attribute of that name."""
    fields = {name: value for name, value in config.model.items() if name not in WEIGHT_FIELDS}
    return resnet.CAMClassifier(num_classes=num_classes, **fields)


def optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> optimizer_lib.Optimizer:
    """The config's optimizer with its lr schedule; `steps_per_epoch` turns its epochs into steps (any
    value will do where only the optimizer's structure matters, as for a restore target)."""
    t = config.train
    schedule = optimizer_lib.lr_schedule(
        t.lr,
        batch_size=t.batch_size,
        scaling=t.lr_scaling,
        warmup_steps=round(t.warmup_epochs * steps_per_epoch),
        decay_steps=t.num_epochs * steps_per_epoch if t.lr_decay == "cosine" else 0,
    )
    tx = optimizer_lib.make_optimizer(schedule, t.head_lr_mult, t.optimizer, t.weight_decay)
    return optimizer_lib.Optimizer(tx, schedule)


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
