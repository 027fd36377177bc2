"""Training: the state, the jitted steps, and the protocol of SPEC §4.

train -> validation mAP on full labels after every epoch -> keep the best (strict improvement) ->
test once with the best checkpoint. The steps are pure functions compiled once: the state is
donated, the loss schedule enters as an integer array, and the only host syncs are at log points,
at LL-Cp's correction fetch (one step behind, so the device never waits), and at evaluation.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bridgegap_jax import input_pipeline, losses, metrics, sharding
from bridgegap_jax.checkpoint import RunCheckpoints
from bridgegap_jax.corrections import LabelCorrections
from bridgegap_jax.datasets import catalog
from bridgegap_jax.models import CAMClassifier

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CLASS_AP_FILE = "test_class_ap.tsv"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    def model_vars(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


# ----------------------------------------------------------------------------------------------
# Model, optimizer, state
# ----------------------------------------------------------------------------------------------
def make_model(config: ml_collections.ConfigDict, num_classes: int) -> CAMClassifier:
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.model.dtype not in dtypes:
        raise ValueError(f"config.model.dtype={config.model.dtype!r} is not one of {sorted(dtypes)}")
    return CAMClassifier(
        num_classes=num_classes,
        depth=config.model.depth,
        width=config.model.width,
        alpha=config.model.alpha,
        dtype=dtypes[config.model.dtype],
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam without weight decay; the CAM head at head_lr_mult x lr, as the reference's 10x."""

    def adam(lr):
        return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)

    def labels(params):
        return {name: jax.tree.map(lambda _: "head" if name == "head" else "trunk", sub) for name, sub in params.items()}

    lr = config.train.lr
    return optax.multi_transform({"trunk": adam(lr), "head": adam(lr * config.train.head_lr_mult)}, labels)


def initial_state(model: CAMClassifier, tx: optax.GradientTransformation, image_size: int, seed: int) -> TrainState:
    variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3), jnp.uint8), train=False)
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], tx.init(params))


def create_state(model, tx, image_size: int, seed: int, mesh) -> TrainState:
    """The initial state, created directly with replicated shardings on the mesh."""
    init = functools.partial(initial_state, model, tx, image_size, seed)
    return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def abstract_state(model, tx, image_size: int, mesh) -> TrainState:
    """Shapes, dtypes and shardings of the state, computed without allocating it (restore target)."""
    shapes = jax.eval_shape(functools.partial(initial_state, model, tx, image_size, 0))
    replicated = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------
def train_step(
    state: TrainState,
    images: jax.Array,
    observed: jax.Array,
    k: jax.Array,
    *,
    model: CAMClassifier,
    tx: optax.GradientTransformation,
    scheme: str,
    unobserved_value: int,
) -> tuple[TrainState, dict, jax.Array]:
    """One step: forward (BoostLU inside the model), large-loss BCE, backward, Adam.

    Returns the new state, scalar metrics, and the (B, C) entries the loss selected (LL-Cp
    makes them observed positives).
    """

    def loss_fn(params):
        (logits, _), updated = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        out = losses.large_loss(logits, observed, k, scheme=scheme, unobserved_value=unobserved_value)
        return out.loss, (out.selected, updated["batch_stats"])

    (loss, (selected, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, {"loss": loss, "num_selected": jnp.sum(selected)}, selected


def eval_step(model_vars: dict, images: jax.Array, *, model: CAMClassifier) -> jax.Array:
    """Probabilities sigmoid(mean(BoostLU(CAM))), float32 (B, C)."""
    logits, _ = model.apply(model_vars, images, train=False)
    return jax.nn.sigmoid(logits)


def jit_train_step(model, tx, scheme: str, unobserved_value: int, mesh) -> Callable:
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx, scheme=scheme, unobserved_value=unobserved_value),
        in_shardings=(replicated, batch, batch, replicated),
        out_shardings=(replicated, replicated, batch),
        donate_argnums=0,
    )


