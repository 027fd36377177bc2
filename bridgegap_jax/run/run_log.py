"""What a run tells the user: progress lines on stdout, and records in metrics.jsonl and TensorBoard.

Only process 0 prints and writes. Each record is one strict-JSON line {"kind", "step", "wall_time",
...} (non-finite numbers are written as null; kind "config": the fields a resume changed) and the same scalars as TensorBoard event files
under <workdir>/tensorboard, written without TensorFlow (tensorboardX). On resume the records
after the checkpoint (all of them, if there is none yet) are dropped and TensorBoard is told to
purge them, so every step, epoch and test appears exactly once however often the run was interrupted.
"""

from __future__ import annotations

import json
import sys
import time

from etils import epath

from bridgegap_jax.run.rundir import METRICS_FILE, TENSORBOARD_DIR, RunDir, json_number, write_atomically

# Records made at a training step (a resumed run keeps those up to its checkpoint's step); validations
# at an epoch's end are kept by epoch.
STEP_KINDS = ("train", "config", "step_validation")


def _import_tensorboardx():
    # tensorboardX imports torch whenever torch is installed (seconds, and a GPU context) only to
    # accept torch tensors; we log Python floats, so it is hidden from that import.
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None
    try:
        from tensorboardX import event_file_writer, summary
        from tensorboardX.proto import event_pb2
    finally:
        if hidden:
            del sys.modules["torch"]
    return event_file_writer, summary, event_pb2


class EventFile:
    """TensorBoard scalars, written synchronously (no writer thread: a Ctrl-C cannot strand it).

    `purge_step`: a resumed run tells TensorBoard to drop what an earlier session logged from that
    step on, so the curves show every step once.
    """

    def __init__(self, logdir: str, purge_step: int | None):
        event_file_writer, self._summary, self._event_pb2 = _import_tensorboardx()
        epath.Path(logdir).mkdir(parents=True, exist_ok=True)
        self._writer = event_file_writer.EventsWriter(f"{logdir}/events")
        if purge_step is not None:
            start = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
            self._writer.write_event(
                self._event_pb2.Event(wall_time=time.time(), step=purge_step, session_log=start)
            )

    def scalar(self, tag: str, value: float, step: int, wall_time: float) -> None:
        self._writer.write_event(
            self._event_pb2.Event(wall_time=wall_time, step=step, summary=self._summary.scalar(tag, value))
        )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class RunLog:
    def __init__(self, run_dir: RunDir, enabled: bool, resume: tuple[int, int] | None = None):
        """`resume` = (step, epoch) of the checkpoint a resumed run starts from; None for a new run."""
        self.enabled = enabled
        self.path = run_dir.file(METRICS_FILE)
        self._events = None
        if not enabled:
            return
        step, epoch = resume or (0, 1)  # a new run drops what one stopped before its first checkpoint wrote
        self._truncate(step, epoch)
        self._events = EventFile(str(run_dir.file(TENSORBOARD_DIR)), step + 1)

    def _truncate(self, step: int, epoch: int) -> None:
        """Keep what the checkpoint at (step, epoch) has done: the records of STEP_KINDS up to its step
        and the validations of the epochs before; a crash may have written more, which
        will be done again."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a crash
                continue
            if (record.get("kind") in STEP_KINDS and record.get("step", 0) <= step) or (
                record.get("kind") == "validation" and record.get("epoch", 0) < epoch
            ):
                kept.append(line)
        write_atomically(self.path, "".join(line + "\n" for line in kept))

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def record(self, kind: str, step: int, **fields) -> None:
        if not self.enabled:
            return
        fields = {key: json_number(value) for key, value in fields.items()}
        record = {"kind": kind, "step": step, "wall_time": round(time.time(), 3), **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        for key, value in fields.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._events.scalar(f"{kind}/{key}", value, step, record["wall_time"])
        self._events.flush()  # records are few (log points): TensorBoard sees each at once

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
