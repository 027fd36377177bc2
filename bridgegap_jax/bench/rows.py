"""What a benchmark row is: its variant (checked), its result, and what every row shares (the
synthetic batch, the step's hyperparameters, the timing loop).

Imported by the parent too, so nothing here imports jax or torch at import time.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

from bridgegap_jax.model import xla_options

TORCH_VARIANTS = ("torch-ref", "torch-amp", "torch-best")
JAX_VARIANTS = ("jax-fp32", "jax-bf16")
XLA_PREFIX = "xla-"  # jax-bf16+xla-NAME: the XLA preset NAME of xla_options.py
SCHEME, EPOCH = "LL-R", 3
LR, HEAD_LR_MULT = 1e-5, 10.0


@dataclasses.dataclass
class Row:
    variant: str
    batch: int
    precision: str = ""
    train_ms: float | None = None  # median ms per training step
    eval_ms: float | None = None  # median ms per eval batch
    compile_s: float | None = None  # compilation and warm-up
    peak_gib: float | None = None
    note: str = ""  # why there are no numbers: skipped, out of memory, failed, timed out
    skipped: bool = False
    environment: str = ""
    profile: str = ""

    @property
    def images_per_s(self) -> float | None:
        return None if self.train_ms is None else 1000.0 * self.batch / self.train_ms

    @property
    def eval_images_per_s(self) -> float | None:
        return None if self.eval_ms is None else 1000.0 * self.batch / self.eval_ms


def model_options() -> dict[str, dict[str, str]]:
    """{variant option: model fields}: the speed options of layers.py under their benchmark names."""
    from bridgegap_jax.model import (
        layers,  # flax: only once a variant is checked, so the parent's import stays light
    )

    return {o.benchmark_name: {o.field: o.fast} for o in layers.SPEED_OPTIONS}


def split_variant(variant: str) -> tuple[str, list[str]]:
    """'jax-bf16+fused-bn+xla-nhwc' -> ('jax-bf16', ['fused-bn', 'xla-nhwc']), checked."""
    base, *options = variant.split("+")
    if base not in TORCH_VARIANTS + JAX_VARIANTS:
        raise ValueError(
            f"variant {variant!r}: {base!r} is not one of {', '.join(TORCH_VARIANTS + JAX_VARIANTS)}"
        )
    if not options:
        return base, options
    if base not in JAX_VARIANTS:
        raise ValueError(f"variant {variant!r}: options apply to the JAX variants only")
    known = list(model_options()) + [XLA_PREFIX + name for name in xla_options.PRESETS]
    unknown = [o for o in options if o not in known]
    if unknown:
        raise ValueError(
            f"variant {variant!r}: unknown option(s) {', '.join(unknown)}; options: {', '.join(known)}"
        )
    return base, options


def model_fields_of(variant: str) -> dict[str, str]:
    """The model fields that the variant's options set: 'jax-bf16+fused-bn' -> {'batch_norm': 'fused'}."""
    by_name = model_options()
    return {k: v for o in split_variant(variant)[1] if o in by_name for k, v in by_name[o].items()}


def xla_flags_of(variant: str) -> list[str]:
    names = [o[len(XLA_PREFIX) :] for o in split_variant(variant)[1] if o.startswith(XLA_PREFIX)]
    return xla_options.flags(names)


def median_seconds(
    run: Callable[[], object], sync: Callable[[object], None], warmup: int, steps: int, repeats: int
) -> tuple[float, float]:
    """(median seconds per call over `repeats` timings of `steps` calls, seconds of the warm-up)."""
    start = time.perf_counter()
    for _ in range(warmup):
        sync(run())
    warm = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = run()
        sync(out)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times), warm


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int = 0):
    """uint8 images, single-positive observed labels (0 = unobserved), and k of LL-R at epoch 3."""
    import numpy as np

    from bridgegap_jax.run import schemes

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    observed = np.zeros((batch, num_classes), np.int32)
    observed[np.arange(batch), rng.integers(0, num_classes, batch)] = 1
    return images, observed, schemes.create(SCHEME).num_large_losses(EPOCH, batch, num_classes)
