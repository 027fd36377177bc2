"""Orbax checkpoints of a run: `latest` (to resume) and `best` (validation mAP, for the test).

    <checkpoints>/latest/<step>/{state, progress}   train state + a scheme's host state (LL-Cp's
                                                  bitmap), and where the run stands (epoch, step, ...)
    <checkpoints>/best/<step>/model                 params + batch_stats of the best epoch

Saves are asynchronous and atomic (orbax writes a temporary folder and renames it), so a crash
during a save leaves the previous checkpoint intact; `close()` waits for pending saves. The best
manager records the metric with each save (`best_fn`), so `best_step()` survives restarts.
Every process calls every method (orbax coordinates the hosts); on pods the workdir must be
storage that all hosts see (gs://...).
"""

from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp
from etils import epath


class RunCheckpoints:
    def __init__(self, directory: str | epath.Path):
        """`directory`: the run's checkpoints folder (rundir.RunDir.checkpoints), absolute or gs://."""
        root = epath.Path(directory)
        self._latest = ocp.CheckpointManager(
            root / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
            item_names=("state", "progress"),
        )
        self._best = ocp.CheckpointManager(
            root / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics["val_map"], best_mode="max", create=True
            ),
            item_names=("model",),
        )

    # --- latest: everything needed to resume exactly ---------------------------------------
    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save_latest(self, step: int, state: Any, progress: dict) -> None:
        self._latest.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
        )

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict]:
        """(state, progress) of the latest checkpoint, restored onto `abstract_state`'s shardings."""
        step = self._latest.latest_step()
        restored = self._latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["progress"]

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

    def close(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()
        self._latest.close()
        self._best.close()
