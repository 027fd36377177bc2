"""The benchmark: it runs on a machine without TensorFlow or ml_collections, its JAX step is the
training step, and its CPU smoke run (`--tiny`) produces the table."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_imports_no_tensorflow_ml_collections_or_torch():
    code = ("import sys, bridgegap_jax.benchmark; "
            "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'ml_collections', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_benchmark_step_is_the_training_step():
    """benchmark.jax_train_step + make_optimizer == train.train_step + train.make_optimizer (one step, LL-R, k > 0)."""
    from bridgegap_jax import benchmark, train
    from bridgegap_jax.models import CAMClassifier

    config = __import__("configs.base", fromlist=["get_config"]).get_config()
    model = CAMClassifier(num_classes=10, depth=18, width=8, alpha=5.0)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
    images, observed, k = benchmark.synthetic_batch(4, 32, 10)
    assert k > 0
    k = jnp.asarray(k, jnp.int32)

    tx = train.make_optimizer(config)
    state = train.TrainState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    expected, metrics, _ = jax.jit(lambda s, x, y, k: train.train_step(s, x, y, k, model=model, tx=tx, scheme="LL-R", unobserved_value=0))(
        state, images, observed, k)

    btx = benchmark.make_optimizer(config.train.lr, config.train.head_lr_mult)
    bstate = {"params": variables["params"], "batch_stats": variables["batch_stats"], "opt_state": btx.init(variables["params"])}
    got, loss = jax.jit(lambda s, x, y, k: benchmark.jax_train_step(s, x, y, k, model=model, tx=btx))(bstate, images, observed, k)

    # Two jit programs may fuse differently: equal up to float32 rounding.
    np.testing.assert_allclose(float(loss), float(metrics["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(expected.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    for a, b in zip(jax.tree.leaves(got["batch_stats"]), jax.tree.leaves(expected.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_tiny_cpu_benchmark_writes_the_table(tmp_path, capsys):
    """`--tiny` with one PyTorch and one JAX variant (the others differ only in dtype / autocast /
    memory format flags): timing, eval at the best batch, the profile summary, the table."""
    pytest.importorskip("torch", reason="torch is a test extra (pip install -e '.[torch]'); the benchmark compares against it")
    pytest.importorskip("torchvision", reason="torchvision is a test extra; the benchmark's reference model needs it")
    from bridgegap_jax import benchmark

    out = tmp_path / "bench.md"
    assert benchmark.main(["--tiny", "--markdown", str(out), "--profile", str(tmp_path / "profile"),
                           "--run", "torch-ref:2", "--run", "jax-bf16:2"]) == 0
    text = out.read_text()
    for variant in ("torch-ref", "jax-bf16"):
        assert f"| {variant} | 2 |" in text
    assert "vs torch-ref" in text and "**" in text  # the ratio column and the best-vs-best lines
    assert "GFLOP per image" in text
    assert "top ops by time" in capsys.readouterr().out
