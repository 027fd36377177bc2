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
from etils import epath  # gs:// workdirs on pods as well as local paths

from bridgegap_jax import input_pipeline, losses, metrics, pretrained, sharding
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
        process_index=jax.process_index(), process_count=jax.process_count(), antialias=config.data.antialias,
    )
    probs, labels = predict(eval_fn, model_vars, batches, mesh)
    # Partially verified labels (OpenImages) are evaluated on observed entries only (SPEC §5).
    mask = labels != -1 if catalog.spec(config.data.name).label_encoding == "partial" else None
    summary = metrics.summarize(probs, labels, mask=mask, groups=catalog.class_groups(builder))
    result = {
        "map": float(summary["map"]),
        "map_with_positives": _json_number(summary["map_with_positives"]),
        "num_examples": int(len(labels)),
        "ap": [float(a) for a in summary["ap"]],
    }
    for key, group in summary.items():
        if key.startswith("group"):
            result[key] = {"map": _json_number(group["map"]), "map_with_positives": _json_number(group["map_with_positives"])}
    return result


def _json_number(value) -> float | None:
    """NaN (a mean over no class) as None: strict JSON has no NaN."""
    return None if np.isnan(value) else float(value)


def write_class_ap(path: str, names: list[str], test: dict) -> None:
    """Per-class test AP as a tab-separated file (class index, name, AP in percent)."""
    with epath.Path(path + ".tmp").open("w") as f:
        f.write("class\tname\tap\n")
        for index, (name, ap) in enumerate(zip(names, test["ap"])):
            f.write(f"{index}\t{name}\t{100 * ap:.4f}\n")
    epath.Path(path + ".tmp").replace(path)


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
            with epath.Path(self.path).open("a") as f:
                f.write(json.dumps(fields) + "\n")


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuse to resume a run made with another config: its checkpoints would be silently mixed."""
    path = os.path.join(workdir, CONFIG_FILE)
    current = json.loads(config.to_json_best_effort())
    if epath.Path(path).exists():
        with epath.Path(path).open() as f:
            stored = json.load(f)
        if stored != current:
            differ = sorted(_diff_keys(stored, current))
            raise ValueError(
                f"workdir {workdir} holds a run made with a different config (fields: {', '.join(differ)}); "
                "use a new --workdir, or rerun with the config stored in " + path
            )
    elif jax.process_index() == 0:
        with epath.Path(path + ".tmp").open("w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        epath.Path(path + ".tmp").replace(path)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _diff_keys(x, y, prefix + key + ".")
        elif x != y:
            keys.append(prefix + key)
    return keys


class _LaggedCorrections:
    """LL-Cp: fold a step's selection into the bitmap once the next step is dispatched (no stall)."""

    def __init__(self, corrections: LabelCorrections):
        self.corrections = corrections
        self.pending = None

    def push(self, index: np.ndarray, selected: jax.Array) -> None:
        self.flush()
        self.pending = (index, selected)

    def flush(self) -> None:
        if self.pending is not None:
            index, selected = self.pending
            self.corrections.add(index, sharding.to_host(selected))
            self.pending = None


