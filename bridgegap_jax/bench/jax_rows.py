"""The JAX rows, each in its own child process: the bf16 matmul peak, and a variant's training and
eval step timed on synthetic data already on the device (optionally with a profile of its top ops).

The step is the one training runs (steps.jit_train_step: forward, BoostLU, LL-R loss at epoch 3,
backward, Adam with the 10x head, state donated); the model is resnet.CAMClassifier with the
variant's dtype and speed options. Peak memory: the device's peak_bytes_in_use, else XLA's planned
peak of the step.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import time
from typing import Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from bridgegap_jax.base import sharding
from bridgegap_jax.bench.rows import (
    HEAD_LR_MULT,
    LR,
    SCHEME,
    Row,
    median_seconds,
    model_fields_of,
    split_variant,
    synthetic_batch,
)
from bridgegap_jax.model import resnet
from bridgegap_jax.run import optimizer, schemes, steps


def measure_peak() -> dict:
    """bf16 matmul FLOP/s of the default device (the best of 5 timings of 10 square matmuls)."""
    n = 8192 if jax.default_backend() in ("gpu", "tpu") else 512
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in (0, 1))
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, b))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            out = matmul(a, b)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / 10)
    return {"peak_flops": 2.0 * n**3 / best, "matmul": n, "environment": jax_environment()}


def jax_environment() -> str:
    device = jax.devices()[0]
    return (
        f"python {sys.version.split()[0]}, jax {jax.__version__}, flax {flax.__version__}, optax "
        f"{optax.__version__} on {jax.default_backend()} ({device.device_kind})"
    )


class JaxSetup(NamedTuple):
    model: object
    state: object
    images: object
    observed: object
    k: object
    step: Callable  # steps.jit_train_step: donates the state
    mesh: object


def jax_setup(
    variant: str, batch: int, *, depth: int, num_classes: int, size: int, alpha: float = 5.0, width: int = 64
) -> JaxSetup:
    """Model, initial state, synthetic batch and jitted training step, built as training builds them."""
    model = resnet.CAMClassifier(
        num_classes=num_classes,
        depth=depth,
        width=width,
        alpha=alpha,
        dtype="bfloat16" if split_variant(variant)[0] == "jax-bf16" else "float32",
        **model_fields_of(variant),
    )
    tx = optimizer.make_optimizer(LR, HEAD_LR_MULT)
    mesh = sharding.make_mesh(jax.devices()[:1])
    images, observed, k = synthetic_batch(batch, size, num_classes)
    on_device = sharding.batch_sharded(mesh)
    return JaxSetup(
        model,
        steps.create_state(model, tx, size, 0, mesh),
        jax.device_put(images, on_device),
        jax.device_put(observed, on_device),
        jnp.asarray([k], jnp.int32),  # one selection group: the trainer's shape at group_size 0
        steps.jit_train_step(model, tx, schemes.create(SCHEME).loss, mesh),
        mesh,
    )


def measure_jax(spec: dict) -> Row:
    row = Row(
        spec["variant"],
        spec["batch"],
        "bf16" if spec["variant"].startswith("jax-bf16") else "fp32",
        environment=jax_environment(),
    )
    s = jax_setup(spec["variant"], spec["batch"], **spec["model"])
    start = time.perf_counter()
    compiled = s.step.lower(s.state, s.images, s.observed, s.k).compile()
    compile_s = time.perf_counter() - start
    state = s.state

    def train_once():
        nonlocal state
        state, metrics, _ = compiled(state, s.images, s.observed, s.k)
        return metrics["loss"]

    seconds, warm = median_seconds(
        train_once, jax.block_until_ready, spec["warmup"], spec["steps"], spec["repeats"]
    )
    row.train_ms, row.compile_s = 1000 * seconds, compile_s + warm
    if spec["eval"]:
        variables = state.model_vars()
        predict = steps.jit_eval_step(s.model, s.mesh).lower(variables, s.images, s.observed).compile()
        seconds, _ = median_seconds(
            lambda: predict(variables, s.images, s.observed),
            jax.block_until_ready,
            spec["warmup"],
            spec["steps"],
            spec["repeats"],
        )
        row.eval_ms = 1000 * seconds
    if spec["profile_dir"]:
        with jax.profiler.trace(spec["profile_dir"], create_perfetto_trace=True):
            for _ in range(3):
                jax.block_until_ready(train_once())
        row.profile = profile_summary(spec["profile_dir"])
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use") or _xla_planned_peak(compiled)
    row.peak_gib = None if peak is None else peak / 2**30
    return row


def _xla_planned_peak(compiled) -> float | None:
    """Arguments + outputs - donated aliases + temporaries of a compiled program."""
    try:
        m = compiled.memory_analysis()
        return float(
            m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        )
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def profile_summary(trace_dir: str, top: int = 12) -> str:
    """Top ops, and op kinds (names without their .N suffix), by total time, from the perfetto
    trace that jax.profiler wrote."""
    paths = [
        os.path.join(d, f)
        for d, _, files in os.walk(trace_dir)
        for f in files
        if f == "perfetto_trace.json.gz"
    ]
    if not paths:
        return f"(no perfetto trace under {trace_dir})"
    with gzip.open(sorted(paths)[-1]) as f:
        events = json.load(f)["traceEvents"]
    meta = [e for e in events if e.get("ph") == "M"]
    processes = {e["pid"]: e["args"]["name"] for e in meta if e.get("name") == "process_name"}
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in meta if e.get("name") == "thread_name"}
    device = {pid for pid, name in processes.items() if name.startswith("/device:")}
    # On a device the trace has the same time at three levels: "XLA Modules" (whole programs),
    # "XLA Ops" (HLO ops) and "Stream #n" (kernels). Count the HLO ops, else the kernels; on the
    # CPU, the XLA threads without their executor wrappers.
    device_threads = {key: name for key, name in threads.items() if key[0] in device}
    wanted = ("XLA Ops",) if "XLA Ops" in device_threads.values() else ("Stream",)

    def counted(e):
        name = threads.get((e["pid"], e.get("tid")), "python")
        if device:
            return e["pid"] in device and name.startswith(wanted)
        return name != "python" and not e["name"].startswith(("ThunkExecutor", "$", "PjitFunction"))

    totals: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and counted(e):
            totals[e["name"]] = totals.get(e["name"], 0.0) + float(e.get("dur", 0.0))
    total = sum(totals.values()) or 1.0
    level = f"device, {wanted[0]}" if device else "host XLA threads"
    lines = [f"top ops by time ({level}, 3 steps, {trace_dir}):"]
    for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {us / 3000:8.2f} ms/step {100 * us / total:5.1f}%  {name[:100]}")
    kinds: dict[str, float] = {}
    for name, us in totals.items():
        kind = re.sub(r"[._]\d+$", "", name.split(" ")[0].split("(")[0])
        kinds[kind] = kinds.get(kind, 0.0) + us
    ranked = sorted(kinds.items(), key=lambda kv: -kv[1])[:8]
    lines.append("by kind: " + ", ".join(f"{k} {100 * us / total:.0f}%" for k, us in ranked))
    return "\n".join(lines)
