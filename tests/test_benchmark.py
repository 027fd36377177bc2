"""The benchmark (bridgegap_jax.bench): its JAX step is the training step, its FLOPs are the model's,
its targets are judged right, and its CPU smoke run (`--tiny`) produces the table, with PyTorch and
without, also through scripts/gpu_benchmark.sh."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bridgegap_jax.bench import cli, flops, jax_rows, tables
from bridgegap_jax.bench.rows import Row, model_fields_of, split_variant, xla_flags_of
from bridgegap_jax.model import xla_options
from bridgegap_jax.model.resnet import CAMClassifier, ResNetTrunk
from bridgegap_jax.run import optimizer, schemes, steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_imports_no_tensorflow_ml_collections_or_torch():
    code = (
        "import sys, bridgegap_jax.bench.cli; "
        "bad = [m for m in ('tensorflow', 'ml_collections', 'torch', 'jax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.slow
def test_benchmark_step_is_the_training_step():
    """One step of the benchmark's setup == steps.train_step with the training defaults (LL-R, k > 0)."""
    setup = jax_rows.jax_setup("jax-fp32", 4, depth=18, num_classes=10, size=32, width=8)
    assert int(setup.k.sum()) > 0
    model = CAMClassifier(num_classes=10, depth=18, width=8)
    tx = optimizer.make_optimizer(1e-5, 10.0)
    state = steps.initial_state(model, tx, 32, 0)
    step = jax.jit(
        functools.partial(steps.train_step, model=model, tx=tx, loss_fn=schemes.create("LL-R").loss)
    )
    expected, metrics, _ = step(state, setup.images, setup.observed, setup.k)

    got, got_metrics, _ = setup.step(setup.state, setup.images, setup.observed, setup.k)
    # Two jit programs may fuse differently: gradients (in Adam's moments: 3e-4 of each leaf's
    # largest, squared in the second moment), statistics and loss agree to float32 rounding; a
    # parameter may move by up to 2 lr where its gradient is near
    # Adam's eps, which turns rounding into a different step.
    np.testing.assert_allclose(got_metrics["loss"], metrics["loss"], rtol=1e-6)
    for tree, reference, rtol in (
        (got.opt_state, expected.opt_state, 3e-4),
        (got.batch_stats, expected.batch_stats, 1e-5),
    ):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)):
            np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(float(np.abs(b).max()), 1e-12))
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(expected.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=2e-5 + 1e-9)


def test_flops_are_the_models_convolutions_and_matmuls():
    """ResNet-50's convolutions at 224: 4.087 GMAC (torchvision's 4.09 G less the 2 M of its fc);
    the training step at 448 with 80 classes: 3 x 2 x 16.38 GMAC = 98.3 GFLOP per image."""
    trunk = ResNetTrunk(depth=50)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: trunk.init(jax.random.key(0), x, train=False), x)
    assert flops.macs(lambda v, x: trunk.apply(v, x, train=False), variables, x) == 4_087_136_256
    counted = flops.model_flops(CAMClassifier(num_classes=80, depth=50), 448)
    assert counted["train"] == 3 * counted["forward"]
    assert abs(counted["train"] / 98.3e9 - 1) < 1e-3
    # A matmul inside a scan counts once per iteration.
    scanned = flops.macs(
        lambda a: jax.lax.scan(lambda c, _: (c @ a, None), a, length=5)[0],
        jax.ShapeDtypeStruct((4, 4), jnp.float32),
    )
    assert scanned == 5 * 4**3


def test_variants_options_and_targets_parse():
    assert split_variant("jax-bf16+fused-bn+xla-conv-fusion") == (
        "jax-bf16",
        ["fused-bn", "xla-conv-fusion"],
    )
    for bad in ("jax-bf8", "torch-ref+fused-bn", "jax-bf16+fast"):
        with pytest.raises(ValueError):
            split_variant(bad)
    assert xla_flags_of("jax-bf16+xla-nhwc+fused-bn") == list(xla_options.PRESETS["nhwc"])
    assert model_fields_of("jax-bf16+s2d-stem+xla-nhwc+fused-bn") == {
        "stem": "space_to_depth",
        "batch_norm": "fused",
    }
    assert tables.parse_target("jax-bf16*:16/torch-ref:16>=2.5") == ("jax-bf16*", 16, "torch-ref", 16, 2.5)
    assert tables.parse_target("jax-bf16+fused-bn/torch-best>=1.2") == (
        "jax-bf16+fused-bn",
        None,
        "torch-best",
        None,
        1.2,
    )