class Trainer:
    """One run of the protocol in a workdir: setup, resume, epochs, model selection, test."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, log: RunLog):
        self.config, self.workdir, self.log = config, workdir, log
        self.mesh = sharding.make_mesh()
        data_spec = catalog.spec(config.data.name)
        losses.check_scheme(config.loss.scheme)
        self.builder = catalog.load_builder(config.data.name, config.data.data_dir)
        self.label_key = {"observed": "labels_obs", "full": "labels"}.get(config.data.train_labels)
        if self.label_key is None:
            raise ValueError(f"config.data.train_labels={config.data.train_labels!r} is not 'observed' or 'full'")
        for field in ("batch_size", "eval_batch_size"):
            if config.train[field] % self.mesh.size:
                raise ValueError(f"config.train.{field}={config.train[field]} is not divisible by the {self.mesh.size} devices")

        self.num_classes = data_spec.num_classes
        self.model, self.tx = make_model(config, self.num_classes), make_optimizer(config)
        self.num_train = input_pipeline.num_examples(self.builder, "train")
        batch_size = config.train.batch_size
        # The pipeline cuts the last batch to a multiple of the device count (maybe to nothing).
        last_rows = self.num_train % batch_size // self.mesh.size * self.mesh.size
        self.steps_per_epoch = self.num_train // batch_size + (last_rows > 0)
        if last_rows < self.num_train % batch_size:
            log.line(f"the last batch of each epoch drops {self.num_train % batch_size - last_rows} example(s) "
                     f"to split over {self.mesh.size} devices")
        self.unobserved_value = losses.UNOBSERVED_VALUE[data_spec.label_encoding]
        self.delta_rel = config.loss.delta_rel
        if self.delta_rel is None:
            self.delta_rel = losses.DEFAULT_DELTA_REL[config.loss.scheme]
        self.corrections = LabelCorrections(self.num_train, self.num_classes) if config.loss.scheme == "LL-Cp" else None
        self.step_fn = jit_train_step(self.model, self.tx, config.loss.scheme, self.unobserved_value, self.mesh)
        self.eval_fn = jit_eval_step(self.model, self.mesh)
        if config.model.pretrained:
            pretrained.read_info(config.model.pretrained)  # missing weights: fail before the config is stored
        check_workdir_config(workdir, config)  # only now: a config that fails the checks above is not stored
        self.checkpoints = RunCheckpoints(workdir)
        self.state, self.progress = self._restore_or_init()

    def _abstract_state(self) -> TrainState:
        return abstract_state(self.model, self.tx, self.config.data.image_size, self.mesh)

    def _restore_or_init(self) -> tuple[TrainState, dict]:
        if self.checkpoints.latest_step() is None:
            state = create_state(self.model, self.tx, self.config.data.image_size, self.config.seed, self.mesh)
            if self.config.model.pretrained:  # the trunk only; Adam's zero state needs no change
                variables = pretrained.load_pretrained_trunk(self.config.model.pretrained, state.model_vars())
                state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
            return state, {"epoch": 1, "step_in_epoch": 0, "best_val_map": -1.0, "best_epoch": 0}
        target = {"train": self._abstract_state()}
        if self.corrections is not None:
            target["corrections"] = self.corrections.bits
        restored, progress = self.checkpoints.restore_latest(target)
        if self.corrections is not None:
            self.corrections = LabelCorrections(self.num_train, self.num_classes, np.asarray(restored["corrections"]))
        self.log.line(f"resuming {self.workdir} at step {int(restored['train'].step)}: epoch {progress['epoch']}, "
                      f"step {progress['step_in_epoch']} of {self.steps_per_epoch}")
        return restored["train"], progress

    def save_latest(self) -> None:
        tree = {"train": self.state}
        if self.corrections is not None:
            tree["corrections"] = self.corrections.bits
        self.checkpoints.save_latest(int(self.state.step), tree, dict(self.progress))

    def describe(self) -> str:
        config = self.config
        return (
            f"training {config.data.name}: {self.num_train} images, {self.steps_per_epoch} steps/epoch x "
            f"{config.train.num_epochs} epochs, {config.loss.scheme} (delta_rel {self.delta_rel}), alpha "
            f"{config.model.alpha}, ResNet-{config.model.depth}, {config.model.dtype}, batch "
            f"{config.train.batch_size} on {self.mesh.size} device(s)"
        )

    def train_epoch(self, epoch: int) -> None:
        """The rest of `epoch` from progress['step_in_epoch'], with mid-epoch checkpoints."""
        config, progress = self.config, self.progress
        process_index, process_count = jax.process_index(), jax.process_count()
        batches = input_pipeline.train_batches(
            self.builder, "train", label_key=self.label_key, batch_size=config.train.batch_size,
            image_size=config.data.image_size, seed=config.seed, epoch=epoch, start_step=progress["step_in_epoch"],
            flip=config.data.random_flip, shuffle_buffer=config.data.shuffle_buffer, process_index=process_index,
            process_count=process_count, row_multiple=self.mesh.size, observation=config.data.observation,
            antialias=config.data.antialias,
        )
        lagged = _LaggedCorrections(self.corrections) if self.corrections is not None else None
        window_start, window_images = time.perf_counter(), 0
        for step_in_epoch, batch in enumerate(batches, start=progress["step_in_epoch"] + 1):
            rows = len(batch["index"])  # the global batch; 'image' and 'labels' hold this process's rows
            observed = batch["labels"]
            if lagged is not None:
                local_index = batch["index"][rows // process_count * process_index :][: len(observed)]
                observed = self.corrections.apply(local_index, observed)
            k = losses.num_large_losses(config.loss.scheme, epoch, rows, self.num_classes, self.delta_rel)
            self.state, step_metrics, selected = self.step_fn(
                self.state, sharding.to_global(self.mesh, batch["image"]), sharding.to_global(self.mesh, observed),
                jnp.asarray(k, jnp.int32),
            )
            if lagged is not None:
                lagged.push(batch["index"], selected)
            progress["step_in_epoch"] = step_in_epoch
            window_images += rows

            last = step_in_epoch == self.steps_per_epoch
            if step_in_epoch % config.train.log_every_steps == 0 or last:
                values = jax.device_get(step_metrics)  # the only host sync of the loop
                rate = window_images / (time.perf_counter() - window_start)
                self.log.line(
                    f"epoch {epoch}/{config.train.num_epochs} step {step_in_epoch}/{self.steps_per_epoch} "
                    f"loss {values['loss']:.4f} k {k} selected {int(values['num_selected'])} | {rate:.1f} img/s"
                )
                self.log.record(kind="train", step=int(self.state.step), epoch=epoch, loss=float(values["loss"]), k=k,
                                num_selected=int(values["num_selected"]), images_per_second=rate)
                window_start, window_images = time.perf_counter(), 0
            if not last and step_in_epoch % config.train.checkpoint_every_steps == 0:
                if lagged is not None:
                    lagged.flush()
                self.save_latest()
        if lagged is not None:
            lagged.flush()

    def validate(self, epoch: int) -> None:
        """Validation mAP on full labels; keep the best (strict improvement); checkpoint the epoch."""
        state, progress = self.state, self.progress
        val = evaluate(self.eval_fn, state.model_vars(), self.builder, "validation", self.config, self.mesh)
        improved = val["map"] > progress["best_val_map"]
        if improved:
            self.checkpoints.save_best(int(state.step), state.model_vars(), val["map"])
            progress.update(best_val_map=val["map"], best_epoch=epoch)
        extra = f", {self.corrections.count()} corrected labels so far" if self.corrections is not None else ""
        self.log.line(f"epoch {epoch}: validation mAP {val['map']:.2f}{' (best)' if improved else ''}{extra}")
        self.log.record(kind="validation", step=int(state.step), epoch=epoch, map=val["map"],
                        map_with_positives=val["map_with_positives"])
        progress.update(epoch=epoch + 1, step_in_epoch=0)
        self.save_latest()

    def test(self) -> dict:
        """The test split, evaluated once with the checkpoint of the best validation mAP."""
        best_vars = self.checkpoints.restore_best(self._abstract_state().model_vars())
        return evaluate(self.eval_fn, best_vars, self.builder, "test", self.config, self.mesh)

    def run(self) -> dict:
        self.log.line(self.describe())
        try:
            for epoch in range(self.progress["epoch"], self.config.train.num_epochs + 1):
                self.train_epoch(epoch)
                self.validate(epoch)
            test = self.test()
        finally:
            self.checkpoints.close()  # waits for the asynchronous saves, also on a crash
        return test


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume, or just report) the whole protocol; returns the test result."""
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    result_path = epath.Path(workdir) / RESULT_FILE
    log = RunLog(workdir)
    if result_path.exists():
        with result_path.open() as f:
            result = json.load(f)
        log.line(f"{workdir} already finished: {_result_line(result)}")
        return result

    trainer = Trainer(config, workdir, log)
    test = trainer.run()
    result = {
        "test_map": test["map"],
        "test_map_with_positives": test["map_with_positives"],
        "test_groups": {key: value for key, value in test.items() if key.startswith("group")},
        "num_test_examples": test["num_examples"],
        "best_epoch": trainer.progress["best_epoch"],
        "best_val_map": trainer.progress["best_val_map"],
    }
    log.line(f"test: {_result_line(result)}")
    log.record(kind="test", step=int(trainer.state.step), map=test["map"], map_with_positives=test["map_with_positives"])
    if jax.process_index() == 0:
        write_class_ap(os.path.join(workdir, CLASS_AP_FILE), catalog.class_names(trainer.builder, config.data.name), test)
        with epath.Path(str(result_path) + ".tmp").open("w") as f:
            json.dump(result, f, indent=2)
        epath.Path(str(result_path) + ".tmp").replace(result_path)
    return result


def _result_line(result: dict) -> str:
    groups = "".join(f", {key} {value['map']:.2f}" for key, value in sorted(result["test_groups"].items()))
    dropped = result["test_map_with_positives"]
    return (
        f"test mAP {result['test_map']:.2f} (classes without positives dropped: "
        f"{'n/a' if dropped is None else format(dropped, '.2f')}"
        f"{groups}) with the checkpoint of epoch {result['best_epoch']} (validation mAP {result['best_val_map']:.2f})"
    )
