"""Entry point: python -m bridgegap_jax.main --config=configs/demo.py --workdir=runs/demo

Rerunning the same command resumes an interrupted run, or reports a finished one.

Several hosts (one process per host, every process runs the same command plus --distributed):
  - Cloud TPU pod: ... --workdir=gs://BUCKET/run --distributed (jax.distributed detects the workers;
    also on SLURM and Open MPI)
  - other CPU/GPU hosts: ... --distributed --coordinator_address=HOST0:PORT --num_processes=N --process_id=I
The workdir must be storage that every host sees: gs://..., or a shared file system
(NFS) mounted at the same path everywhere, declared with --workdir_is_shared.

A mistake the user can fix (a config value, a missing dataset or weights file, a busy workdir, a
full disk) ends with one line on stderr and exit code 2; --debug shows the traceback. Ctrl-C,
SIGTERM (a preempted machine) and SIGHUP (a closed terminal or ssh connection), from the first line
on, end with one line too (exit codes 2, 143, 129): during start-up at once, once training has begun
after saving a checkpoint at the next batch, on every process at the same one (stopping.py); the
same command resumes.
"""

from __future__ import annotations

import ast
import errno
import io
import os
import sys

if __name__ == "__main__":  # the command: before the imports below, which take a while
    from bridgegap_jax.run import stopping

    stopping.install()

from absl import app, flags  # (after the stop signals are ours)
from ml_collections import config_flags

from bridgegap_jax.base.errors import answer_help
from bridgegap_jax.model import xla_options

config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); override fields with --config.a.b=value.", lock_config=True
)
flags.DEFINE_string(
    "workdir", None, "Directory of the run: checkpoints, metrics.jsonl, TensorBoard, result.json."
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run (jax.distributed.initialize): every process passes "
    "it. Cloud TPU pods, SLURM and Open MPI need nothing else; other clusters also give "
    "--coordinator_address, --num_processes and --process_id.",
)
flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: host:port of process 0, reachable from every process."
)
flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's id, 0 .. num_processes - 1.")
flags.DEFINE_bool(
    "workdir_is_shared",
    False,
    "A multi-process run may use a local --workdir path: it is a shared "
    "file system (NFS) that every process sees at that path.",
)
flags.DEFINE_bool(
    "verbose", False, "Also show what the libraries log (orbax, grain, absl) and their warnings."
)
flags.DEFINE_string(
    "xla_options",
    "",
    "Comma-separated XLA GPU compiler presets (bridgegap_jax/model/xla_options.py: "
    "conv-fusion, nhwc, exhaustive); speed only, so not part of the run's config.",
)
flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of its one-line message.")

EXIT_USER_ERROR = 2
CONFIG_FILE_ERROR = "Error whilst parsing config file"  # ml_collections' text when get_config raises


def stderr_to(stream) -> None:
    """Python's stderr, and absl's log handler's (it keeps the stream it was made with), to `stream`."""
    from absl import logging

    sys.stderr = stream
    logging.get_absl_handler().python_handler.stream = stream


class HeldStderr(io.TextIOBase):
    """sys.stderr while a run goes on quietly. What the libraries write there (orbax's errors and its
    threads' tracebacks when a save fails, for one) is held back: shown when the command ends with a
    traceback (or succeeds), dropped when it ends with one line that says what happened instead."""

    LIMIT = 1 << 20  # characters kept: the end of it

    def __init__(self, stderr):
        self.stderr, self.parts, self.size = stderr, [], 0

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.size += len(text)
        while self.size > self.LIMIT and len(self.parts) > 1:
            self.size -= len(self.parts.pop(0))
        return len(text)

    def fileno(self) -> int:  # what writes to the file descriptor (C code, child processes) is not held
        return self.stderr.fileno()

    @property
    def encoding(self) -> str:
        return self.stderr.encoding

    def release(self) -> None:
        """Stop holding; show what was held."""
        stderr_to(self.stderr)
        self.stderr.write("".join(self.parts))
        self.stderr.flush()


def fail(message, exit_code: int = EXIT_USER_ERROR) -> None:
    """One line on stderr, and exit. What the libraries print from now on, as the process ends (the
    threads of a failed save, objects an interrupt left half-built), is noise after that line: dropped."""
    stderr = sys.stderr.stderr if isinstance(sys.stderr, HeldStderr) else sys.stderr
    print(f"error: {' '.join(str(message).split())}", file=stderr, flush=True)
    stderr_to(open(os.devnull, "w"))
    sys.unraisablehook = lambda unraisable: None
    sys.exit(exit_code)


def config_file(argv: list[str]) -> str | None:
    """The file named by --config (absl's forms --config=F and --config F; the last one counts), without
    a ':argument'."""
    path = None
    for i, arg in enumerate(argv):
        for prefix in ("--config", "-config"):
            if arg.startswith(prefix + "="):
                path = arg[len(prefix) + 1 :]
            elif arg == prefix and i + 1 < len(argv):
                path = argv[i + 1]
    return None if path is None else path.split(":", 1)[0]


