"""A run's workdir: its layout, its stored config, its result files and its lock.

    <workdir>/config.json          the run's config (compared on every rerun; a few fields may change)
    <workdir>/metrics.jsonl        one JSON line per logged step, validation, test and config change
    <workdir>/tensorboard/         the same records as TensorBoard event files (run_log.py)
    <workdir>/checkpoints/latest   the two latest resume points; checkpoints/best: best validation mAP
                                   (checkpoint.py)
    <workdir>/result.json          the test result: present = the run is finished
    <workdir>/test_class_ap.tsv    per-class test AP
    <workdir>/lock.json            who is running in it now

Works on local paths and gs:// alike (etils.epath). Every file is written to a temporary name and
renamed, so a crash never leaves half a file (lock.json is created exclusively instead; one that a
crash cut short is nobody's). A damaged file is refused with its name and what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import numbers
import os
import pathlib
import socket
import time
from typing import Any

from etils import epath

from bridgegap_jax.base.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
CLASS_AP_FILE = "test_class_ap.tsv"
LOCK_FILE = "lock.json"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
STALE_LOCK_SECONDS = 15 * 60  # a lock of another host whose holder has not written for this long is stale


class RunDirError(UserError, ValueError):
    """The workdir cannot be used as asked; the message says why and what to do."""


def absolute(workdir: str) -> str:
    """Local paths made absolute (orbax needs them); gs://... as given."""
    return workdir if "://" in workdir else os.path.abspath(os.path.expanduser(workdir))


def json_number(value):
    """A value as strict JSON holds it: a float that is NaN or infinite (a mean over no class, a diverged
    loss) as None (null), any other float (numpy's too) as a Python float, the rest as it is."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return float(value) if math.isfinite(value) else None
    return value


def write_atomically(path: epath.Path, text: str) -> None:
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class RunDir:
    def __init__(self, workdir: str):
        self.workdir = workdir  # as the user wrote it, for messages
        self.path = epath.Path(absolute(workdir))

    def file(self, name: str) -> epath.Path:
        return self.path / name

    @property
    def checkpoints(self) -> epath.Path:
        return self.path / CHECKPOINTS_DIR

    def create(self) -> bool:
        """Make the workdir (and the folders above it); True if this call made it. (On a local file
        system the last mkdir is exclusive, so of two runs starting at once only one made it; gs://
        has no folders to make: False.)"""
        if "://" in str(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            return False
        try:
            pathlib.Path(self.path).mkdir(parents=True)
        except FileExistsError:
            return False
        return True

    def check_usable(self) -> None:
        """A workdir that is a file is refused before anything is read or written."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--workdir={self.workdir} is a file, not a folder: choose another --workdir")

    def _read_json(self, name: str, what_to_do: str) -> dict | None:
        path = self.file(name)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except ValueError as error:
            raise RunDirError(f"{path} is damaged ({error}); {what_to_do}") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path} is damaged (not a JSON object); {what_to_do}")
        return record

    # --- config -------------------------------------------------------------------------------
    def stored_config(self) -> dict | None:
        return self._read_json(
            CONFIG_FILE,
            "it holds the config this run was started with: delete it to go on with the config of your "
            "command (only if it is that one), or use a new --workdir",
        )

    def has_progress(self) -> bool:
        """Whether anything was trained here: a checkpoint to resume, or a result."""
        latest = self.checkpoints / "latest"
        saved = latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())
        return saved or self.file(RESULT_FILE).exists()

    def check_config(self, config: dict, changeable: tuple[str, ...]) -> dict:
        """Refuse a config other than the stored one once something was trained with it: two configs'
        checkpoints must never mix. The fields in `changeable` only decide what happens from now on:
        returns those that differ, {dotted name: [stored, new]}. (A run that stopped before its first
        checkpoint may change anything; so may one whose damaged config.json the user deleted.)"""
        try:
            stored = self.stored_config()
        except RunDirError:
            if self.has_progress():
                raise
            return {}  # nothing was trained with it: the command's config replaces it
        if stored is None or stored == config or not self.has_progress():
            return {}
        fields = differences(stored, config)
        refused = [field for field in fields if field not in changeable]
        if refused:
            state = "finished" if self.file(RESULT_FILE).exists() else "unfinished"
            raise RunDirError(
                f"{self.workdir} holds {'a' if state == 'finished' else 'an'} {state} run made with another config "
                f"(differing: {', '.join(refused)}); use a new --workdir, or rerun with the config stored in "
                f"{self.file(CONFIG_FILE)} (only {', '.join(changeable)} may change on resume)"
            )
        return {field: [lookup(stored, field), lookup(config, field)] for field in fields}

    def store_config(self, config: dict) -> None:
        """After check_config, which has refused a change that would mix runs (or a damaged file of one)."""
        try:
            same = self.stored_config() == config
        except RunDirError:
            same = False
        if not same:
            write_atomically(self.file(CONFIG_FILE), json.dumps(config, indent=2, sort_keys=True))

    # --- results ------------------------------------------------------------------------------
    def result(self) -> dict | None:
        return self._read_json(
            RESULT_FILE,
            "delete it, and the command that trained this run tests its best checkpoint again and rewrites it",
        )

    def write_result(self, result: dict) -> None:
        write_atomically(self.file(RESULT_FILE), json.dumps(result, indent=2))

    def write_class_ap(self, names, ap) -> None:
        """Per-class test AP: class index, name, AP in percent."""
        lines = ["class\tname\tap"] + [
            f"{i}\t{name}\t{100 * value:.4f}" for i, (name, value) in enumerate(zip(names, ap))
        ]
        write_atomically(self.file(CLASS_AP_FILE), "\n".join(lines) + "\n")

    # --- lock ---------------------------------------------------------------------------------
    def lock(self) -> "WorkdirLock":
        return WorkdirLock(self.file(LOCK_FILE), self.workdir)


