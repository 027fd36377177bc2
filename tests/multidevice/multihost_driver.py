"""`python -m bridgegap_jax.main` with shortened epochs, for the multi-process tests.

    python tests/multidevice/multihost_driver.py STEPS_PER_EPOCH MAIN_FLAGS...

Each epoch has at most STEPS_PER_EPOCH batches (the demo has 100), so a 2-process run takes seconds.
With SLOW_HOST_VAR=S in the environment, process 1 starts its run S seconds after the others (after
jax.distributed.initialize), as a slow host would: reading its data, compiling on a loaded machine.
"""

import os
import sys
import time

SLOW_HOST_VAR = "BRIDGEGAP_TEST_SLOW_HOST_S"
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]  # the repo root, and tests/ for helpers


def shorten(input_pipeline, steps_per_epoch: int) -> object:
    """Patches `input_pipeline` in place; returns the original function (to undo it)."""
    original = input_pipeline.steps_per_epoch
    input_pipeline.steps_per_epoch = lambda num_examples, options: min(
        original(num_examples, options), steps_per_epoch
    )
    return original


if __name__ == "__main__":
    from bridgegap_jax import main
    from bridgegap_jax.data import input_pipeline

    shorten(input_pipeline, int(sys.argv[1]))
    if os.environ.get(SLOW_HOST_VAR) and "--process_id=1" in sys.argv:
        from bridgegap_jax.run import trainer

        run = trainer.train_and_evaluate

        def slow_host(*args, **kwargs):
            time.sleep(float(os.environ[SLOW_HOST_VAR]))
            return run(*args, **kwargs)

        trainer.train_and_evaluate = slow_host
    sys.argv = [sys.argv[0]] + sys.argv[2:]
    main.run()
