"""Stopping a run cleanly when asked to: SIGTERM (a preempted VM or pod slice, a scheduler) and Ctrl-C.

The signal handlers only record the request; the trainer asks `StopCheck` at its batch and step
boundaries (a read of a Python variable: no host sync) and, when a stop is due, saves a checkpoint
where it stands and ends the run with one line. So a signal never interrupts a jitted step, an
orbax save or a garbage-collection callback (where a KeyboardInterrupt used to be swallowed, and
the run went on). A second Ctrl-C stops at once.

One process stops before the next batch it takes, training or evaluation. Several processes must
stop at the same training step: the checkpoint save is collective, and a process missing from it
would leave the others waiting. jax.distributed's preemption service agrees on that step:
jax.distributed.initialize installs its own SIGTERM handler, which tells the coordination service,
which tells every process; `reached_preemption_sync_point(step)`, asked after every training step
(a local read too), then turns true on every process at the same step, the first that no process
had finished. Ctrl-C on one process is passed to that service as a SIGTERM of its own. The steps
passed are the training steps, as orbax's CheckpointManager passes them too. Evaluation takes no
steps: a stop requested there waits for the first step after it (the test: the run finishes).
"""

from __future__ import annotations

import os
import signal

EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM

_received: int | None = None  # the first stop signal this process received
_several_processes = False


class StopRequested(Exception):
    """Raised by the trainer's own code where it stops (never in a signal handler)."""


class Stopped(Exception):
    """The run stopped at a signal after saving where it stood; main turns this into one line."""

    def __init__(self, step: int):
        interrupted = _received == signal.SIGINT  # on this process; SIGTERM may have come to another one
        self.exit_code = 2 if interrupted else EXIT_TERMINATED  # Ctrl-C: 2, as every one-line error
        super().__init__(f"{'interrupted' if interrupted else 'stopped by SIGTERM'} at step {step}")


def _several_processes_agree() -> bool | None:
    """None with one process; with several, whether the preemption service is there to agree."""
    import jax

    return jax.config.jax_enable_preemption_service if jax.process_count() > 1 else None


def install() -> None:
    """The command's handlers, from its start (main), for one process; see join_processes."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def join_processes() -> None:
    """After jax.distributed.initialize, which has put the preemption service's SIGTERM handler in the
    place of ours: with several processes, Ctrl-C goes to that service too, and so does a stop asked
    for before. (Without the service, Python's defaults: the processes could not agree on a step.)"""
    global _several_processes
    agree = _several_processes_agree()
    if agree is None:
        return
    if not agree:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return
    _several_processes = True
    if _received is not None:
        os.kill(os.getpid(), signal.SIGTERM)


def _on_signal(signum, frame) -> None:
    global _received
    if signum == signal.SIGINT and _received == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the next step
    if _received is None:
        _received = signum
        if _several_processes:  # to the preemption service, which stops every process at one step
            os.kill(os.getpid(), signal.SIGTERM)


class StopCheck:
    """Whether to stop: `before_batch()` before each batch the run takes, training or evaluation (one
    process); `after_step(step)` after each training step (several: every process, every step)."""

    def __init__(self):
        self._agree = _several_processes_agree()

    def before_batch(self) -> bool:
        return self._agree is None and _received is not None

    def after_step(self, step: int) -> bool:
        if not self._agree:
            return False
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(step)