@contextlib.contextmanager
def writing(workdir: str):
    """An OSError of writing in the workdir (read-only, no permission, a file in the way) becomes a
    RunDirError; a full disk stays itself, for main to name."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise
        raise RunDirError(
            f"cannot write in --workdir={workdir} ({error.strerror or error}: {error.filename}); choose a "
            "--workdir on a file system you can write to"
        ) from None


def lock_everywhere(run_dir: RunDir) -> WorkdirLock:
    """Create the workdir and lock it: process 0 takes the lock, every process learns whether it did
    (refused: a workdir this start created is removed again, empty). All of it while a stop signal
    waits (stopping.guard); from then on, an immediate end releases the lock and removes a workdir
    this start created if nothing was saved in it (stopping.hold)."""
    import jax

    from bridgegap_jax.run import stopping

    main_process = jax.process_index() == 0
    with stopping.guard():
        with writing(run_dir.workdir):
            created = run_dir.create()
        lock = run_dir.lock()
        try:
            _take_everywhere(lock, main_process)
        except (RunDirError, OSError):
            if created and main_process and not any(run_dir.path.iterdir()):
                run_dir.path.rmdir()
            raise
        stopping.hold(run_dir, lock if main_process else None, new=created)
    return lock


def _take_everywhere(lock: WorkdirLock, main_process: bool) -> None:
    import jax
    import numpy as np

    error = None
    if main_process:
        try:
            taken_over = lock.acquire()
        except (RunDirError, OSError) as e:  # busy, unwritable, a full disk
            error = e
        else:
            if taken_over:
                print(taken_over, flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if refused and error is None:
            error = RunDirError("process 0 could not lock the workdir: see its output")
    if error is not None:
        raise error


def unlock(lock: WorkdirLock) -> None:
    """At the end of the run, whatever the end: process 0 releases the lock."""
    import jax

    from bridgegap_jax.run import stopping

    with stopping.guard():
        if jax.process_index() == 0:
            lock.release()
        stopping.hold(None)


def lookup(tree: dict, dotted: str):
    """tree['a']['b'] for 'a.b'; None where a key is missing."""
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += differences(x, y, prefix + key + ".")
        elif x != y:
            keys.append(prefix + key)
    return keys


class WorkdirLock:
    """One run per workdir. The holder writes who it is and, as it goes, when it last made progress.

    A lock is taken over when its holder is gone: on this host, a process that no longer exists
    (killed, crashed) or whose pid now belongs to another process; on another host, a holder silent
    for STALE_LOCK_SECONDS (a preempted pod), whatever else the record holds; and a record that does
    not read (cut short) is nobody's. A container or VM restarted after a crash keeps its host name,
    and its entrypoint often gets the pid of the one before (1 in a container): so the record holds
    the boot id and the process's start time too, and a pid that is alive is the holder only if both
    match (a record without them, of an older version: only if it is not this very process).
    """

    def __init__(self, path: epath.Path, workdir: str):
        self.path, self.workdir = path, workdir
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": _now(),
            "boot_id": _boot_id(),
            "started": _start_time(os.getpid()),
        }
        self._last_beat = 0.0

    def holder(self) -> dict | None:
        """Who holds the lock; None: nobody. A record that does not read twice, half a second apart, is
        {}: nobody's (a crash or a full disk cut it short; a run taking the lock writes it at once)."""
        for attempt in range(2):
            try:
                record = json.loads(self.path.read_text())
            except FileNotFoundError:
                return None
            except ValueError:
                record = None
            if isinstance(record, dict):
                return record
            if attempt == 0:
                time.sleep(0.5)
        return {}

    def acquire(self) -> str | None:
        """Take the lock, or refuse with who holds it; returns a line that says whose stale lock was
        taken over, if one was."""
        holder = self.holder()
        gone = None if holder is None else self._gone(holder)
        if holder is not None and gone is None:
            raise RunDirError(
                f"{self.workdir} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('since')} (last progress {holder.get('heartbeat')}); wait for that run, or stop it "
                f"first (if it is gone for good, delete {self.path})"
            )
        record = json.dumps({**self.me, "heartbeat": _now()})
        self._last_beat = time.monotonic()
        with writing(self.workdir):
            if holder is not None:
                self.path.unlink(missing_ok=True)
            # Object stores have no exclusive create (and no half-written objects).
            if "://" in str(self.path):
                self.path.write_text(record)
            else:
                try:  # exclusive create: of two runs starting at once, one wins
                    lock = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return self.acquire()  # the other one won: refuse with its details
                try:
                    with os.fdopen(lock, "w") as f:
                        f.write(record)
                except OSError:
                    self.path.unlink(missing_ok=True)  # ours, cut short (a full disk): it must lock nothing
                    raise
        if holder is None:
            return None
        if not holder:
            return f"took over {self.path}, which did not read (cut short by a crash or a full disk)"
        return (
            f"took over {self.path} of pid {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('since')}: {gone}"
        )

    def heartbeat(self) -> None:
        """Record progress (at most once a minute), so other hosts can tell a live holder from a dead one."""
        if time.monotonic() - self._last_beat >= 60:
            write_atomically(self.path, json.dumps({**self.me, "heartbeat": _now()}))
            self._last_beat = time.monotonic()

    def release(self) -> None:
        holder = self.holder()
        if holder and all(holder.get(key) == self.me[key] for key in ("host", "pid", "started")):
            self.path.unlink(missing_ok=True)

    def _gone(self, holder: dict) -> str | None:
        """Why the holder of `holder` is gone (its lock is stale), or None: it may be running."""
        if holder.get("host") != self.me["host"]:
            try:
                silent = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(
                    holder["heartbeat"]
                )
            except (KeyError, TypeError, ValueError):  # no time, or not one with a zone (not ours)
                return "its record holds no time of progress"
            if silent.total_seconds() > STALE_LOCK_SECONDS:
                return f"no progress for {silent.total_seconds() / 60:.0f} minutes"
            return None
        pid = holder.get("pid")
        if not _process_exists(pid):
            return "that process is gone"
        if holder.get("boot_id") not in (None, self.me["boot_id"]):
            return "this host was restarted since"
        started, now = holder.get("started"), _start_time(pid)
        if started is not None and now is not None:
            return None if started == now else f"pid {pid} is now another process, started after it"
        if started is None and pid == self.me["pid"]:  # an older version's record, naming this process
            return f"pid {pid} is this process (a container or VM restarted)"
        return None


def _boot_id() -> str | None:
    """This boot of the machine (Linux); None where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_time(pid: Any) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc/PID/stat, field 22), which
    tells it from a later process with the same pid; None where it cannot be read."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # the fields after the command's ')'
    except (OSError, ValueError, TypeError, IndexError):
        return None


def _process_exists(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