def jit_eval_step(model, mesh) -> Callable:
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(replicated, batch),
        out_shardings=batch,
    )


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def predict(eval_fn: Callable, model_vars: dict, batches: Iterator[dict], mesh) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of every real example, padding dropped, in stored order."""
    probs, labels, pending = [], [], []

    def collect(item):
        device_probs, batch = item
        keep = batch["mask"]
        probs.append(sharding.to_host(device_probs)[keep])
        labels.append(batch["labels"][keep])

    for batch in batches:
        pending.append((eval_fn(model_vars, sharding.to_global(mesh, batch["image"])), batch))
        if len(pending) > 2:  # keep the device busy while the host copies the previous result
            collect(pending.pop(0))
    for item in pending:
        collect(item)
    return np.concatenate(probs), np.concatenate(labels)


def evaluate(eval_fn, model_vars, builder, split: str, config, mesh) -> dict:
    """mAP of `split` (both conventions, and per frequency group where the dataset has groups)."""
    batches = input_pipeline.eval_batches(
        builder, split, batch_size=config.train.eval_batch_size, image_size=config.data.image_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    probs, labels = predict(eval_fn, model_vars, batches, mesh)
    # Partially verified labels (OpenImages) are evaluated on observed entries only (SPEC §5).
    mask = labels != -1 if catalog.spec(config.data.name).label_encoding == "partial" else None
    summary = metrics.summarize(probs, labels, mask=mask, groups=catalog.class_groups(builder))
    result = {
        "map": float(summary["map"]),
        "map_with_positives": float(summary["map_with_positives"]),
        "num_examples": int(len(labels)),
        "ap": [float(a) for a in summary["ap"]],
    }
    for key, group in summary.items():
        if key.startswith("group"):
            result[key] = {"map": float(group["map"]), "map_with_positives": float(group["map_with_positives"])}
    return result


def write_class_ap(path: str, names: list[str], test: dict) -> None:
    """Per-class test AP as a tab-separated file (class index, name, AP in percent)."""
    with open(path + ".tmp", "w") as f:
        f.write("class\tname\tap\n")
        for index, (name, ap) in enumerate(zip(names, test["ap"])):
            f.write(f"{index}\t{name}\t{100 * ap:.4f}\n")
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
class RunLog:
    """Progress lines on stdout and JSON lines in the workdir, from process 0 only."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.main = jax.process_index() == 0

    def line(self, text: str) -> None:
        if self.main:
            print(text, flush=True)

    def record(self, **fields) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(fields) + "\n")


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuse to resume a run made with another config: its checkpoints would be silently mixed."""
    path = os.path.join(workdir, CONFIG_FILE)
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored != current:
            differ = sorted(_diff_keys(stored, current))
            raise ValueError(
                f"workdir {workdir} holds a run made with a different config (fields: {', '.join(differ)}); "
                "use a new --workdir, or rerun with the config stored in " + path
            )
    elif jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _diff_keys(x, y, prefix + key + ".")
        elif x != y:
            keys.append(prefix + key)
    return keys


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume, or just report) the whole protocol; returns the test result."""
    os.makedirs(workdir, exist_ok=True)
    result_path = os.path.join(workdir, RESULT_FILE)
    log = RunLog(workdir)
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
        log.line(f"{workdir} already finished: {_result_line(result)}")
        return result
    check_workdir_config(workdir, config)

    mesh = sharding.make_mesh()
    process_index, process_count = jax.process_index(), jax.process_count()
    data_spec = catalog.spec(config.data.name)
    losses.check_scheme(config.loss.scheme)
    builder = catalog.load_builder(config.data.name, config.data.data_dir)
    label_key = {"observed": "labels_obs", "full": "labels"}.get(config.data.train_labels)
    if label_key is None:
        raise ValueError(f"config.data.train_labels={config.data.train_labels!r} is not 'observed' or 'full'")
    for field in ("batch_size", "eval_batch_size"):
        if config.train[field] % mesh.size:
            raise ValueError(f"config.train.{field}={config.train[field]} is not divisible by the {mesh.size} devices")

    num_classes = data_spec.num_classes
    model, tx = make_model(config, num_classes), make_optimizer(config)
    num_train = input_pipeline.num_examples(builder, "train")
    batch_size = config.train.batch_size
    # The pipeline cuts the last batch to a multiple of the device count (maybe to nothing).
    last_rows = num_train % batch_size // mesh.size * mesh.size
    steps_per_epoch = num_train // batch_size + (last_rows > 0)
    if last_rows < num_train % batch_size:
        log.line(f"the last batch of each epoch drops {num_train % batch_size - last_rows} example(s) to split over {mesh.size} devices")
    unobserved_value = losses.UNOBSERVED_VALUE[data_spec.label_encoding]
    delta_rel = config.loss.delta_rel if config.loss.delta_rel is not None else losses.DEFAULT_DELTA_REL[config.loss.scheme]
    corrections = LabelCorrections(num_train, num_classes) if config.loss.scheme == "LL-Cp" else None

    checkpoints = RunCheckpoints(workdir)
    progress = {"epoch": 1, "step_in_epoch": 0, "best_val_map": -1.0, "best_epoch": 0}
    if checkpoints.latest_step() is not None:
        target = {"train": abstract_state(model, tx, config.data.image_size, mesh)}
        if corrections is not None:
            target["corrections"] = corrections.bits
        restored, progress = checkpoints.restore_latest(target)
        state = restored["train"]
        if corrections is not None:
            corrections = LabelCorrections(num_train, num_classes, np.asarray(restored["corrections"]))
        log.line(f"resuming {workdir} at step {int(state.step)}: epoch {progress['epoch']}, step {progress['step_in_epoch']} of {steps_per_epoch}")
    else:
        state = create_state(model, tx, config.data.image_size, config.seed, mesh)

    def save_latest():
        tree = {"train": state}
        if corrections is not None:
            tree["corrections"] = corrections.bits
        checkpoints.save_latest(int(state.step), tree, dict(progress))

    step_fn = jit_train_step(model, tx, config.loss.scheme, unobserved_value, mesh)
    eval_fn = jit_eval_step(model, mesh)
    log.line(
        f"training {config.data.name}: {num_train} images, {steps_per_epoch} steps/epoch x {config.train.num_epochs} epochs, "
        f"{config.loss.scheme} (delta_rel {delta_rel}), alpha {config.model.alpha}, ResNet-{config.model.depth}, "
        f"{config.model.dtype}, batch {batch_size} on {mesh.size} device(s)"
    )

    try:
        for epoch in range(progress["epoch"], config.train.num_epochs + 1):
            batches = input_pipeline.train_batches(
                builder, "train", label_key=label_key, batch_size=batch_size, image_size=config.data.image_size,
                seed=config.seed, epoch=epoch, start_step=progress["step_in_epoch"], flip=config.data.random_flip,
                shuffle_buffer=config.data.shuffle_buffer, process_index=process_index, process_count=process_count,
                row_multiple=mesh.size,
            )
            pending_correction = None
            window_start, window_images = time.perf_counter(), 0
            for step_in_epoch, batch in enumerate(batches, start=progress["step_in_epoch"] + 1):
                rows = len(batch["index"])  # the global batch
                local_index = batch["index"][rows // process_count * process_index :][: len(batch["labels"])]
                observed = batch["labels"]
                if corrections is not None:
                    observed = corrections.apply(local_index, observed)
                k = losses.num_large_losses(config.loss.scheme, epoch, rows, num_classes, delta_rel)
                state, step_metrics, selected = step_fn(
                    state, sharding.to_global(mesh, batch["image"]), sharding.to_global(mesh, observed), jnp.asarray(k, jnp.int32)
                )
                if corrections is not None:  # fetch the previous step's selection: it is done by now
                    if pending_correction is not None:
                        corrections.add(*pending_correction())
                    pending_correction = lambda index=batch["index"], sel=selected: (index, sharding.to_host(sel))
                progress["step_in_epoch"] = step_in_epoch
                window_images += rows

                last = step_in_epoch == steps_per_epoch
                if step_in_epoch % config.train.log_every_steps == 0 or last:
                    values = jax.device_get(step_metrics)
                    elapsed = time.perf_counter() - window_start
                    rate = window_images / elapsed
                    log.line(
                        f"epoch {epoch}/{config.train.num_epochs} step {step_in_epoch}/{steps_per_epoch} "
                        f"loss {values['loss']:.4f} k {k} selected {int(values['num_selected'])} | {rate:.1f} img/s"
                    )
                    log.record(kind="train", step=int(state.step), epoch=epoch, loss=float(values["loss"]), k=k,
                               num_selected=int(values["num_selected"]), images_per_second=rate)
                    window_start, window_images = time.perf_counter(), 0
                if not last and step_in_epoch % config.train.checkpoint_every_steps == 0:
                    if pending_correction is not None:
                        corrections.add(*pending_correction())
                        pending_correction = None
                    save_latest()
            if pending_correction is not None:
                corrections.add(*pending_correction())

            val = evaluate(eval_fn, state.model_vars(), builder, "validation", config, mesh)
            improved = val["map"] > progress["best_val_map"]
            if improved:
                checkpoints.save_best(int(state.step), state.model_vars(), val["map"])
                progress.update(best_val_map=val["map"], best_epoch=epoch)
            extra = f", {corrections.count()} corrected labels so far" if corrections is not None else ""
            log.line(f"epoch {epoch}: validation mAP {val['map']:.2f}{' (best)' if improved else ''}{extra}")
            log.record(kind="validation", step=int(state.step), epoch=epoch, map=val["map"],
                       map_with_positives=val["map_with_positives"])
            progress.update(epoch=epoch + 1, step_in_epoch=0)
            save_latest()

        best_vars = checkpoints.restore_best(abstract_state(model, tx, config.data.image_size, mesh).model_vars())
        test = evaluate(eval_fn, best_vars, builder, "test", config, mesh)
    finally:
        checkpoints.close()

    result = {
        "test_map": test["map"],
        "test_map_with_positives": test["map_with_positives"],
        "test_groups": {key: value for key, value in test.items() if key.startswith("group")},
        "num_test_examples": test["num_examples"],
        "best_epoch": progress["best_epoch"],
        "best_val_map": progress["best_val_map"],
    }
    log.line(f"test: {_result_line(result)}")
    log.record(kind="test", step=int(state.step), map=test["map"], map_with_positives=test["map_with_positives"])
    if jax.process_index() == 0:
        write_class_ap(os.path.join(workdir, CLASS_AP_FILE), catalog.class_names(builder, config.data.name), test)
        with open(result_path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(result_path + ".tmp", result_path)
    return result


def _result_line(result: dict) -> str:
    groups = "".join(f", {key} {value['map']:.2f}" for key, value in sorted(result["test_groups"].items()))
    return (
        f"test mAP {result['test_map']:.2f} (classes without positives dropped: {result['test_map_with_positives']:.2f}"
        f"{groups}) with the checkpoint of epoch {result['best_epoch']} (validation mAP {result['best_val_map']:.2f})"
    )
