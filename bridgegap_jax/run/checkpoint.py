"""Orbax checkpoints of a run: `latest` (to resume) and `best` (validation mAP, for the test).

    <checkpoints>/latest/<step>/{state, progress}   train state + a scheme's host state (LL-Cp's
                                                  bitmap), and where the run stands (epoch, step, ...)
    <checkpoints>/best/<step>/model                 params + batch_stats of the best epoch
    <checkpoints>/latest/damaged_<step>           a checkpoint that could not be restored (set aside)

Saves are asynchronous and atomic (orbax writes a temporary folder and renames it), so a crash
during a save leaves the previous checkpoint intact; `close()` waits for pending saves. The
temporary folder of a save that a crash (or a second Ctrl-C) cut short is removed when the run
starts again (`remove_unfinished_saves`), so a workdir holds three checkpoints at a time. The two
latest checkpoints are kept: when the newest cannot be restored (a truncated file, damaged
metadata), the one before it is, and the damaged one is moved aside, never deleted. The best
manager records the metric with each save (`best_fn`), so `best_step()` survives restarts; a
resumed run restores the best model once at the start, so that damage to it stops the run there
and not at the test. Every process calls every method (orbax coordinates the hosts; they agree on
whether a restore worked); on pods the workdir must be storage that all hosts see (gs://...).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bridgegap_jax.base.errors import UserError

KEEP_LATEST = 2
UNFINISHED_SAVE = "*.orbax-checkpoint-tmp*"  # orbax's temporary folder of a save not yet committed


class CheckpointError(UserError, RuntimeError):
    """Checkpoints that cannot be restored; the message names them and what to do."""


def _everywhere(ok: bool) -> bool:
    """Whether `ok` holds on every process (one small collective; restores are rare)."""
    import jax

    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _reason(error: Exception) -> str:
    """The error in one line. orbax wraps a failed read of an array in an error that names the array's
    index and ends in 'See full TensorStore details: <bound method ...>': its cause says what is wrong.
    TensorStore's messages end in the store's spec ('[tensorstore_spec=...]'), of no use to a user."""
    if "See full TensorStore details" in str(error) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).split(" [tensorstore_spec=", 1)[0]
    return " ".join(f"{type(error).__name__}: {text}".split())[:400]


class RunCheckpoints:
    def __init__(self, directory: str | epath.Path):
        """`directory`: the run's checkpoints folder (rundir.RunDir.checkpoints), absolute or gs://."""
        root = epath.Path(directory)
        self._latest = ocp.CheckpointManager(
            root / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=KEEP_LATEST, create=True),
            item_names=("state", "progress"),
        )
        self.set_aside: list[tuple[int, str, str]] = []  # damaged latest checkpoints: (step, reason, where)
        self._best = ocp.CheckpointManager(
            root / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics["val_map"], best_mode="max", create=True
            ),
            item_names=("model",),
        )

    def remove_unfinished_saves(self) -> list[str]:
        """Delete the temporary folders of saves that never finished (the run that made them is gone:
        call it only with the workdir locked); a line saying so, if there were any."""
        unfinished = sorted(
            path for manager in (self._latest, self._best) for path in manager.directory.glob(UNFINISHED_SAVE)
        )
        for path in unfinished:
            path.rmtree()
        if not unfinished:
            return []
        names = ", ".join(f"{path.parent.name}/{path.name}" for path in unfinished)
        return [
            f"removed {len(unfinished)} unfinished checkpoint save(s) left by an interrupted run: {names}"
        ]

    # --- latest: everything needed to resume exactly ---------------------------------------
    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save_latest(self, step: int, state: Any, progress: dict) -> None:
        """(A step saved before may be saved again with other progress: a run stopped during a
        validation saves where its epoch's training ended, and saves that step again after it.)"""
        if step in self._latest.all_steps():
            self._latest.delete(step)
        self._latest.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
        )

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict]:
        """(state, progress) of the newest checkpoint that restores, onto `abstract_state`'s shardings.
        Each newer one, which did not, is set aside and listed in `set_aside`: (step, reason, where)."""
        failed = []
        for step in sorted(self._latest.all_steps(), reverse=True):
            try:
                restored = self._latest.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()
                    ),
                )
                error = None
            except Exception as e:  # noqa: BLE001 - tensorstore, orbax and json report damage in many types
                error = e
            if _everywhere(error is None):
                self.set_aside += [self._set_aside(*f) for f in failed]
                return restored["state"], restored["progress"]
            failed.append((step, _reason(error) if error else "it did not restore on another process"))
        raise CheckpointError(
            f"no checkpoint in {self._latest.directory} can be restored ("
            + "; ".join(f"step {step}: {reason}" for step, reason in failed)
            + "); nothing was moved or deleted. Use a new --workdir, or move the checkpoints folder away to "
            "start this run again"
        )

    def _set_aside(self, step: int, reason: str) -> tuple[int, str, str]:
        """Renames a damaged step (orbax reads only numbers there), so that it is neither resumed nor
        counted, and is still there to look at."""
        import jax

        directory, name, n = self._latest.directory, f"damaged_{step}", 1
        while (directory / name).exists():  # damaged there before
            n += 1
            name = f"damaged_{step}_{n}"
        target = directory / name
        if jax.process_index() == 0:
            (directory / str(step)).rename(target)
        _everywhere(True)  # every process sees it renamed before reading the folder again
        self._latest.reload()
        return step, reason, str(target)

    # --- best: the model that the test evaluates --------------------------------------------
    def save_best(self, step: int, model_vars: Any, val_map: float) -> None:
        if step in self._best.all_steps():  # re-validated after a crash: already saved
            return
        self._best.save(
            step,
            args=ocp.args.Composite(model=ocp.args.StandardSave(model_vars)),
            metrics={"val_map": val_map},
        )

    def best_step(self) -> int | None:
        return self._best.best_step()

    def best_model_metadata(self) -> Any:
        """Shapes and dtypes of the best checkpoint's model tree, read without restoring it."""
        path = self._best.directory / str(self._best.best_step()) / "model"
        return ocp.StandardCheckpointer().metadata(path).item_metadata

    def restore_best(self, abstract_model_vars: Any) -> Any:
        step = self._best.best_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint in {self._best.directory}")
        restored = self._best.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_model_vars))
        )
        return restored["model"]

    def check_best(self, abstract_model_vars: Any) -> None:
        """Restore the best model (if any) and drop it: a damaged one stops a resumed run at once."""
        if self._best.best_step() is None:
            return
        try:
            self.restore_best(abstract_model_vars)
            error = None
        except Exception as e:  # noqa: BLE001 - as in restore_latest
            error = e
        if not _everywhere(error is None):
            reason = _reason(error) if error else "it did not restore on another process"
            raise CheckpointError(
                f"the best checkpoint {self._best.directory / str(self._best.best_step())}, the model this run "
                f"would test, cannot be restored ({reason}); it cannot be made again without training again: "
                "use a new --workdir"
            )

    def close(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()
        self._latest.close()
        self._best.close()
