"""`python -m bridgegap_jax.main` with shortened epochs, for the multi-process tests.

    python tests/multidevice/multihost_driver.py STEPS_PER_EPOCH CRASH_AFTER MAIN_FLAGS...

Each epoch has at most STEPS_PER_EPOCH batches (the demo has 100), so a 2-process run takes
seconds; with CRASH_AFTER > 0 the run raises after that many training batches, as a crash would.
"""

import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]  # the repo root, and tests/ for helpers


class Crash(Exception):
    pass


def shorten(input_pipeline, steps_per_epoch: int) -> object:
    """Patches `input_pipeline` in place; returns the original function (to undo it)."""
    original = input_pipeline.steps_per_epoch
    input_pipeline.steps_per_epoch = lambda num_examples, options: min(
        original(num_examples, options), steps_per_epoch
    )
    return original


def crash_after(sharding, num_batches: int) -> None:
    """Raise Crash when the trainer asks for training batch `num_batches` + 1 (after that many steps)."""
    from helpers import failing_prefetch

    crash = lambda: Crash(f"crash after {num_batches} batches")  # noqa: E731
    sharding.prefetch_to_device = failing_prefetch(sharding.prefetch_to_device, num_batches, crash)


if __name__ == "__main__":
    from bridgegap_jax import input_pipeline, main, sharding

    shorten(input_pipeline, int(sys.argv[1]))
    if int(sys.argv[2]) > 0:
        crash_after(sharding, int(sys.argv[2]))
    sys.argv = [sys.argv[0]] + sys.argv[3:]
    main.run()
