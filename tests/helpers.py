"""Shared by the tests: running the tools as a user does, what their errors look like, a crash
injected into an in-process run, fake runs, and the README's code."""

import os
import re
import struct
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo shrunk to seconds, as users run it (configs/demo.py, README): 25 steps per epoch, 2 epochs,
# a checkpoint every 10 steps. One shape everywhere: the suite compiles its programs once.
TINY_DEMO = "configs/demo.py:tiny"


def override(config, **fields):
    """`config` with `fields` set ('__' for '.': train__lr=1.0)."""
    for key, value in fields.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def tiny_demo(data_dir, **fields):
    """The config of TINY_DEMO on the demo dataset in `data_dir`, with `fields` set (see override)."""
    from configs import demo

    return override(demo.get_config("tiny"), data__data_dir=data_dir, **fields)


def demo_flags(workdir, data_dir, **overrides) -> list[str]:
    """main's flags for TINY_DEMO in `workdir`; overrides use '__' for '.' (train__lr=1.0)."""
    fields = {"data.data_dir": data_dir, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return [
        f"--config={TINY_DEMO}",
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
    from bridgegap_jax.base import sharding

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


def make_run(workdir, config, seed=0, num_classes=10, checkpoint=True, variables=None):
    """A fake finished run: config.json and a best checkpoint (step 7) of `variables` (default: random)."""
    from bridgegap_jax.run import configuration
    from bridgegap_jax.run.checkpoint import RunCheckpoints
    from bridgegap_jax.run.rundir import CONFIG_FILE, RunDir

    os.makedirs(workdir)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort())
    if checkpoint:
        if variables is None:
            variables = random_variables(configuration.model(config, num_classes), seed=seed)
        checkpoints = RunCheckpoints(RunDir(str(workdir)).checkpoints)
        checkpoints.save_best(7, dict(variables), 50.0)
        checkpoints.close()
    return str(workdir)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


OWN_DATA_PAGE = os.path.join("docs", "own_data.md")  # the PyTorch code for an exported model


def readme_python(containing: str, page: str = OWN_DATA_PAGE) -> str:
    """The ```python block of a docs page that contains `containing`: tests run it as printed."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"{len(found)} python blocks of {page} contain {containing!r}"
    return found[0]


def read_csv(path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_readme_pytorch(workdir, model_file, images, names, predictions, monkeypatch, max_difference=1e-5):
    """The README's PyTorch code on `names` under the folder `images`, with the export of `workdir` in
    `model_file` (made if missing), against predict's probabilities in `predictions` (a CSV)."""
    import pytest

    pytest.importorskip("torch", reason="the PyTorch side needs the torch extra (pip install -e '.[torch]')")
    pytest.importorskip("safetensors", reason="the PyTorch side needs the torch extra (safetensors)")
    import torch

    from bridgegap_jax import export

    if not os.path.exists(model_file):
        assert export.main([f"--workdir={workdir}", f"--out={model_file}"]) == 0
    expected = {row["file_name"]: row for row in read_csv(predictions)}
    monkeypatch.chdir(os.path.dirname(model_file))  # the README loads "model.safetensors"
    torch.set_num_threads(2)
    namespace = {}
    exec(
        readme_python("load_file").replace('"model.safetensors"', repr(os.path.basename(model_file))),
        namespace,
    )
    got = namespace["probabilities"]([os.path.join(images, name) for name in names]).numpy()
    want = np.array([[float(expected[name][c]) for c in namespace["classes"]] for name in names])
    difference = float(np.abs(got - want).max())
    print(
        f"README PyTorch code vs predict, ResNet-{namespace['meta']['depth']}: max abs difference "
        f"{difference:.2e} over {got.size} probabilities (float32)"
    )
    assert got.shape == want.shape and difference <= max_difference
    return difference


# What PIL turns a stored image by to show it (the EXIF orientation tag, 2..8), undone.
_UNDO_ORIENTATION = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_90",
}
_UNDO_ORIENTATION |= {7: "TRANSVERSE", 8: "ROTATE_270"}


def upright_picture() -> np.ndarray:
    """(80, 40, 3) uint8, a portrait: the top half light, the bottom dark, a red square top left (so a
    turn or a mirror of it shows). Edges on the 8-pixel grid: JPEG keeps them."""
    picture = np.full((80, 40, 3), 20, np.uint8)
    picture[:40] = 230
    picture[:16, :16] = (230, 20, 20)
    return picture


def sideways_photo(orientation: int = 6, fmt: str = "JPEG") -> bytes:
    """upright_picture() as a phone stores it: the pixels turned, and the EXIF orientation tag that turns
    them back (6: the camera held upright, the sensor landscape)."""
    import io

    from PIL import Image

    stored = Image.fromarray(upright_picture()).transpose(Image.Transpose[_UNDO_ORIENTATION[orientation]])
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored.save(out, format=fmt, exif=exif)
    return out.getvalue()
