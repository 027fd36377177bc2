"""`python -m bridgegap_jax.main` with a shortened training stream, for the multi-process tests.

    python tests/multidevice/multihost_driver.py STEPS_PER_EPOCH CRASH_AFTER MAIN_FLAGS...

Each epoch stops after STEPS_PER_EPOCH batches (the demo has 100), so a 2-process run takes
seconds; with CRASH_AFTER > 0 the stream raises after that many batches, as a crash would.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root



class Crash(Exception):
    pass


def shortened(train_batches, steps_per_epoch: int, crash_after: int = 0):
    """`train_batches` cut to `steps_per_epoch` batches per epoch, raising Crash after `crash_after`."""
    seen = {"n": 0}

    def stream(*args, **kwargs):
        for step, batch in enumerate(train_batches(*args, **kwargs), start=kwargs.get("start_step", 0)):
            if step == steps_per_epoch:
                return
            if seen["n"] == crash_after > 0:
                raise Crash(f"crash after {crash_after} batches")
            seen["n"] += 1
            yield batch

    return stream


if __name__ == "__main__":
    from absl import app

    from bridgegap_jax import input_pipeline, main

    steps_per_epoch, crash_after = int(sys.argv[1]), int(sys.argv[2])
    input_pipeline.train_batches = shortened(input_pipeline.train_batches, steps_per_epoch, crash_after)
    app.run(main.main, argv=[sys.argv[0]] + sys.argv[3:])