def find_config_file(argv: list[str]) -> None:
    """A config file loads from any working directory: `from configs import base` in configs/demo.py
    finds the file's own package (the folder above it goes first on sys.path); a missing file is one line."""
    path = config_file(argv)
    if path is None:
        return
    if not os.path.isfile(path):
        fail(
            f"--config={path}: no such file (a relative path starts at the current directory, {os.getcwd()}); "
            "name a file of the repository's configs/, e.g. --config=configs/demo.py from the repository root"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(os.path.join(folder, "__init__.py")):
        sys.path.insert(0, os.path.dirname(folder))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad --config override or config file reported in one line; --help exits 0."""
    answer_help(argv)
    find_config_file(argv)
    try:
        return flags.FLAGS(argv)
    except (
        flags.Error,
        AttributeError,
        KeyError,
        ValueError,
        TypeError,
        OSError,
        ImportError,
        SyntaxError,
    ) as error:
        if "--debug" in argv:
            raise
        if isinstance(error, (AttributeError, KeyError)):  # an override naming a field that does not exist
            text = str(error)
            try:  # ml_collections quotes its message, escapes and all
                text = ast.literal_eval(text) if text[:1] in ("'", '"') else text
            except (ValueError, SyntaxError):
                pass
            lines = text.splitlines() or [text]
            fail(
                f"a --config.* override names a field that does not exist: {lines[0]}. {' '.join(lines[1:])} "
                "(docs/running.md)"
            )
        if isinstance(error, (ImportError, SyntaxError)):
            fail(f"the config file {config_file(argv)} does not load: {error}")
        text = str(error)
        if CONFIG_FILE_ERROR in text:  # ml_collections wraps get_config's error in its traceback
            config_arg = text.split(": " + CONFIG_FILE_ERROR, 1)[0].removeprefix("flag ")
            kind, _, message = text.strip().splitlines()[-1].partition(": ")
            if kind == "TypeError" and "positional argument" in message:
                message = "this config file takes no ':VARIANT' (configs/demo.py:tiny is the one variant)"
            fail(f"{config_arg}: {message}")
        fail(error)


def quiet_libraries(verbose: bool) -> None:
    """Our lines only: the libraries' INFO logs and warnings are for --verbose."""
    from absl import logging

    if verbose:
        logging.set_verbosity(logging.INFO)
        return
    import warnings

    logging.set_verbosity(logging.ERROR)  # orbax logs every file it writes; grain its pools
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ logs of XLA plugins that share TF's logger


def initialize_distributed(distributed: bool, coordinator_address, num_processes, process_id) -> None:
    """jax.distributed.initialize, before anything touches a device; a no-op without --distributed."""
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    if not distributed:
        named = [f"--{name}" for name, value in given.items() if value is not None]
        if named:
            raise app.UsageError(f"{', '.join(named)} only apply to a multi-process run: add --distributed")
        return
    import jax

    from bridgegap_jax.base import sharding

    jax.distributed.initialize(**given)
    sharding.connect_processes()  # now, while they are together (see there)


def check_shared_workdir(workdir: str, workdir_is_shared: bool) -> None:
    """Every process saves and restores the same checkpoints: a pod needs shared storage."""
    import jax

    if jax.process_count() > 1 and "://" not in workdir and not workdir_is_shared:
        raise app.UsageError(
            f"--workdir={workdir} is a local path, but this run has {jax.process_count()} processes that must all "
            "see the same checkpoints: use shared storage (--workdir=gs://BUCKET/PATH), or, if the path is a "
            "shared file system mounted on every host (NFS), add --workdir_is_shared"
        )


def disk_full(error: BaseException) -> OSError | None:
    """The 'no space left on device' error behind `error`, if that is what it is."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        if "No space left on device" in str(error):
            return OSError(errno.ENOSPC, "No space left on device")
        error = error.__cause__ or error.__context__
    return None


def resume_hint(workdir: str) -> str:
    """What rerunning the same command will do, from the checkpoints in `workdir`."""
    from bridgegap_jax.run.rundir import RunDir

    latest = RunDir(workdir).checkpoints / "latest"
    steps = [int(p.name) for p in latest.iterdir() if p.name.isdigit()] if latest.is_dir() else []
    if not steps:
        return "rerun the same command to start the run again (no checkpoint was saved yet)"
    return f"rerun the same command to resume {workdir} from its checkpoint at step {max(steps)}"


def main(argv):
    FLAGS = flags.FLAGS
    quiet_libraries(FLAGS.verbose)
    from bridgegap_jax.base.errors import UserError
    from bridgegap_jax.run import stopping

    if not (FLAGS.verbose or FLAGS.debug):
        stderr_to(HeldStderr(sys.stderr))
    workdir = FLAGS.workdir
    if workdir is None or not workdir.strip():  # an empty one would fill the current directory
        fail("--workdir must name the run's folder, e.g. --workdir=runs/demo")
    stopping.install(resume_hint=lambda: resume_hint(workdir))
    try:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        xla_options.apply(FLAGS.xla_options)  # before any device use: XLA reads its flags once
        initialize_distributed(
            FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        stopping.join_processes()  # the preemption service of jax.distributed handles SIGTERM on a pod
        check_shared_workdir(workdir, FLAGS.workdir_is_shared)
        from bridgegap_jax.run import trainer  # after flag parsing: --help stays fast

        trainer.train_and_evaluate(FLAGS.config, workdir)
    except (UserError, app.UsageError) as error:
        if FLAGS.debug:
            raise
        fail(error)
    except stopping.Stopped as stop:
        fail(f"{stop}; {resume_hint(workdir)}", stop.exit_code)
    except Exception as error:  # noqa: BLE001 - only a full disk is turned into a message; the rest re-raises
        full = disk_full(error)
        if full is None or FLAGS.debug:
            raise
        fail(
            f"no space left on the device holding {full.filename or workdir}: free some space (or choose another "
            f"--workdir / --config.data.data_dir); then {resume_hint(workdir)}"
        )
    finally:
        if isinstance(sys.stderr, HeldStderr):  # not after fail(): its line replaces what was held
            sys.stderr.release()


def run() -> None:
    from bridgegap_jax.run import stopping

    stopping.install()  # (done already when run as `python -m bridgegap_jax.main`)
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
