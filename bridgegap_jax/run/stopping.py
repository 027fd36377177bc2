"""Stopping a run when asked to: Ctrl-C (SIGINT), SIGTERM (a preempted VM or pod slice, a scheduler)
and SIGHUP (the terminal or the ssh connection closed), at any moment of the command.

The command (main) calls `install()` on its first line, before its heavy imports. From then on no
signal raises anything: Python's own handlers only record it, and a thread of this module, woken by
Python's signal wakeup file descriptor (written by the C-level handler, whatever the main thread is
doing: an import, a compilation, an orbax call), decides:

- While the command has nothing to save (start-up: imports, checks, restoring, compiling; or an
  evaluation not yet finished), the first stop ends the process at once: one line, the workdir's
  lock released, and a workdir this start created removed while it holds no checkpoint or result,
  so a stop before anything was trained leaves nothing behind.
- Once the command has something to save (its first training step; a validation about to be saved),
  the trainer asks `StopCheck` at its batch and step boundaries (a read of a Python variable: no host
  sync) and, when a stop is due, saves a checkpoint where it stands and ends with one line.
- A Ctrl-C after any stop request ends the process within a second or two, whatever it is doing:
  the lock released, an asynchronous save in flight abandoned (orbax writes it to a temporary folder,
  which the next start removes; the checkpoint before it is intact). It never raises inside a
  library: it ends the process with os._exit, which runs no interpreter shutdown (two Ctrl-Cs during
  start-up used to end in a segmentation fault there). A second SIGTERM or SIGHUP changes nothing:
  the save they asked for goes on.

Exit codes: 2 for Ctrl-C (as every one-line error), 128 + the signal for SIGTERM (143) and SIGHUP
(129), as a shell reports a process those signals ended.

One process stops before the next batch it takes, training or evaluation. Several processes must
stop at the same training step: the checkpoint save is collective, and a process missing from it
would leave the others waiting. jax.distributed's preemption service agrees on that step:
jax.distributed.initialize installs its own SIGTERM handler, which tells the coordination service,
which tells every process; `reached_preemption_sync_point(step)`, asked after every training step
(a local read too), then turns true on every process at the same step, the first that no process
had finished. Ctrl-C or SIGHUP on one process is passed to that service as a SIGTERM of its own. The
steps passed are the training steps, as orbax's CheckpointManager passes them too. Evaluation takes
no steps: a stop requested there waits for the first step after it (the test: the run finishes).

Library callers (tests, notebooks) that never call `install()` keep Python's handlers; `_received`
is what StopCheck reads, whoever sets it.
"""

from __future__ import annotations

import os  # only what the interpreter has loaded already, and threading: this module is imported first
import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
EXIT_CODES = {signal.SIGINT: 2, signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: 128 + signal.SIGHUP}
CLEANUP_SECONDS = 1.5  # what an immediate end waits at most for releasing the lock (a slow gs:// call)

_received: int | None = None  # the first stop signal this process received
_several_processes = False  # the preemption service agrees on the step to stop at
_cannot_agree = False  # several processes without that service: a stop ends this one at once
_has_something_to_save = False  # a stop now saves before it ends (else: ends at once)
_ending = False  # an immediate end is under way
_guard = threading.RLock()  # held while the workdir is created and locked; an immediate end keeps it
_held = {"run_dir": None, "lock": None, "new": False}  # what an immediate end puts right (see hold)
_wakeup_fd = -1  # where Python's C-level handler writes each signal's number, for the watching thread
_resume_hint = lambda: "rerun the same command"  # main's, once it knows the workdir


class StopRequested(Exception):
    """Raised by the trainer's own code where it stops (never in a signal handler)."""


def _what(signum: int | None) -> str:
    return "interrupted" if signum in (None, signal.SIGINT) else f"stopped by {signal.Signals(signum).name}"


class Stopped(Exception):
    """The run stopped at a signal after saving where it stood; main turns this into one line."""

    def __init__(self, step: int):
        # (with several processes the SIGTERM may have come to another one)
        signum = signal.SIGTERM if _received is None else _received
        self.exit_code = EXIT_CODES[signum]
        super().__init__(f"{_what(signum)} at step {step}")


def _several_processes_agree() -> bool | None:
    """None with one process; with several, whether the preemption service is there to agree."""
    import jax

    return jax.config.jax_enable_preemption_service if jax.process_count() > 1 else None


