"""configuration.RULES, the one table of the config's rules: each refuses what it should in one line
that names the field and what it allows; a run's stored config is checked again by the tools."""

import collections

import ml_collections
import pytest
from helpers import make_run

from bridgegap_jax.run import configuration, trained_run

# (field, refused value, other fields set with it, what the message says is allowed): at least one
# case per rule of the table (test_every_rule_has_a_case).
CASES = [
    ("seed", 1.5, {}, "must be an integer"),
    ("data.name", "", {}, "is not set: give one of demo, "),
    ("data.data_dir", "", {}, "must be the folder that holds the prepared datasets"),
    ("data.image_size", 16, {}, "must be an integer >= 32"),
    ("data.image_size", 4096, {}, "must be <= 2048: one image of that size is 48.0 MiB of host memory"),
    ("data.resize", "area", {}, "must be one of bilinear, pil"),
    ("data.train_labels", "some", {}, "must be one of observed, full"),
    ("data.observation", "half", {}, "must be one of stored, single_positive, k_positives:K, fraction:F"),
    (
        "data.observation",
        "fraction:0.5",
        {"data.train_labels": "full"},
        "simulates observed labels from the full labels, so it needs config.data.train_labels=observed",
    ),
    ("data.workers", -1, {}, "must be None (one decoding process per CPU core), 0"),
    ("data.workers", 10**6, {}, "must be at most 4 per CPU core"),
    ("model.depth", 51, {}, "must be one of 18, 34, 50, 101, 152"),
    ("model.width", 0, {}, "must be a positive integer"),
    ("model.alpha", 0.0, {}, "must be > 0 (BoostLU's factor"),
    ("model.dtype", "float16", {}, "must be one of float32, bfloat16"),
    ("model.batch_norm", "nope", {}, "must be one of flax, fused"),
    ("model.max_pool", "nope", {}, "must be one of reduce_window, strided"),
    ("model.stem", "nope", {}, "must be one of conv, space_to_depth"),
    ("model.head_dtype", "float16", {}, "must be one of float32, bfloat16"),
    ("model.pretrained", None, {}, "must be a converted trunk's folder, or ''"),
    ("model.bn_group_size", -1, {}, "must be 0 (BatchNorm over the whole batch"),
    ("loss.scheme", "LL-X", {}, "must be one of AN, LL-R, LL-Ct, LL-Cp"),
    ("loss.delta_rel", 1.5, {}, "must be in [0, 1)"),
    ("loss.group_size", -1, {}, "must be 0 (rank the whole batch"),
    ("train.batch_size", 0, {}, "must be an integer >= 1"),
    ("train.eval_batch_size", 8.0, {}, "must be an integer >= 1"),
    ("train.num_epochs", 0, {}, "must be an integer >= 1"),
    ("train.log_every_steps", 0, {}, "must be an integer >= 1"),
    ("train.checkpoint_every_steps", 0, {}, "must be an integer >= 1"),
    ("train.validate_every_steps", -1, {}, "must be 0 (validate at each epoch's end only)"),
    ("train.lr", 0.0, {}, "must be > 0"),
    ("train.head_lr_mult", float("nan"), {}, "must be > 0"),
    ("train.optimizer", "sgd", {}, "must be one of adam, lamb, lars"),
    ("train.weight_decay", -0.1, {"train.optimizer": "lamb"}, "must be >= 0, or None"),
    ("train.weight_decay", 0.01, {"train.optimizer": "adam"}, "adam trains without weight decay"),
    ("train.nonfinite", "ignore", {}, "must be one of stop, skip ('stop': end the run"),
    ("train.lr_scaling", "cubic", {}, "must be one of none, sqrt, linear (from the protocol's batch of 16)"),
    ("train.warmup_epochs", 3.0, {"train.num_epochs": 2}, "must be between 0 and train.num_epochs"),
    ("train.lr_decay", "linear", {}, "must be one of none, cosine"),
    ("train.noise_scale_parts", 1, {}, "must be 0 (no noise scale) or the number of parts (>= 2)"),
]


def demo_config(**fields) -> ml_collections.ConfigDict:
    """The demo config with `fields` ('section.name': value) set, whatever their type."""
    config = ml_collections.ConfigDict(
        __import__("configs.demo", fromlist=["get_config"]).get_config().to_dict(), type_safe=False
    )
    for field, value in fields.items():
        section, _, name = field.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


@pytest.mark.parametrize("field,value,others,allowed", CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
def test_a_refused_value_is_one_line_naming_the_field_and_what_it_allows(field, value, others, allowed):
    configuration.check(demo_config(**others))  # the other fields alone are fine
    with pytest.raises(configuration.ConfigError) as error:
        configuration.check(demo_config(**others, **{field: value}))
    message = str(error.value)
    assert message.startswith(f"config.{field}={value!r}: {allowed}") and "\n" not in message


def test_every_rule_has_a_case():
    """A field's cases raise as many distinct messages as the field has rules: a new rule needs a case."""
    rules = collections.Counter(rule.field for rule in configuration.RULES)
    messages = collections.defaultdict(set)
    for field, _, _, allowed in CASES:
        messages[field].add(allowed)
    assert {field: len(m) for field, m in messages.items()} == dict(rules)


def test_a_missing_field_is_named():
    config = demo_config()
    del config.model["bn_group_size"]
    with pytest.raises(configuration.ConfigError, match=r"^config.model.bn_group_size is missing"):
        configuration.check(config)


def test_only_checks_the_fields_it_names():
    config = demo_config(**{"train.lr": 0.0, "model.dtype": "float16"})
    configuration.check(config, only=("data.", "model.depth"))
    with pytest.raises(configuration.ConfigError, match=r"^config.model.dtype="):
        configuration.check(config, only=("model.",))


def test_the_tools_refuse_a_stored_config_that_breaks_a_rule_naming_its_file(tmp_path):
    """predict, explain and export open a run through trained_run.open_run: an edited config.json
    is one line naming the file and the field, before anything is restored."""
    workdir = make_run(tmp_path / "run", demo_config(**{"model.dtype": "float16"}), checkpoint=False)
    with pytest.raises(
        configuration.ConfigError,
        match=r"^run 'a': .*config.json: config.model.dtype='float16': must be one of float32, bfloat16$",
    ):
        trained_run.open_run(workdir, "a")
