"""The protocol: train -> validate every epoch -> keep the best (strict improvement) -> test once.

`train_and_evaluate(config, workdir)` runs, resumes or reports a run. Everything the run needs is
checked before the workdir is touched (configuration.check / check_with, the dataset, the
weights); then the workdir is locked, its config stored, and the Trainer goes through the plan of
the input pipeline (every epoch's training and validation batches, then the test batches) from
wherever the latest checkpoint that restores stands. A stop asked for by a signal (stopping.py)
saves where the run stands and ends it. The only host syncs are at log points, checkpoints, the
loss scheme's host state (one step behind), epoch boundaries and evaluation.
"""

from __future__ import annotations

import datetime
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bridgegap_jax import (
    configuration,
    evaluation,
    input_pipeline,
    pretrained,
    rundir,
    sharding,
    steps,
    stopping,
)
from bridgegap_jax.checkpoint import RunCheckpoints
from bridgegap_jax.datasets import catalog
from bridgegap_jax.errors import UserError
from bridgegap_jax.results import environment, result_line
from bridgegap_jax.run_log import RunLog
from bridgegap_jax.rundir import RunDir, RunDirError


class NonFiniteError(UserError, RuntimeError):
    """The loss or the gradients stopped being finite; the message says where and what is kept."""


def duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class Trainer:
    """One run of the protocol in a locked workdir: resume, epochs, model selection, test."""

    def __init__(
        self, config: ml_collections.ConfigDict, run_dir: RunDir, dataset: catalog.Dataset, mesh, changes=None
    ):
        """`changes`: config fields that differ from the stored ones, {name: [stored, new]} (recorded)."""
        self.config, self.run_dir, self.dataset, self.mesh = config, run_dir, dataset, mesh
        self.options = configuration.pipeline_options(
            config, mesh.size, jax.process_index(), jax.process_count()
        )
        self.num_train, self.num_classes = dataset.split_sizes["train"], dataset.num_classes
        self.steps_per_epoch = input_pipeline.steps_per_epoch(self.num_train, self.options)
        self.scheme = configuration.scheme(config, dataset)
        self.host_state = self.scheme.host_state(self.num_train, self.num_classes)
        self.model = configuration.model(config, self.num_classes)
        self.lr = configuration.lr_schedule(config, self.steps_per_epoch)
        self.tx = configuration.optimizer(config, self.steps_per_epoch)
        self.step_fn = steps.jit_train_step(
            self.model, self.tx, self.scheme.loss, mesh, halt_on_nonfinite=config.train.nonfinite == "stop"
        )
        self.eval_fn = steps.jit_eval_step(self.model, mesh)
        self.checkpoints = RunCheckpoints(run_dir.checkpoints)
        self.stop_check = stopping.StopCheck()
        self.notes = []  # lines for the start of the run
        self.state, self.progress = self._restore_or_init()
        resumed = self.checkpoints.latest_step() is not None
        self.log = RunLog(
            run_dir,
            enabled=jax.process_index() == 0,
            resume=(int(self.state.step), self.progress["epoch"]) if resumed else None,
        )
        if resumed and changes:
            self.log.record("config", int(self.state.step), changed=changes)
            self.notes.append(
                "changed on resume: "
                + ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changes.items())
            )
        self.session_start = time.perf_counter()
        self.times = {"train_steps": 0, "train_s": 0.0, "eval_s": None}  # this session's pace, for the ETA
        self.epoch_seconds = 0.0

    # --- state -----------------------------------------------------------------------------------
    def _abstract_state(self) -> steps.TrainState:
        return steps.abstract_state(self.model, self.tx, self.config.data.image_size, self.mesh)

    def _restore_or_init(self) -> tuple[steps.TrainState, dict]:
        if self.checkpoints.latest_step() is None:
            state = steps.create_state(
                self.model, self.tx, self.config.data.image_size, self.config.seed, self.mesh
            )
            if self.config.model.pretrained:  # the trunk only; the optimizer's zero state needs no change
                variables = pretrained.load_pretrained_trunk(self.config.model.pretrained, state.model_vars())
                state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
            progress = {
                "epoch": 1,
                "step_in_epoch": 0,
                "best_val_map": -1.0,
                "best_epoch": 0,
                "elapsed_s": 0.0,
            }
            return state, progress
        restored, progress = self.checkpoints.restore_latest(
            {"train": self._abstract_state(), "host": self.host_state.checkpoint()}
        )
        self.notes += [
            f"the checkpoint at step {step} cannot be restored ({reason}); set aside as {where}, resuming from the "
            f"one at step {int(restored['train'].step)}"
            for step, reason, where in self.checkpoints.set_aside
        ]
        self.checkpoints.check_best(
            steps.abstract_model_vars(self.model, self.config.data.image_size, self.mesh)
        )
        skipped = int(restored["train"].skipped_steps)
        if skipped and self.config.train.nonfinite == "stop":  # it would take them for new ones and stop
            raise configuration.ConfigError(
                f"config.train.nonfinite='stop': the checkpoint at step {int(restored['train'].step)} holds {skipped} "
                "step(s) skipped as non-finite under 'skip'; resume it with --config.train.nonfinite=skip"
            )
        self.host_state.restore(restored["host"])
        return restored["train"], progress

    def elapsed(self) -> float:
        """Wall time of the run so far, over every session that worked on it."""
        return self.progress["elapsed_s"] + time.perf_counter() - self.session_start

    def save_latest(self) -> None:
        self.host_state.flush()
        self.check_finite()
        progress = dict(self.progress, elapsed_s=self.elapsed())
        self.checkpoints.save_latest(
            int(self.state.step), {"train": self.state, "host": self.host_state.checkpoint()}, progress
        )

    def check_finite(self) -> int:
        """The number of skipped non-finite steps; with the 'stop' policy, any is the end of the run."""
        skipped = int(self.state.skipped_steps)
        if skipped and self.config.train.nonfinite == "stop":
            first = int(self.state.first_skipped_step)
            epoch = (first - 1) // self.steps_per_epoch + 1
            kept = self.checkpoints.latest_step()
            saved = (
                f"the latest checkpoint (step {kept}) holds the last finite state"
                if kept is not None
                else "no checkpoint was saved before it"
            )
            raise NonFiniteError(
                f"the loss or the gradients became non-finite at step {first} (epoch {epoch}, lr "
                f"{float(self.lr(first - 1)):g}): stopped without saving; {saved}. Lower --config.train.lr, or pass "
                "--config.train.nonfinite=skip to drop such steps"
            )
        return skipped

    # --- the run ---------------------------------------------------------------------------------
    def describe(self) -> str:
        c = self.config
        return (
            f"training {c.data.name}: {self.num_train} images, {self.steps_per_epoch} steps/epoch x "
            f"{c.train.num_epochs} epochs, {self.scheme.describe()}, alpha {c.model.alpha}, ResNet-{c.model.depth}, "
            f"{c.model.dtype}, batch {c.train.batch_size} on {self.mesh.size} device(s)"
        )

    def run(self, heartbeat=lambda: None) -> dict:
        """The rest of the run from the latest checkpoint; writes and returns the result."""
        self.heartbeat = heartbeat
        epochs, epoch, step = (
            self.config.train.num_epochs,
            self.progress["epoch"],
            self.progress["step_in_epoch"],
        )
        self.log.line(self.describe())
        dropped = self.num_train % self.options.batch_size - input_pipeline.last_batch_rows(
            self.num_train, self.options
        )
        if dropped:
            self.log.line(
                f"the last batch of each epoch drops {dropped} example(s) to split over {self.mesh.size} devices"
            )
        for note in self.notes:
            self.log.line(note)
        if self.checkpoints.latest_step() is not None:
            self.log.line(
                f"resuming {self.run_dir.workdir} at step {int(self.state.step)}: epoch {epoch}, "
                f"step {step} of {self.steps_per_epoch}"
            )
        plan = input_pipeline.run_plan(self.dataset, self.options, epochs)
        reader = input_pipeline.BatchReader(self.dataset, plan, self.options)
        start = reader.segment_start(2 * (epoch - 1)) + (step if epoch <= epochs else 0)
        try:
            if self.stop_check.after_step(int(self.state.step)):  # several processes: count from here
                raise stopping.StopRequested
            with input_pipeline.Stream(reader, start, configuration.workers(self.config)) as stream:
                for epoch in range(epoch, epochs + 1):
                    self.train_epoch(
                        epoch, self._take(stream, self.steps_per_epoch - self.progress["step_in_epoch"])
                    )
                    self.validate(epoch, self._take(stream, plan[2 * epoch - 1].num_batches))
                test = self.test(self._take(stream, plan[-1].num_batches))
            return self.finish(test)
        except stopping.StopRequested:
            if int(self.state.step) > (self.checkpoints.latest_step() or 0):  # else it is saved already
                self.save_latest()
            raise stopping.Stopped(int(self.state.step)) from None
        finally:
            self.checkpoints.close()  # waits for the asynchronous saves, also on a crash
            self.log.close()

    def _take(self, stream, count: int):
        """The stream's next `count` batches; before each, whether a signal asked this process to stop."""
        for _ in range(count):
            if self.stop_check.before_batch():
                raise stopping.StopRequested
            yield next(stream)

    def train_epoch(self, epoch: int, batches) -> None:
        """The rest of `epoch` from progress['step_in_epoch'], with mid-epoch checkpoints."""
        config, progress = self.config, self.progress
        epoch_start = time.perf_counter()

        def observed(stream):  # the scheme's host state may change the labels (LL-Cp's corrections)
            for batch in stream:
                batch["labels"] = self.host_state.observed(batch["index"], batch["labels"])
                yield batch

        window = {"start": time.perf_counter(), "images": 0, "losses": [], "first": True}
        first, skipped = progress["step_in_epoch"], int(self.state.skipped_steps)  # a state saved or restored
        device_batches = sharding.prefetch_to_device(observed(batches), self.mesh, ("image", "labels"))
        for step_in_epoch, (batch, device) in enumerate(device_batches, start=first + 1):
            rows = len(batch["batch_index"])
            ks = self.scheme.large_loss_counts(epoch, rows, self.num_classes)  # one per selection group
            self.state, metrics, selected = self.step_fn(
                self.state, device["image"], device["labels"], jnp.asarray(ks)
            )
            self.host_state.record(batch["batch_index"], selected)
            progress["step_in_epoch"] = step_in_epoch
            window["images"] += rows
            window["losses"].append(metrics["loss"])
            last = step_in_epoch == self.steps_per_epoch
            if step_in_epoch % config.train.log_every_steps == 0 or last:
                self._log_train(epoch, step_in_epoch, int(ks.sum()), metrics, window)
            if not last and step_in_epoch % config.train.checkpoint_every_steps == 0:
                self.save_latest()
            if self.stop_check.after_step((epoch - 1) * self.steps_per_epoch + step_in_epoch):
                raise stopping.StopRequested
        self.host_state.flush()
        self.epoch_seconds = time.perf_counter() - epoch_start
        taken = progress["step_in_epoch"] - first
        if taken and int(self.state.skipped_steps) - skipped == taken:  # 'skip': the model does not train
            raise NonFiniteError(
                f"all {taken} training steps of epoch {epoch} were skipped: their loss or gradients were not "
                f"finite (lr {float(self.lr(int(self.state.step) - 1)):g}); lower --config.train.lr"
            )

    def _log_train(self, epoch: int, step_in_epoch: int, k: int, metrics: dict, window: dict) -> None:
        losses = jnp.stack(window["losses"])
        values = jax.device_get(
            {
                "loss": jnp.mean(losses),
                "num_selected": metrics["num_selected"],
                "skipped": self.state.skipped_steps,
            }
        )  # the only host sync of the loop
        seconds = time.perf_counter() - window["start"]
        rate = window["images"] / seconds
        if not window["first"]:  # the session's first window holds the compilation
            self.times["train_steps"] += len(window["losses"])
            self.times["train_s"] += seconds
        skipped = self.check_finite()
        step = int(self.state.step)
        extra = f" | {skipped} non-finite step(s) skipped" if skipped else ""
        self.log.line(
            f"epoch {epoch}/{self.config.train.num_epochs} step {step_in_epoch}/{self.steps_per_epoch} | "
            f"loss {values['loss']:.4f} k {k} selected {int(values['num_selected'])} | {rate:.1f} img/s | "
            f"{duration(self.elapsed())} elapsed{self._eta(epoch, step_in_epoch)}{extra}"
        )
        self.log.record(
            "train",
            step,
            epoch=epoch,
            loss=float(values["loss"]),
            k=k,
            num_selected=int(values["num_selected"]),
            lr=float(self.lr(step - 1)),
            images_per_second=rate,
            skipped_steps=skipped,
        )
        self.heartbeat()
        window.update(start=time.perf_counter(), images=0, losses=[], first=False)

    def _eta(self, epoch: int, step_in_epoch: int, validated: bool = False) -> str:
        """', ETA h:mm:ss' for the rest of the run, from this session's pace (once it is known)."""
        if not self.times["train_steps"]:
            return ""
        epochs = self.config.train.num_epochs
        steps_left = (epochs - epoch) * self.steps_per_epoch + self.steps_per_epoch - step_in_epoch
        evals_left = epochs - epoch + 1 - validated + 1  # validations, and the test
        eval_s = self.times["eval_s"] or 0.0
        seconds = steps_left * self.times["train_s"] / self.times["train_steps"] + evals_left * eval_s
        return f", ETA {duration(seconds)}"

    def validate(self, epoch: int, batches) -> None:
        """Validation mAP on full labels; keep the best (strict improvement); checkpoint the epoch."""
        state, progress = self.state, self.progress
        start = time.perf_counter()
        val = self._evaluate("validation", state.model_vars(), batches)
        self.times["eval_s"] = time.perf_counter() - start
        improved = val["map"] > progress["best_val_map"]
        if improved:
            self.checkpoints.save_best(int(state.step), state.model_vars(), val["map"])
            progress.update(best_val_map=val["map"], best_epoch=epoch)
        extra = self.host_state.describe()
        self.log.line(
            f"epoch {epoch}/{self.config.train.num_epochs}: validation "
            f"mAP {val['map']:.2f}{' (best)' if improved else ''}"
            f" loss {val['loss']:.4f}{'; ' + extra if extra else ''} | epoch "
            f"{duration(self.epoch_seconds + self.times['eval_s'])} | {duration(self.elapsed())} "
            f"elapsed{self._eta(epoch, self.steps_per_epoch, validated=True)}"
        )
        self.log.record(
            "validation",
            int(state.step),
            epoch=epoch,
            map=val["map"],
            map_with_positives=val["map_with_positives"],
            loss=val["loss"],
        )
        progress.update(epoch=epoch + 1, step_in_epoch=0)
        self.save_latest()
        self.heartbeat()

    def _evaluate(self, split: str, model_vars, batches) -> dict:
        size = self.dataset.split_sizes[split]
        probs, labels, bce = evaluation.predict(self.eval_fn, model_vars, batches, self.mesh, size)
        if not (np.isfinite(probs).all() and np.isfinite(bce)):
            skipped = int(self.state.skipped_steps)
            raise NonFiniteError(
                f"the {split} scores are not finite at epoch {self.progress['epoch']}: the model has "
                f"diverged (lr {self.config.train.lr:g}"
                f"{f', {skipped} non-finite step(s) skipped' if skipped else ''}); lower --config.train.lr"
            )
        return evaluation.summarize(self.dataset, probs, labels, bce)

    def test(self, batches) -> dict:
        """The test split, evaluated once with the checkpoint of the best validation mAP."""
        best_vars = self.checkpoints.restore_best(
            steps.abstract_model_vars(self.model, self.config.data.image_size, self.mesh)
        )
        return self._evaluate("test", best_vars, batches)

    def finish(self, test: dict) -> dict:
        """The result: recorded, written (result.json, per-class AP) and returned."""
        result = {
            "test_map": test["map"],
            "test_map_with_positives": test["map_with_positives"],
            "test_groups": {key: value for key, value in test.items() if key.startswith("group")},
            "test_loss": test["loss"],
            "num_test_examples": test["num_examples"],
            "best_epoch": self.progress["best_epoch"],
            "best_val_map": self.progress["best_val_map"],
            "evaluation": self.dataset.evaluation,  # split -> catalog.EVALUATION mode
            "wall_time_s": round(self.elapsed(), 1),
            "environment": environment(),
        }
        self.log.record(
            "test",
            int(self.state.step),
            map=test["map"],
            map_with_positives=test["map_with_positives"],
            loss=test["loss"],
        )
        if jax.process_index() == 0:
            self.run_dir.write_class_ap(self.dataset.class_names, test["ap"])
            self.run_dir.write_result(result)
        self.log.line(f"test: {result_line(result)} | total {duration(result['wall_time_s'])}")
        return result