def install(resume_hint=None) -> None:
    """The command's handling of stop signals, from its first line; again with `resume_hint` (a function
    that says what to do next, for the line of an immediate end) once the workdir is known. SIGHUP
    stays ignored if the command was started so (nohup: the run is meant to outlive its terminal).
    Main thread only."""
    global _resume_hint, _wakeup_fd
    if resume_hint is not None:
        _resume_hint = resume_hint
    if any(signal.getsignal(s) is _record for s in STOP_SIGNALS):
        return
    read, _wakeup_fd = os.pipe()
    os.set_blocking(_wakeup_fd, False)
    signal.set_wakeup_fd(_wakeup_fd, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _record)
    threading.Thread(target=_watch, args=(read,), name="stop-signals", daemon=True).start()


def _record(signum, frame) -> None:
    """Python's handler, in the main thread: the watching thread has seen the signal already, unless a
    library put another wakeup fd in the place of ours (then ours goes back, and this one counts)."""
    if signal.set_wakeup_fd(_wakeup_fd, warn_on_full_buffer=False) != _wakeup_fd:
        _on_signal(signum)


def _watch(read_fd: int) -> None:
    while True:
        for signum in os.read(read_fd, 64):
            if signum in EXIT_CODES:
                _on_signal(signum)


def _on_signal(signum: int) -> None:
    global _received
    if _received is not None:
        if signum == signal.SIGINT:  # the user does not want to wait for the save
            _end_now(signal.SIGINT, again=True)
        return
    _received = signum
    if _several_processes:  # to the preemption service, which stops every process at one step
        if signum != signal.SIGTERM:  # (its own handler has SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return
    with _guard:
        if _cannot_agree or not _has_something_to_save:
            _end_now(signum)


def join_processes() -> None:
    """After jax.distributed.initialize, which has put the preemption service's SIGTERM handler in the
    place of ours: with several processes, Ctrl-C and SIGHUP go to that service too, and so does a stop
    asked for before. (Without the service, the processes could not agree on a step: a stop ends this
    one at once.)"""
    global _several_processes, _cannot_agree
    agree = _several_processes_agree()
    if agree is None:
        return
    if not agree:
        _cannot_agree = True
        return
    _several_processes = True
    if _received is not None:
        os.kill(os.getpid(), signal.SIGTERM)


def something_to_save() -> None:
    """From now on a stop saves where the run stands before it ends (the trainer: after its first step
    since this start, and before a validation is saved); until then it ends the process at once."""
    global _has_something_to_save
    with _guard:
        _has_something_to_save = True


def guard() -> threading.RLock:
    """`with guard():` around creating and locking the workdir: an immediate end waits for it, and then
    sees what `hold` recorded (it keeps the guard until the process is gone: nothing is created after)."""
    return _guard


def hold(run_dir, lock=None, new: bool = False) -> None:
    """This process works in `run_dir` (a rundir.RunDir) and holds its `lock` (process 0): an immediate
    end releases the lock, and removes the workdir if this start created it (`new`) and no checkpoint
    or result is in it. `hold(None)` when the run is done with it."""
    _held.update(run_dir=run_dir, lock=lock, new=new)


def _end_now(signum: int, again: bool = False) -> None:
    """One line, the lock released (or the workdir this start made removed), and exit, within
    CLEANUP_SECONDS, without interpreter shutdown."""
    global _ending
    if _ending:
        return
    _ending = True
    acquired = _guard.acquire(timeout=CLEANUP_SECONDS)  # not while the main thread creates the workdir
    what = "interrupted again" if again else _what(signum)
    outcome = {"line": what}
    worker = threading.Thread(target=_put_right, args=(what, again, outcome), daemon=True)
    worker.start()
    worker.join(CLEANUP_SECONDS if acquired else 0.5)
    try:
        os.write(2, f"error: {outcome['line']}\n".encode())
    finally:
        os._exit(EXIT_CODES[signum])


def _put_right(what: str, again: bool, outcome: dict) -> None:
    """The end's cleanup and line (in a thread of its own: a slow file system cannot hold the end)."""
    import contextlib

    with contextlib.suppress(Exception):  # a closed or broken stdout: the line goes to stderr anyway
        sys.stdout.flush()
    run_dir, lock = _held["run_dir"], _held["lock"]
    if run_dir is None:
        outcome["line"] = f"{what} before the run started (its workdir was not touched)"
        return
    try:
        if _held["new"] and lock is not None and not run_dir.has_progress():
            import shutil

            shutil.rmtree(os.fspath(run_dir.path), ignore_errors=True)
            if not run_dir.path.exists():
                outcome["line"] = (
                    f"{what} before anything was saved: {run_dir.workdir}, made by this start, is removed"
                )
                return
        if lock is not None:
            lock.release()
        outcome["line"] = f"{what}{': stopped without saving' if again else ''}; {_resume_hint()}"
    except Exception as error:  # noqa: BLE001 - the line still says what happened
        outcome["line"] = f"{what}; could not release the workdir's lock ({error})"


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
