"""`python -m bridgegap_jax.main` with one fault injected, for tests/test_faults.py.

    python tests/fault_driver.py FAULT STEP MAIN_FLAGS...

FAULT is one of:
  kill-during-save   SIGKILL this process right after the latest checkpoint of STEP starts saving
                     (orbax writes it asynchronously: the kill lands in the middle of the write)
  disk-full          the save of the latest checkpoint of STEP fails as a full disk makes it fail, after
                     the library noise of a real one: orbax's threads log errors and print tracebacks
  read-only          the workdir cannot be created: it is on a read-only file system (STEP is unused)
  slow-commit        the saves of latest checkpoints after STEP take 20 s to commit, as on a slow disk:
                     a stop's own save stays in flight (in orbax's thread, its temporary folder there)
"""

import errno
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root


def library_noise() -> None:
    """What orbax prints while a save fails on a full disk: absl errors, and its threads' tracebacks."""
    from absl import logging

    logging.error("[process=0] Failed to run Handler Commit operations: No space left on device")

    def callback():
        raise RuntimeError("Event loop is closed")

    thread = threading.Thread(target=callback)
    thread.start()
    thread.join()


def inject(fault: str, at_step: int, workdir: str) -> None:
    if fault == "read-only":
        original_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if os.path.abspath(path).startswith(workdir):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return original_mkdir(path, *args, **kwargs)

        os.mkdir = mkdir
        return
    if fault == "slow-commit":
        import asyncio

        from orbax.checkpoint._src.path import async_path

        rename = async_path.rename

        async def slow_rename(src, dst):
            slow = "orbax-checkpoint-tmp" in src.name and src.parent.name == "latest"
            if slow and int(src.name.split(".")[0]) > at_step:
                await asyncio.sleep(20)
            return await rename(src, dst)

        async_path.rename = slow_rename
        return
    from bridgegap_jax.run import checkpoint

    original = checkpoint.RunCheckpoints.save_latest

    def save_latest(self, step, state, progress):
        if step != at_step:
            return original(self, step, state, progress)
        if fault == "disk-full":
            library_noise()
            error = OSError(errno.ENOSPC, "No space left on device", str(self._latest.directory))
            raise RuntimeError("checkpoint save failed") from error  # wrapped, as orbax's async errors are
        original(self, step, state, progress)
        time.sleep(0.05)  # the asynchronous write is under way
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.RunCheckpoints.save_latest = save_latest


if __name__ == "__main__":
    fault, step = sys.argv[1], int(sys.argv[2])
    workdir = next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--workdir="))
    inject(fault, step, os.path.abspath(workdir))
    from bridgegap_jax import main

    sys.argv = [sys.argv[0]] + sys.argv[3:]
    main.run()