def _lock_everywhere(lock) -> None:
    """Process 0 takes the workdir's lock; every process learns whether it did."""
    error = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except (RunDirError, OSError) as e:  # busy, unwritable, a full disk
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if refused and error is None:
            error = RunDirError("process 0 could not lock the workdir: see its output")
    if error is not None:
        raise error


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume, or just report) the whole protocol in `workdir`; returns the result."""
    configuration.check(config)
    run_dir = RunDir(workdir)
    run_dir.check_usable()
    config_json = json.loads(config.to_json_best_effort())
    main_process = jax.process_index() == 0
    if run_dir.path.exists():
        run_dir.check_config(config_json, configuration.CHANGEABLE_ON_RESUME)
        finished = run_dir.result()
        if finished is not None:
            if main_process:
                print(f"{workdir} already finished: {result_line(finished)}", flush=True)
            return finished
    mesh = sharding.make_mesh()
    dataset = catalog.open_dataset(config.data.name, configuration.data_dir(config))
    configuration.check_with(config, dataset, mesh.size, jax.process_count())
    if config.model.pretrained:
        pretrained.read_info(config.model.pretrained)  # missing weights: fail before the workdir exists

    created = not run_dir.path.exists()
    with rundir.writing(workdir):
        run_dir.path.mkdir(parents=True, exist_ok=True)
    lock = run_dir.lock()
    try:
        _lock_everywhere(lock)
    except (RunDirError, OSError):
        if created and main_process and not any(run_dir.path.iterdir()):
            run_dir.path.rmdir()
        raise
    try:
        changes = {}
        if main_process:  # again, now that no other run can change the workdir
            changes = run_dir.check_config(config_json, configuration.CHANGEABLE_ON_RESUME)
        trainer = Trainer(config, run_dir, dataset, mesh, changes)  # restores: may still refuse to go on
        if main_process:
            run_dir.store_config(config_json)
        return trainer.run(heartbeat=lock.heartbeat if main_process else lambda: None)
    finally:
        if main_process:
            lock.release()
