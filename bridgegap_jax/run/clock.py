"""The run's clock: wall time over every session, the training pace, images/s and the ETA.

A run may take several sessions (stopped, preempted, resumed). The clock keeps

    elapsed    the run's wall time, all sessions together (what the checkpoint saved, and this session)
    the pace   seconds per training step, compilation and evaluation excluded, and the length of the
               latest evaluation: each log window's images/s and the ETA come from them

Compilation is left out without waiting for the device: jit compiles inside the session's first
call of the step, before it returns, so the pace starts when that call has returned (`count`).
Evaluation runs in `paused()`: the log window it falls in does not count it, and its length is the
estimate of every evaluation still to come. A resumed session estimates with the pace saved in the
checkpoint until it has measured its own (its first line already has an ETA; a faster or slower
machine takes over at the first log point). `state()` is what the checkpoint keeps: JSON numbers
that never enter the computation, so a resumed run stays bit-identical. Imports nothing but the
standard library (report.py reads runs without JAX).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss (the hours go on past 24)."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Clock:
    def __init__(self, state: Mapping | None = None, now: Callable[[], float] = time.perf_counter):
        """`state`: what `state()` returned in an earlier session of the run (None: a new run; a
        checkpoint written before the pace was saved holds only elapsed_s)."""
        state = state or {}
        self._now = now
        self._session_start = now()
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self._saved_pace = (float(state.get("train_s", 0.0)), int(state.get("train_steps", 0)))
        self.train_s, self.train_steps = 0.0, 0  # this session's measured training time and steps
        eval_s = state.get("eval_s")
        self.eval_s: float | None = None if eval_s is None else float(eval_s)  # the latest evaluation
        self._window_start: float | None = None  # None until the session's first step has compiled
        self._window_steps = self._window_images = 0

    def elapsed(self) -> float:
        """The run's wall time so far, every session together."""
        return self._elapsed_before + self._now() - self._session_start

    def count(self, images: int) -> None:
        """A training step of `images` images has been dispatched (the session's first: compiled)."""
        if self._window_start is None:
            self._window_start = self._now()
        self._window_steps += 1
        self._window_images += images

    def tick(self) -> float:
        """Closes the log window (its time and steps join the pace) and opens the next; its images/s."""
        now = self._now()
        seconds = now - self._window_start
        rate = self._window_images / seconds if seconds > 0 else float("nan")
        self.train_s += seconds
        self.train_steps += self._window_steps
        self._window_start, self._window_steps, self._window_images = now, 0, 0
        return rate

    @contextlib.contextmanager
    def paused(self):
        """An evaluation: not training time; its length is the estimate of the next ones."""
        start = self._now()
        yield
        self.eval_s = self._now() - start
        if self._window_start is not None:
            self._window_start += self.eval_s

    def _pace(self) -> tuple[float, int]:
        return (self.train_s, self.train_steps) if self.train_steps else self._saved_pace

    def eta(self, steps_left: int, evaluations_left: int) -> float | None:
        """Seconds to the end of the run; None until a pace is known."""
        train_s, steps = self._pace()
        if not steps:
            return None
        return steps_left * train_s / steps + evaluations_left * (self.eval_s or 0.0)

    def state(self) -> dict:
        """What a checkpoint keeps, for `Clock(state)` in the session that resumes it."""
        train_s, steps = self._pace()
        return {"elapsed_s": self.elapsed(), "train_s": train_s, "train_steps": steps, "eval_s": self.eval_s}
