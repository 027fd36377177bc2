"""The layer-wise optimizers (train.optimizer = lamb | lars): two steps of each against the update
written out in numpy, the head at its lr multiplier; and the config rules. (tests/test_trainer.py
resumes a run of each bit-identically; tests/test_parity.py checks Adam against PyTorch.)"""

import jax
import numpy as np
import pytest

from bridgegap_jax.run import configuration, optimizer

HEAD_LR_MULT = 10.0


def tiny_params(rng):
    """A 'trunk' and a 'head' as the model names them: conv kernels, BatchNorm scale and bias, a bias."""
    shapes = {
        "trunk": {"conv1": {"kernel": (3, 3, 2, 4)}, "bn1": {"scale": (4,), "bias": (4,)}},
        "head": {"kernel": (1, 1, 4, 3), "bias": (3,)},
    }
    return jax.tree.map(
        lambda shape: rng.normal(0, 0.2, shape).astype(np.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def leaves(tree) -> dict:
    """'part/layer/name' -> float64 numpy array."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(k.key for k in path): np.asarray(v, np.float64) for path, v in flat}


def norm(x):
    return np.sqrt(np.sum(x * x))


def lamb_by_hand(params, grads, lrs, weight_decay, b1=0.9, b2=0.999, eps=1e-6):
    """LAMB (You et al. 2020, Algorithm 2): Adam's bias-corrected step, plus weight decay, rescaled
    to |w| / |step| for kernels; the head at HEAD_LR_MULT x lr."""
    w = leaves(params)
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = leaves(g)
        for k in w:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            r = (m[k] / (1 - b1**t)) / (np.sqrt(v2[k] / (1 - b2**t)) + eps)
            if k.endswith("kernel"):
                r = r + weight_decay * w[k]
                r = r * norm(w[k]) / norm(r)
            w[k] = w[k] - lr * (HEAD_LR_MULT if k.startswith("head") else 1.0) * r
    return w


def lars_by_hand(params, grads, lrs, weight_decay, eta=0.001, momentum=0.9):
    """LARS (You et al. 2017, Algorithm 1): the gradient plus weight decay, scaled for kernels by
    the local lr eta |w| / |g + beta w|, times the global lr, into a momentum-0.9 buffer."""
    w = leaves(params)
    buffer = {k: np.zeros_like(v) for k, v in w.items()}
    for g, lr in zip(grads, lrs):
        g = leaves(g)
        for k in w:
            d = g[k]
            if k.endswith("kernel"):
                d = d + weight_decay * w[k]
                d = d * eta * norm(w[k]) / norm(d)
            buffer[k] = momentum * buffer[k] + lr * (HEAD_LR_MULT if k.startswith("head") else 1.0) * d
            w[k] = w[k] - buffer[k]
    return w


# lrs on each optimizer's own scale (LARS's global lr multiplies eta = 0.001), so that the steps stand
# well above float32's resolution of the parameters.
@pytest.mark.parametrize("name,by_hand,lr", [("lamb", lamb_by_hand, 0.05), ("lars", lars_by_hand, 5.0)])
def test_two_steps_equal_the_update_by_hand_with_the_head_at_its_multiplier(name, by_hand, lr):
    rng = np.random.default_rng(0)
    params = tiny_params(rng)
    grads = [jax.tree.map(lambda p: rng.normal(0, 1, p.shape).astype(np.float32), params) for _ in range(2)]
    schedule = optimizer.lr_schedule(lr, decay_steps=4)  # cosine: the second step's lr is lower
    tx = optimizer.make_optimizer(schedule, HEAD_LR_MULT, name)
    state, current = tx.init(params), params
    for g in grads:
        updates, state = jax.jit(tx.update)(g, state, current)
        current = jax.tree.map(lambda p, u: p + u, current, updates)
    lrs = [float(schedule(0)), float(schedule(1))]
    assert lrs[1] < lrs[0]
    start, want, got = (
        leaves(params),
        by_hand(params, grads, lrs, optimizer.WEIGHT_DECAY[name]),
        leaves(current),
    )
    for key in want:  # the two steps' change; float32 bias correction (1 - 0.999^2) is good to ~3e-5
        np.testing.assert_allclose(
            got[key] - start[key], want[key] - start[key], rtol=1e-4, atol=1e-7, err_msg=key
        )
    # The multiplier is what moves the head: at 1x its step is a tenth of this one.
    same = optimizer.make_optimizer(schedule, 1.0, name)
    moved, _ = same.update(grads[0], same.init(params), params)
    step_10x, _ = tx.update(grads[0], tx.init(params), params)
    np.testing.assert_allclose(
        leaves(step_10x)["head/bias"], HEAD_LR_MULT * leaves(moved)["head/bias"], rtol=1e-6
    )


def test_only_kernels_enter_weight_decay_and_the_trust_ratio():
    params = tiny_params(np.random.default_rng(1))
    assert leaves(optimizer.is_kernel(params)) == {
        "trunk/conv1/kernel": 1.0,
        "trunk/bn1/scale": 0.0,
        "trunk/bn1/bias": 0.0,
        "head/kernel": 1.0,
        "head/bias": 0.0,
    }


@pytest.mark.parametrize(
    "optimizer,weight_decay,match",
    [
        ("sgd", None, "config.train.optimizer='sgd': must be one of adam, lamb, lars"),
        ("lamb", -0.1, "config.train.weight_decay=-0.1: must be >= 0"),
        ("adam", 0.01, "config.train.weight_decay=0.01: adam trains without weight decay"),
    ],
)
def test_config_rules(optimizer, weight_decay, match):
    config = __import__("configs.demo", fromlist=["get_config"]).get_config()
    config.train.optimizer, config.train.weight_decay = optimizer, weight_decay
    with pytest.raises(configuration.ConfigError, match=match):
        configuration.check(config)
    config.train.optimizer, config.train.weight_decay = "lars", 0.0  # the paper's decay can be turned off
    configuration.check(config)
