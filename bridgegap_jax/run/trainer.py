"""The protocol: train -> validate every epoch -> keep the best (strict improvement) -> test once.

`train_and_evaluate(config, workdir)` runs, resumes or reports a run. Everything the run needs is
checked before the workdir is touched (configuration.check / check_with, the dataset, the
weights); then the workdir is locked, its config stored, and the Trainer goes through the plan of
the input pipeline (every epoch's training and validation batches, then the test batches) from
wherever the latest checkpoint that restores stands. A stop asked for by a signal (stopping.py)
saves where the run stands and ends it. The host waits for the device only at log points (one
fetch), checkpoints, the loss scheme's host state (one step behind), epoch boundaries and evaluation.
Where the run stands is a `Progress` record and its time a `clock.Clock`; both are saved with
every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bridgegap_jax.base import sharding
from bridgegap_jax.base.errors import UserError
from bridgegap_jax.data import catalog, input_pipeline
from bridgegap_jax.model import pretrained
from bridgegap_jax.run import configuration, evaluation, part_gradients, rundir, steps, stopping
from bridgegap_jax.run.checkpoint import RunCheckpoints
from bridgegap_jax.run.clock import Clock, hms
from bridgegap_jax.run.results import environment, result_line
from bridgegap_jax.run.run_log import RunLog
from bridgegap_jax.run.rundir import RunDir


class NonFiniteError(UserError, RuntimeError):
    """The loss or the gradients stopped being finite; the message says where and what is kept."""


@dataclasses.dataclass
class Progress:
    """Where the run stands: saved with every checkpoint (beside the clock's state), restored on resume."""

    epoch: int = 1  # the epoch in training; num_epochs + 1 once the last one is validated
    step_in_epoch: int = 0  # its training steps done
    best_val_map: float = -1.0  # the best validation mAP so far: the test evaluates its checkpoint
    best_epoch: int = 0

    @classmethod
    def saved(cls, fields: dict) -> Progress:
        """The record in a checkpoint's progress item (which holds the clock's fields too)."""
        return cls(**{field.name: fields[field.name] for field in dataclasses.fields(cls)})

    def steps_left(self, num_epochs: int, steps_per_epoch: int) -> int:
        return (num_epochs - self.epoch + 1) * steps_per_epoch - self.step_in_epoch

    def evaluations_left(self, num_epochs: int) -> int:
        return num_epochs - self.epoch + 2  # the validation of this epoch and of each later one, the test


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
        self.tx, self.lr = configuration.optimizer(config, self.steps_per_epoch)
        self.step_fn = steps.jit_train_step(
            self.model, self.tx, self.scheme.loss, mesh, halt_on_nonfinite=config.train.nonfinite == "stop"
        )
        self.eval_fn = steps.jit_eval_step(self.model, mesh)
        self.checkpoints = RunCheckpoints(run_dir.checkpoints)
        self.stop_check = stopping.StopCheck()
        self.notes = []  # lines for the start of the run
        if jax.process_index() == 0:  # (the workdir is locked: no save of another run is under way)
            self.notes += self.checkpoints.remove_unfinished_saves()
        self.state, saved = self._restore_or_init()
        self.progress = Progress() if saved is None else Progress.saved(saved)
        self.clock = Clock(saved)
        parts = part_gradients.num_parts(config.train.noise_scale_parts, mesh.size)
        self.noise = part_gradients.Monitor(
            parts, self.model, self.scheme, mesh, config.train.batch_size, self.num_classes, saved
        )
        self.epoch_start = 0.0  # the clock's elapsed() when this session began training the epoch
        self.log = RunLog(
            run_dir,
            enabled=jax.process_index() == 0,
            resume=None if saved is None else (int(self.state.step), self.progress.epoch),
        )
        if saved is not None and changes:
            self.log.record("config", int(self.state.step), changed=changes)
            self.notes.append(
                "changed on resume: "
                + ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changes.items())
            )

    # --- state -----------------------------------------------------------------------------------
    def _abstract_state(self) -> steps.TrainState:
        return steps.abstract_state(self.model, self.tx, self.config.data.image_size, self.mesh)

    def _restore_or_init(self) -> tuple[steps.TrainState, dict | None]:
        """The state, and the progress item of the checkpoint it comes from (None: a new run)."""
        if self.checkpoints.latest_step() is None:
            state = steps.create_state(
                self.model, self.tx, self.config.data.image_size, self.config.seed, self.mesh
            )
            if self.config.model.pretrained:  # the trunk only; the optimizer's zero state needs no change
                variables = pretrained.load_pretrained_trunk(self.config.model.pretrained, state.model_vars())
                state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
            return state, None
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

    def save_latest(self) -> None:
        self.host_state.flush()
        self.check_finite(*jax.device_get((self.state.skipped_steps, self.state.first_skipped_step)))
        self.checkpoints.save_latest(
            int(self.state.step),
            {"train": self.state, "host": self.host_state.checkpoint()},
            {**dataclasses.asdict(self.progress), **self.clock.state(), **self.noise.state()},
        )

    def check_finite(self, skipped, first_skipped) -> int:
        """The number of skipped non-finite steps (the state's counters, fetched by the caller); with the
        'stop' policy, any is the end of the run."""
        skipped = int(skipped)
        if skipped and self.config.train.nonfinite == "stop":
            first = int(first_skipped)
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
        epochs, epoch, step = self.config.train.num_epochs, self.progress.epoch, self.progress.step_in_epoch
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
            where = f"epoch {epoch}, step {step} of {self.steps_per_epoch}"
            if epoch > epochs:  # every epoch trained and validated: the test is left
                where = "training done, the test is left"
            self.log.line(f"resuming {self.run_dir.workdir} at step {int(self.state.step)}: {where}")
        plan = input_pipeline.run_plan(self.dataset, self.options, epochs)
        reader = input_pipeline.BatchReader(self.dataset, plan, self.options)
        start = reader.segment_start(2 * (epoch - 1)) + (step if epoch <= epochs else 0)
        try:
            if self.stop_check.after_step(int(self.state.step)):  # several processes: count from here
                raise stopping.StopRequested
            with input_pipeline.Stream(reader, start, configuration.workers(self.config)) as stream:
                for epoch in range(epoch, epochs + 1):
                    self.train_epoch(
                        epoch, self._take(stream, self.steps_per_epoch - self.progress.step_in_epoch)
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
        """The rest of `epoch` from progress.step_in_epoch, with mid-epoch checkpoints."""
        config, progress, every = self.config, self.progress, self.config.train.validate_every_steps
        self.epoch_start = self.clock.elapsed()

        def observed(stream):  # the scheme's host state may change the labels (LL-Cp's corrections)
            for batch in stream:
                batch["labels"] = self.host_state.observed(batch["index"], batch["labels"])
                yield batch

        window = []  # the metrics (on the device) of the steps since the last log point
        first, skipped = progress.step_in_epoch, int(self.state.skipped_steps)  # a state saved or restored
        device_batches = sharding.prefetch_to_device(observed(batches), self.mesh, ("image", "labels"))
        for step_in_epoch, (batch, device) in enumerate(device_batches, start=first + 1):
            rows = len(batch["batch_index"])
            ks = self.scheme.large_loss_counts(epoch, rows, self.num_classes)  # one per selection group
            last = step_in_epoch == self.steps_per_epoch
            logs = step_in_epoch % config.train.log_every_steps == 0 or last
            noise = self.noise.measure(self.state, device, epoch, rows, now=logs)  # before the update
            self.state, metrics, selected = self.step_fn(
                self.state, device["image"], device["labels"], jnp.asarray(ks)
            )
            if step_in_epoch == first + 1:  # the first step since this start: from now on a stop saves it
                stopping.something_to_save()
            self.clock.count(rows)
            self.host_state.record(batch["batch_index"], selected)
            progress.step_in_epoch = step_in_epoch
            window.append(metrics)
            if logs:
                self._log_train(epoch, step_in_epoch, int(ks.sum()), window, noise)
                window = []
            if not last and step_in_epoch % config.train.checkpoint_every_steps == 0:
                self.save_latest()
            step = (epoch - 1) * self.steps_per_epoch + step_in_epoch
            if every and not last and step % every == 0:  # the epoch's end validates anyway
                self.validate_within(epoch, step_in_epoch, step)
            if self.stop_check.after_step(step):
                raise stopping.StopRequested
        self.host_state.flush()
        taken = progress.step_in_epoch - first
        if taken and int(self.state.skipped_steps) - skipped == taken:  # 'skip': the model does not train
            raise NonFiniteError(
                f"all {taken} training steps of epoch {epoch} were skipped: their loss or gradients were not "
                f"finite (lr {float(self.lr(int(self.state.step) - 1)):g}); lower --config.train.lr"
            )

    def _log_train(self, epoch: int, step_in_epoch: int, k: int, window: list[dict], noise) -> None:
        """A progress line and a record: the window's mean loss and gradient norm, its images/s, the
        noise scale (`noise`: what part_gradients.Monitor.measure returned at this step)."""
        step = (epoch - 1) * self.steps_per_epoch + step_in_epoch  # skipped steps count too
        values = jax.device_get(
            {
                "loss": jnp.mean(jnp.stack([m["loss"] for m in window])),
                "grad_norm": jnp.mean(jnp.stack([m["grad_norm"] for m in window])),
                "num_selected": window[-1]["num_selected"],
                "lr": self.lr(step - 1),
                "skipped": self.state.skipped_steps,
                "first_skipped": self.state.first_skipped_step,
                "noise": noise,
            }
        )  # the one wait for the device between two log points (but checkpoints and epoch ends)
        rate = self.clock.tick()
        self.noise.add(values["noise"])
        skipped = self.check_finite(values["skipped"], values["first_skipped"])
        extra = f" | {skipped} non-finite step(s) skipped" if skipped else ""
        self.log.line(
            f"epoch {epoch}/{self.config.train.num_epochs} step {step_in_epoch}/{self.steps_per_epoch} | "
            f"loss {values['loss']:.4f} grad_norm {values['grad_norm']:.4f}{self.noise.line()} k {k} selected "
            f"{int(values['num_selected'])} | {rate:.1f} img/s | {hms(self.clock.elapsed())} elapsed"
            f"{self._eta()}{extra}"
        )
        self.log.record(
            "train",
            step,
            epoch=epoch,
            loss=float(values["loss"]),
            grad_norm=float(values["grad_norm"]),
            k=k,
            num_selected=int(values["num_selected"]),
            lr=float(values["lr"]),
            images_per_second=rate,
            skipped_steps=skipped,
            **self.noise.record(),
        )
        self.heartbeat()

    def _eta(self) -> str:
        """', ETA h:mm:ss' for the rest of the run, from where it stands (once a pace is known)."""
        epochs, every = self.config.train.num_epochs, self.config.train.validate_every_steps
        steps_left = self.progress.steps_left(epochs, self.steps_per_epoch)
        evaluations = self.progress.evaluations_left(epochs) + (steps_left // every if every else 0)
        seconds = self.clock.eta(steps_left, evaluations)
        return "" if seconds is None else f", ETA {hms(seconds)}"

    def validate(self, epoch: int, batches) -> None:
        """Validation mAP on full labels; keep the best (strict improvement); checkpoint the epoch."""
        state, progress = self.state, self.progress
        with self.clock.paused():
            val = self._evaluate("validation", state.model_vars(), batches)
        improved = val["map"] > progress.best_val_map
        stopping.something_to_save()  # the validation is saved now, even after a stop
        if improved:
            self.checkpoints.save_best(int(state.step), state.model_vars(), val["map"])
            progress.best_val_map, progress.best_epoch = val["map"], epoch
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        extra, elapsed = self.host_state.describe(), self.clock.elapsed()
        self.log.line(
            f"epoch {epoch}/{self.config.train.num_epochs}: validation "
            f"mAP {val['map']:.2f}{' (best)' if improved else ''}"
            f" loss {val['loss']:.4f}{'; ' + extra if extra else ''} | epoch "
            f"{hms(elapsed - self.epoch_start)} | {hms(elapsed)} elapsed{self._eta()}"
        )
        self._record_validation("validation", int(state.step), epoch, val)
        self.save_latest()
        self.heartbeat()

    def validate_within(self, epoch: int, step_in_epoch: int, step: int) -> None:
        """A validation inside the epoch (train.validate_every_steps); the best checkpoint stays per epoch."""
        plan = input_pipeline.eval_plan(self.dataset, "validation", self.options)
        reader = input_pipeline.BatchReader(self.dataset, plan, self.options)  # read here, between steps
        model_vars = jax.block_until_ready(self.state.model_vars())  # its step's time is training time
        with self.clock.paused():
            val = self._evaluate("validation", model_vars, map(reader, range(len(reader))))
        self.log.line(
            f"epoch {epoch} step {step_in_epoch}/{self.steps_per_epoch}: validation mAP {val['map']:.2f}"
        )
        self._record_validation("step_validation", step, epoch, val)
        self.heartbeat()

    def _record_validation(self, kind: str, step: int, epoch: int, val: dict) -> None:
        self.log.record(kind, step, epoch=epoch, **{k: val[k] for k in ("map", "map_with_positives", "loss")})

    def _evaluate(self, split: str, model_vars, batches) -> dict:
        size = self.dataset.split_sizes[split]
        probs, labels, bce = evaluation.predict(self.eval_fn, model_vars, batches, self.mesh, size)
        if not (np.isfinite(probs).all() and np.isfinite(bce)):
            skipped = int(self.state.skipped_steps)
            raise NonFiniteError(
                f"the {split} scores are not finite at epoch {self.progress.epoch}: the model has "
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
            "best_epoch": self.progress.best_epoch,
            "best_val_map": self.progress.best_val_map,
            "evaluation": self.dataset.evaluation,  # split -> catalog.EVALUATION mode
            "wall_time_s": round(self.clock.elapsed(), 1),
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
        self.log.line(f"test: {result_line(result)} | total {hms(result['wall_time_s'])}")
        return result


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

    lock = rundir.lock_everywhere(run_dir)
    try:
        changes = {}
        if main_process:  # again, now that no other run can change the workdir
            changes = run_dir.check_config(config_json, configuration.CHANGEABLE_ON_RESUME)
        trainer = Trainer(config, run_dir, dataset, mesh, changes)  # restores: may still refuse to go on
        if main_process:
            run_dir.store_config(config_json)
        return trainer.run(heartbeat=lock.heartbeat if main_process else lambda: None)
    finally:
        rundir.unlock(lock)
