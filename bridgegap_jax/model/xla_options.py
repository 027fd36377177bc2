"""Named sets of XLA GPU compiler flags, applied through XLA_FLAGS before JAX starts its backend.

XLA reads XLA_FLAGS once, when the first backend is created, so `apply` must run before anything
touches a device (main.py calls it first thing; the benchmark sets it in each row's process).
The flags only affect how XLA compiles for a GPU; on a CPU they are parsed and ignored. None is on
by default: each is a candidate that the benchmark times against the defaults (`--run
jax-bf16+xla-NAME:128`), to be made a default only where it wins.

Not here on purpose: `--xla_gpu_autotune_level`, because its default (4) already times every
convolution and GEMM algorithm; lower levels only skip buffer initialisation and result checks,
which saves compile time, not step time.
"""

from __future__ import annotations

import os
from typing import Iterable

from bridgegap_jax.base.errors import UserError


class XlaOptionError(UserError, ValueError):
    pass


PRESETS: dict[str, tuple[str, ...]] = {
    # Convolutions as cuDNN graph fusions, so elementwise producers and consumers (BatchNorm's
    # normalise, ReLU, residual add) can run inside the convolution kernel. Experimental in XLA.
    "conv-fusion": ("--xla_gpu_experimental_enable_conv_fusion=true",),
    # cuDNN convolutions always in NHWC (XLA picks it for bf16 already; this forces it for float32).
    "nhwc": ("--xla_gpu_force_conv_nhwc=true",),
    # Search Triton GEMM tilings exhaustively during autotuning (longer compile, maybe faster GEMMs).
    "exhaustive": ("--xla_gpu_exhaustive_tiling_search=true",),
}


def parse(names: str | Iterable[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> the preset names, checked; '' -> []."""
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise XlaOptionError(f"unknown XLA option(s) {', '.join(unknown)}: choose from {', '.join(PRESETS)}")
    return names


def flags(names: str | Iterable[str]) -> list[str]:
    return [flag for name in parse(names) for flag in PRESETS[name]]


def with_flags(xla_flags: str, names: str | Iterable[str]) -> str:
    """An XLA_FLAGS value: `xla_flags` plus the presets' flags."""
    return " ".join([xla_flags.strip(), *flags(names)]).strip()


def apply(names: str | Iterable[str]) -> None:
    """Add the presets' flags to this process's XLA_FLAGS; JAX must not have started a backend yet."""
    if not parse(names):
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "XLA options must be applied before JAX creates its backend (before any device use)"
        )
    os.environ["XLA_FLAGS"] = with_flags(os.environ.get("XLA_FLAGS", ""), names)
