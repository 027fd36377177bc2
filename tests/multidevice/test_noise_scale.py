"""The noise scale on 8 devices (one part per device shard) equals one device measuring the same 8
parts: the trainer's Monitor on each mesh, over a few batches. Collected only in the 8-device child
(tests/test_multidevice.py)."""

import jax
import numpy as np
import pytest

from bridgegap_jax.base import sharding
from bridgegap_jax.run import configuration, part_gradients, schemes, steps


def test_8_devices_measure_the_noise_scale_of_one_device():
    from configs import demo

    config = demo.get_config("tiny")
    model, tx = configuration.model(config, 10), configuration.optimizer(config).tx
    scheme = schemes.create("LL-R", 0.05)
    one = sharding.make_mesh(jax.devices()[:1])
    host_state = jax.device_get(steps.create_state(model, tx, 32, 0, one))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        labels = np.zeros((64, 10), np.int8)
        labels[np.arange(64), rng.integers(0, 10, 64)] = 1
        batches.append((rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8), labels))

    measured = []
    for mesh, configured in ((one, 8), (sharding.make_mesh(jax.devices()), 4)):  # 8 devices: 8 parts
        parts = part_gradients.num_parts(configured, mesh.size)
        monitor = part_gradients.Monitor(parts, model, scheme, mesh, 64, 10)
        state = jax.device_put(host_state, sharding.replicated(mesh))
        norms = []
        for images, labels in batches:
            batch = {"image": sharding.to_global(mesh, images), "labels": sharding.to_global(mesh, labels)}
            values = jax.device_get(monitor.measure(state, batch, epoch=2, rows=64, now=True))
            monitor.add(values)
            norms.append((float(values["small_sq"]), float(values["big_sq"])))
        measured.append((parts, np.array(norms), monitor.smoothed.value()))
    (parts_1, norms_1, scale_1), (parts_8, norms_8, scale_8) = measured
    assert parts_1 == parts_8 == 8
    np.testing.assert_allclose(norms_8, norms_1, rtol=1e-5)
    print(f"noise scale: {scale_1:.4f} on one device, {scale_8:.4f} on 8")
    assert scale_1 > 0 and scale_8 == pytest.approx(scale_1, rel=1e-4)
