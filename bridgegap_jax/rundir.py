"""A run's workdir: its layout, its stored config, its result files and its lock.

    <workdir>/config.json          the config the run was started with (compared on every rerun)
    <workdir>/metrics.jsonl        one JSON line per logged step, validation and test (run_log.py)
    <workdir>/tensorboard/         the same records as TensorBoard event files
    <workdir>/checkpoints/latest   resume point; checkpoints/best: best validation mAP (checkpoint.py)
    <workdir>/result.json          the test result: present = the run is finished
    <workdir>/test_class_ap.tsv    per-class test AP
    <workdir>/lock.json            who is running in it now

Works on local paths and gs:// alike (etils.epath). Every file is written to a temporary name and
renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from typing import Any

from etils import epath

from bridgegap_jax.errors import UserError

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

    # --- config -------------------------------------------------------------------------------
    def stored_config(self) -> dict | None:
        path = self.file(CONFIG_FILE)
        return json.loads(path.read_text()) if path.exists() else None

    def has_progress(self) -> bool:
        """Whether anything was trained here: a checkpoint to resume, or a result."""
        latest = self.checkpoints / "latest"
        saved = latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())
        return saved or self.file(RESULT_FILE).exists()

    def check_config(self, config: dict) -> None:
        """Refuse a config other than the stored one once something was trained with it: two configs'
        checkpoints must never mix. (A run that stopped before its first checkpoint may change it.)"""
        stored = self.stored_config()
        if stored is not None and stored != config and self.has_progress():
            fields = ", ".join(differences(stored, config))
            state = "finished" if self.result() is not None else "unfinished"
            raise RunDirError(
                f"{self.workdir} holds a {state} run made with another config (differing: {fields}); use a new "
                f"--workdir, or rerun with the config stored in {self.file(CONFIG_FILE)}"
            )

    def store_config(self, config: dict) -> None:
        if self.stored_config() != config:  # check_config has refused a change that would mix runs
            write_atomically(self.file(CONFIG_FILE), json.dumps(config, indent=2, sort_keys=True))

    # --- results ------------------------------------------------------------------------------
    def result(self) -> dict | None:
        path = self.file(RESULT_FILE)
        return json.loads(path.read_text()) if path.exists() else None

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

    A lock is taken over when its holder is gone: a process of this host that no longer exists
    (killed, crashed), or a holder on another host silent for STALE_LOCK_SECONDS (a preempted pod).
    """

    def __init__(self, path: epath.Path, workdir: str):
        self.path, self.workdir = path, workdir
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        self._last_beat = 0.0

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # half-written by a crash: nobody holds it
            return None

    def acquire(self) -> None:
        holder = self.holder()
        if holder is not None and not self._is_stale(holder):
            raise RunDirError(
                f"{self.workdir} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('since')} (last progress {holder.get('heartbeat')}); wait for that run, or stop it "
                f"first (if it is gone for good, delete {self.path})"
            )
        if holder is not None:
            self.path.unlink(missing_ok=True)
        record = json.dumps({**self.me, "heartbeat": _now()})
        self._last_beat = time.monotonic()
        if "://" in str(self.path):  # object stores have no exclusive create
            self.path.write_text(record)
            return
        try:  # exclusive create: of two runs starting at once, one wins
            with open(self.path, "x") as f:
                f.write(record)
        except FileExistsError:
            self.acquire()  # the other one won: refuse with its details

    def heartbeat(self) -> None:
        """Record progress (at most once a minute), so other hosts can tell a live holder from a dead one."""
        if time.monotonic() - self._last_beat >= 60:
            write_atomically(self.path, json.dumps({**self.me, "heartbeat": _now()}))
            self._last_beat = time.monotonic()

    def release(self) -> None:
        holder = self.holder()
        if (
            holder is not None
            and holder.get("pid") == self.me["pid"]
            and holder.get("host") == self.me["host"]
        ):
            self.path.unlink(missing_ok=True)

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") == self.me["host"]:
            return not _process_exists(holder.get("pid"))
        try:
            beat = datetime.datetime.fromisoformat(holder["heartbeat"])
        except (KeyError, TypeError, ValueError):
            return True
        return (datetime.datetime.now(datetime.timezone.utc) - beat).total_seconds() > STALE_LOCK_SECONDS


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
