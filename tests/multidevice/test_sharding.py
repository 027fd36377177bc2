"""Data parallelism over 8 virtual CPU devices equals one device: a training step, evaluation,
and checkpoints restored onto another device count. Collected only in the 8-device child
(tests/test_multidevice.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bridgegap_jax.base import sharding
from bridgegap_jax.data import input_pipeline
from bridgegap_jax.run import configuration, evaluation, metrics, schemes, steps
from bridgegap_jax.run.checkpoint import RunCheckpoints


def relative_error(a, b) -> float:
    """||a - b|| / ||a||, the largest over the leaves of two trees."""
    errors = jax.tree.map(
        lambda x, y: np.linalg.norm(np.float64(x) - y) / max(np.linalg.norm(np.float64(x)), 1e-30), a, b
    )
    return max(jax.tree.leaves(errors))


def tiny_model(config):
    return configuration.model(config, 10), configuration.optimizer(config).tx


@pytest.fixture(scope="module")
def host_state():
    """The tiny_config model's initial state as host arrays, computed once; device_put on each mesh."""
    from configs import demo

    config = demo.get_config("tiny")
    model, tx = tiny_model(config)
    return jax.device_get(steps.create_state(model, tx, 32, 0, sharding.make_mesh(jax.devices()[:1])))


def place(state, mesh):
    return jax.device_put(state, sharding.replicated(mesh))


def test_mesh_puts_each_process_rows_on_its_own_devices():
    mesh = sharding.make_mesh(jax.devices()[::-1])
    assert [d.id for d in mesh.devices] == sorted(d.id for d in jax.devices())
    assert mesh.shape == {"data": 8}