def test_targets_are_judged_on_the_right_rows():
    rows = [
        Row("torch-best", 128, train_ms=100.0, eval_ms=20.0),
        Row("torch-best", 256, note="out of memory"),
        Row("jax-bf16", 128, train_ms=90.0, eval_ms=16.0),
        Row("jax-bf16+fused-bn", 128, train_ms=80.0),
        Row("torch-ref", 16, note="skipped: PyTorch is not installed (x)", skipped=True),
    ]
    train = tables.target_lines(
        rows,
        [
            tables.parse_target(t)
            for t in (
                "jax-bf16*/torch-best>=1.2",
                "jax-bf16/torch-best>=1.1",
                "jax-bf16*:16/torch-ref:16>=2.5",
            )
        ],
        "images_per_s",
    )
    assert train[0].startswith("- **MET**") and "jax-bf16+fused-bn b128" in train[0] and "1.25x" in train[0]
    assert "defaults only: jax-bf16 b128 1.11x" in train[0]
    assert train[1].startswith("- **MET**") and "1.11x" in train[1]
    assert train[2].startswith("- **NOT MEASURED**") and "no jax-bf16* b16 row" in train[2]
    assert "no torch-ref b16 row (skipped: PyTorch is not installed (x))" in train[2]
    evals = tables.target_lines(rows, [tables.parse_target("jax-bf16*/torch-best>=1.3")], "eval_images_per_s")
    assert evals[0].startswith("- **NOT MET**") and "1.25x" in evals[0]


def test_tiny_run_without_torch_says_what_was_skipped(tmp_path):
    """Without PyTorch its rows are skipped, with the reason, and the targets that need them are not
    measured (the JAX rows are timed as with PyTorch: test_tiny_run_with_torch_writes_the_table)."""
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow.parent), ROOT]))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridgegap_jax.bench",
            "--tiny",
            "--run=torch-ref:2",
            "--run=torch-best:2",
            "--target=jax-bf16:2/torch-ref:2>=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "| torch-ref | 2 | - | - |" in text and "skipped: PyTorch is not installed" in text
    assert "| torch-best | 2 |" in text
    assert "**NOT MEASURED**" in text and "no torch-ref b2 row (skipped: PyTorch is not installed" in text


@pytest.mark.slow
def test_tiny_run_with_torch_writes_the_table(tmp_path, capsys):
    pytest.importorskip(
        "torch", reason="torch is a test extra (pip install -e '.[torch]'); the benchmark compares against it"
    )
    pytest.importorskip(
        "torchvision", reason="torchvision is a test extra; the benchmark's reference model needs it"
    )
    out = tmp_path / "bench.md"
    assert (
        cli.main(
            [
                "--tiny",
                "--markdown",
                str(out),
                "--profile-at=2",
                "--eval-at=2",
                "--profile-dir",
                str(tmp_path / "profile"),
                "--run=torch-ref:2",
                "--run=jax-bf16:2",
                "--run=jax-bf16+fused-bn+strided-pool+s2d-stem:2",
                "--target=jax-bf16*:2/torch-ref:2>=0.001",
                "--eval-target=jax-bf16/torch-ref>=1",
            ]
        )
        == 0
    )
    text = out.read_text()
    for variant in ("torch-ref", "jax-bf16", "jax-bf16+fused-bn+strided-pool+s2d-stem"):
        assert f"| {variant} | 2 |" in text
    assert "vs torch-ref b2" in text and "GFLOP per image" in text and "bf16 matmul peak" in text
    assert "- **MET** ResNet-50, 80 classes, 448x448 (--tiny: ResNet-18, 10 classes, 32x32, " in text
    assert "eval: jax-bf16 (best batch) / torch-ref" in text
    assert "option jax-bf16+fused-bn+strided-pool+s2d-stem b2 vs jax-bf16" in text
    assert "top ops by time" in text
    assert not os.path.exists(str(out) + ".partial")


@pytest.mark.slow
def test_gpu_benchmark_script_runs_in_tiny_mode(tmp_path):
    """The GPU script end to end on the CPU, with a budget so small that most rows are skipped; run
    with this interpreter (PYTHON), not whatever `python3` PATH finds."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    out = subprocess.run(
        ["bash", "scripts/gpu_benchmark.sh", "--tiny", "--budget=8"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = (tmp_path / "benchmark.md").read_text()
    assert "### ResNet-50, 80 classes, 448x448" in text and "### ResNet-101, 5,000 classes, 448x448" in text
    assert "skipped: time budget spent" in text
    assert text.count("**NOT MEASURED**") + text.count("**MET**") + text.count("**NOT MET**") >= 4
