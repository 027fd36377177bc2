"""Shared by the tests: running the tools as a user does, what their errors look like, and a crash
injected into an in-process run."""

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A demo run of seconds: 25 steps per epoch, 2 epochs, a checkpoint every 10 steps.
TINY_DEMO = {
    "data.image_size": 32,
    "model.width": 8,
    "train.num_epochs": 2,
    "train.batch_size": 64,
    "train.log_every_steps": 5,
    "train.checkpoint_every_steps": 10,
    "data.workers": 0,
}


def demo_flags(workdir, data_dir, **overrides) -> list[str]:
    """main's flags for the tiny demo in `workdir`; overrides use '__' for '.' (train__lr=1.0)."""
    fields = {
        **TINY_DEMO,
        "data.data_dir": data_dir,
        **{k.replace("__", "."): v for k, v in overrides.items()},
    }
    return [
        "--config=configs/demo.py",
        f"--workdir={workdir}",
        *[f"--config.{k}={v}" for k, v in fields.items()],
    ]


def run(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """`python ARGS...` from the repository root."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """A user error: exit code 2, no traceback, one line on stderr starting 'error: '."""
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


class Interrupted(Exception):
    pass


def failing_prefetch(original, num_batches: int, error):
    """`original` (sharding.prefetch_to_device) that raises `error()` when the trainer asks for training
    batch `num_batches` + 1, as a crash after that many steps would."""
    seen = {"n": 0}

    def prefetch(batches, *args, **kwargs):
        for item in original(batches, *args, **kwargs):
            if "batch_index" in item[0]:  # a training batch
                if seen["n"] == num_batches:
                    raise error()
                seen["n"] += 1
            yield item

    return prefetch


def interrupt_after(monkeypatch, num_batches):
    """Make an in-process run raise Interrupted after `num_batches` training steps."""
    from bridgegap_jax import sharding

    prefetch = failing_prefetch(sharding.prefetch_to_device, num_batches, Interrupted)
    monkeypatch.setattr(sharding, "prefetch_to_device", prefetch)


def random_variables(model, image_size=32, seed=0):
    """He-normal weights and neutral BatchNorm from numpy: model.init's RNG kernels take long to compile."""
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3), jnp.uint8)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if name == "mean":
            return np.zeros(leaf.shape, np.float32)
        std = 0.5 if name == "bias" else np.sqrt(2 / np.prod(leaf.shape[:-1]))
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def latest_checkpoint(workdir: str) -> tuple[int, dict]:
    """(step, saved state: {"train": TrainState fields, "host": ...}) of a run's latest checkpoint, read
    with orbax alone (no model needed)."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints", "latest"), item_names=("state", "progress")
    )
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, restored["state"]