def test_a_step_on_8_devices_equals_one_device(tiny_config, host_state):
    """Same parameters, batch statistics, loss and large-loss selection (float32, rel. error <= 1e-5).

    Relative error per array (||a-b|| / ||a||), not per element: Adam's first update is
    lr * g / (|g| + eps), so a gradient element that is ~eps (BatchNorm makes some directions of
    the loss flat) turns summation-order noise into a +-lr step of that one element.
    """
    model, tx = tiny_model(tiny_config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    observed = np.zeros((16, 10), np.int8)
    observed[np.arange(16), rng.integers(0, 10, 16)] = 1
    scheme = schemes.create("LL-R", 0.05)
    k = jnp.asarray(scheme.num_large_losses(2, 16, 10), jnp.int32)  # epoch 2: rejections on
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        state = place(host_state, mesh)
        step = steps.jit_train_step(model, tx, scheme.loss, mesh)
        state, metrics, selected = step(
            state, sharding.to_global(mesh, images), sharding.to_global(mesh, observed), k
        )
        assert len(state.params["head"]["kernel"].sharding.device_set) == len(devices)
        results.append(jax.device_get((state.params, state.batch_stats, metrics["loss"], selected)))
    (params_1, stats_1, loss_1, selected_1), (params_8, stats_8, loss_8, selected_8) = results
    assert relative_error(params_1, params_8) <= 1e-5
    assert relative_error(stats_1, stats_8) <= 1e-5
    assert abs(loss_8 - loss_1) <= 1e-5 * abs(loss_1)
    assert selected_1.sum() > 0
    np.testing.assert_array_equal(selected_1, selected_8)


def test_evaluation_on_8_devices_counts_every_example_once(tiny_config, demo_data_dir, host_state):
    from bridgegap_jax.data import catalog

    dataset = catalog.open_dataset("demo", demo_data_dir)
    source = dataset.source("test")
    truth = np.stack([ex["labels"] for ex in source.__getitems__(list(range(len(source))))])
    assert len(truth) % tiny_config.train.eval_batch_size  # the last batch is padded
    model, _ = tiny_model(tiny_config)
    probs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        model_vars = place(host_state, mesh).model_vars()
        eval_fn = steps.jit_eval_step(model, mesh)
        options = configuration.pipeline_options(tiny_config, mesh.size)
        reader = input_pipeline.BatchReader(
            dataset, input_pipeline.eval_plan(dataset, "test", options), options
        )
        batches = (reader(i) for i in range(len(reader)))
        p, labels, _ = evaluation.predict(eval_fn, model_vars, batches, mesh, dataset.split_sizes["test"])
        np.testing.assert_array_equal(labels, truth)  # every example once, in stored order
        probs.append(p)
    np.testing.assert_allclose(probs[1], probs[0], rtol=1e-5, atol=1e-7)
    result = evaluation.evaluate_split(eval_fn, model_vars, dataset, "test", options, mesh)  # 8 devices
    assert result["num_examples"] == len(truth)
    # mAP of exactly these probabilities (an untrained model's scores nearly tie, so the 1e-7
    # differences from the 1-device run can reorder them: compare the probabilities, not the mAP).
    np.testing.assert_allclose(result["map"], metrics.summarize(probs[1], truth)["map"], rtol=1e-9)


def test_a_checkpoint_resumes_on_another_device_count(tiny_config, tmp_path, host_state):
    """Saved on 8 devices, restored on 1 and the other way round: the restore target carries the
    new mesh's shardings (a target without them fails: the saved devices are not there)."""
    model, tx = tiny_model(tiny_config)
    bits = np.random.default_rng(0).integers(0, 256, (1600, 2), dtype=np.uint8)  # LL-Cp corrections
    for save_on, restore_on in ((jax.devices(), jax.devices()[:1]), (jax.devices()[:1], jax.devices())):
        workdir = str(tmp_path / f"{len(save_on)}to{len(restore_on)}")
        saved = place(host_state, sharding.make_mesh(save_on))
        checkpoints = RunCheckpoints(workdir)
        checkpoints.save_latest(7, {"train": saved, "host": {"corrections": bits}}, {"epoch": 1})
        checkpoints.close()

        mesh = sharding.make_mesh(restore_on)
        target = {
            "train": steps.abstract_state(model, tx, 32, mesh),
            "host": {"corrections": np.zeros_like(bits)},
        }
        checkpoints = RunCheckpoints(workdir)
        restored, progress = checkpoints.restore_latest(target)
        checkpoints.close()
        assert progress == {"epoch": 1}
        np.testing.assert_array_equal(restored["host"]["corrections"], bits)
        jax.tree.map(np.testing.assert_array_equal, host_state, jax.device_get(restored["train"]))
        for leaf in jax.tree.leaves(restored["train"]):
            assert leaf.sharding.is_equivalent_to(sharding.replicated(mesh), leaf.ndim)


def test_ghost_batch_norm_at_64_on_8_devices_equals_four_batches_of_16():
    """bn_group_size=16 at global batch 64, sharded over 8 devices: the same activations and the same
    running statistics as four separate batch-16 forward passes (the protocol's), in order."""
    from helpers import random_variables

    from bridgegap_jax.model.resnet import CAMClassifier

    ghost, plain = (CAMClassifier(num_classes=10, depth=18, width=8, bn_group_size=g) for g in (16, 0))
    variables = random_variables(plain)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
    mesh = sharding.make_mesh()

    def train_forward(model):
        return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))

    (logits, cam), updated = train_forward(ghost)(place(variables, mesh), sharding.to_global(mesh, images))
    expected, stats = [], variables["batch_stats"]
    for start in range(0, 64, 16):
        (part, _), new = train_forward(plain)(
            {"params": variables["params"], "batch_stats": stats}, images[start : start + 16]
        )
        expected.append(part)
        stats = new["batch_stats"]
    # ||a - b|| / ||a||: float32 rounding through 18 layers of batch statistics over 16 rows is ~1e-5
    # of the logits; BatchNorm over the whole batch of 64 (no groups) is ~10% away.
    expected = np.concatenate(expected)
    error = np.linalg.norm(np.asarray(logits) - expected) / np.linalg.norm(expected)
    (whole, _), _ = train_forward(plain)(variables, images)
    whole_error = np.linalg.norm(np.asarray(whole) - expected) / np.linalg.norm(expected)
    print(f"ghost vs four batches: {error:.1e}; whole batch vs four batches: {whole_error:.1e}")
    assert error <= 1e-4 and whole_error >= 1e-2
    assert relative_error(stats, jax.device_get(updated["batch_stats"])) <= 1e-5


def test_predict_on_8_devices_gives_the_evaluations_probabilities(
    tiny_config, demo_data_dir, tmp_path, host_state
):
    """predict --split=test shards its batches over all 8 devices and pads the last one (480 = 7.5
    batches of 64): the same probabilities as the 1-device evaluation, every image once, in order."""
    from helpers import make_run, read_csv

    from bridgegap_jax import predict
    from bridgegap_jax.data import catalog

    workdir = make_run(tmp_path / "run", tiny_config, variables=host_state.model_vars())
    out = tmp_path / "test.csv"
    summary = predict.predict(workdir, str(out), split="test")
    dataset = catalog.open_dataset("demo", demo_data_dir)
    mesh = sharding.make_mesh(jax.devices()[:1])
    model, _ = tiny_model(tiny_config)
    options = configuration.pipeline_options(tiny_config, mesh.size)
    reader = input_pipeline.BatchReader(dataset, input_pipeline.eval_plan(dataset, "test", options), options)
    expected, _, _ = evaluation.predict(
        steps.jit_eval_step(model, mesh),
        place(host_state, mesh).model_vars(),
        (reader(i) for i in range(len(reader))),
        mesh,
        dataset.split_sizes["test"],
    )
    rows = read_csv(out)
    got = np.array([[float(row[c]) for c in dataset.class_names] for row in rows])
    assert summary["images"] == len(rows) == 480 and rows[0]["file_name"] == "test_000000"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(
        predict.PredictError, match="--batch_size=12 must be a positive multiple of the 8 devices"
    ):
        predict.predict(workdir, str(tmp_path / "other.csv"), split="test", batch_size=12)
