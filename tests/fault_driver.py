"""`python -m bridgegap_jax.main` with one fault injected, for tests/test_faults.py.

    python tests/fault_driver.py FAULT STEP MAIN_FLAGS...

FAULT is one of:
  kill-during-save   SIGKILL this process right after the latest checkpoint of STEP starts saving
                     (orbax writes it asynchronously: the kill lands in the middle of the write)
  disk-full          the save of the latest checkpoint of STEP fails as a full disk would make it
"""

import errno
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root


def inject(fault: str, at_step: int) -> None:
    from bridgegap_jax import checkpoint

    original = checkpoint.RunCheckpoints.save_latest

    def save_latest(self, step, state, progress):
        if step != at_step:
            return original(self, step, state, progress)
        if fault == "disk-full":
            error = OSError(errno.ENOSPC, "No space left on device", str(self._latest.directory))
            raise RuntimeError("checkpoint save failed") from error  # wrapped, as orbax's async errors are
        original(self, step, state, progress)
        time.sleep(0.05)  # the asynchronous write is under way
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.RunCheckpoints.save_latest = save_latest


if __name__ == "__main__":
    fault, step = sys.argv[1], int(sys.argv[2])
    inject(fault, step)
    from bridgegap_jax import main

    sys.argv = [sys.argv[0]] + sys.argv[3:]
    main.run()
