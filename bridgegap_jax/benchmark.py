"""Training-step and eval throughput: our JAX step against the PyTorch reference step, same device.

    python -m bridgegap_jax.benchmark                                  # ResNet-50, 80 classes, 448
    python -m bridgegap_jax.benchmark --depth=101 --num-classes=5000 --run=torch-ref:16 --run=jax-bf16:64,128
    python -m bridgegap_jax.benchmark --tiny                           # CPU smoke run (ResNet-18, 32x32)

Each `--run VARIANT:BATCH,BATCH,...` times the training step (forward, BoostLU, LL-R loss at
epoch 3 with k from `losses.num_large_losses`, backward, Adam with the 10x head) on synthetic data
already on the device; warm-up steps (compilation) are excluded; the time is the median of
`--repeats` timings of `--steps` steps each, ended by block_until_ready / cuda.synchronize. For
each variant the eval (forward only, eval-mode BN) throughput is then measured at its best
training batch. Variants:

    torch-ref    the reference as shipped: torchvision model, float32 (PyTorch defaults, i.e.
                 TF32 convolutions on Ampere and later), NCHW, eager, Adam (foreach default)
    torch-amp    + bf16 autocast and channels_last, fused Adam
    torch-best   + torch.compile of the model
    jax-fp32     our model and optax Adam in one jitted step, float32 (XLA's default precision,
                 TF32 on GPUs that have it), state donated
    jax-bf16     the same with a bfloat16 trunk (parameters, BN statistics, head, loss: float32)

Inputs: JAX gets uint8 NHWC images and normalises on the device, as training does; PyTorch gets
ImageNet-normalised float32 NCHW tensors, as the reference's DataLoader delivers them.

Peak memory: PyTorch's `max_memory_allocated` per row; for JAX, XLA's planned peak of the compiled
step (arguments + outputs - donated aliases + temporaries) per row, because the device's
`peak_bytes_in_use` only grows over a process (printed once at the end). FLOPs come from XLA's
cost analysis of the step (the same model, so they are used for the PyTorch rows too).

This module imports neither TensorFlow nor ml_collections, nor `train` (which needs
ml_collections): a GPU machine with jax, flax, optax and torch runs it. torch is imported only
for torch-* variants.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import gzip
import json
import os
import re
import statistics
import sys
import time
from typing import Callable

# Share the GPU with PyTorch: without this, JAX takes 75% of the memory when it starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bridgegap_jax import losses  # noqa: E402
from bridgegap_jax.models import CAMClassifier  # noqa: E402

VARIANTS = ("torch-ref", "torch-amp", "torch-best", "jax-fp32", "jax-bf16")
SCHEME, EPOCH, UNOBSERVED = "LL-R", 3, 0
LR, HEAD_LR_MULT = 1e-5, 10.0


@dataclasses.dataclass
class Row:
    variant: str
    batch: int
    precision: str
    train_ms: float | None = None  # median ms per step
    compile_s: float | None = None  # first call(s): compilation and warm-up
    peak_bytes: float | None = None
    eval_images_per_s: float | None = None
    flops_per_step: float | None = None
    error: str | None = None
    profile: str | None = None  # top ops by time (JAX rows with --profile)

    @property
    def images_per_s(self) -> float | None:
        return None if self.train_ms is None else 1000.0 * self.batch / self.train_ms


def median_seconds(run: Callable[[], object], sync: Callable[[object], None], warmup: int, steps: int, repeats: int) -> tuple[float, float]:
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


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """uint8 images, single-positive observed labels (0 = unobserved), and k of LL-R at epoch 3."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    observed = np.zeros((batch, num_classes), np.int32)
    observed[np.arange(batch), rng.integers(0, num_classes, batch)] = 1
    k = losses.num_large_losses(SCHEME, EPOCH, batch, num_classes, losses.DEFAULT_DELTA_REL[SCHEME])
    return images, observed, k


# ----------------------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------------------
def make_optimizer(lr: float = LR, head_lr_mult: float = HEAD_LR_MULT) -> optax.GradientTransformation:
    """Adam, the CAM head at head_lr_mult x lr: the same transformation as train.make_optimizer."""

    def labels(params):
        return {name: jax.tree.map(lambda _: "head" if name == "head" else "trunk", sub) for name, sub in params.items()}

    adam = lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)  # noqa: E731
    return optax.multi_transform({"trunk": adam(lr), "head": adam(lr * head_lr_mult)}, labels)


def jax_train_step(state: dict, images, observed, k, *, model: CAMClassifier, tx) -> tuple[dict, jax.Array]:
    """train.train_step on a plain dict state (same forward, loss, backward and update)."""

    def loss_fn(params):
        (logits, _), updated = model.apply(
            {"params": params, "batch_stats": state["batch_stats"]}, images, train=True, mutable=["batch_stats"]
        )
        out = losses.large_loss(logits, observed, k, scheme=SCHEME, unobserved_value=UNOBSERVED)
        return out.loss, updated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats, "opt_state": opt_state}, loss


def _xla_peak(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        return float(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])
    except Exception:  # noqa: BLE001
        return None


def run_jax(variant: str, batch: int, args) -> Row:
    dtype = {"jax-fp32": jnp.float32, "jax-bf16": jnp.bfloat16}[variant]
    row = Row(variant, batch, "bf16" if dtype == jnp.bfloat16 else "fp32")
    model = CAMClassifier(num_classes=args.num_classes, depth=args.depth, alpha=args.alpha, dtype=dtype)
    tx = make_optimizer()
    images, observed, k = synthetic_batch(batch, args.size, args.num_classes)
    images, observed, k = jax.device_put(images), jax.device_put(observed), jnp.asarray(k, jnp.int32)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3), jnp.uint8)))()
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": jax.jit(tx.init)(variables["params"])}
    del variables
    start = time.perf_counter()
    step = jax.jit(lambda s, x, y, k: jax_train_step(s, x, y, k, model=model, tx=tx), donate_argnums=0)
    compiled = step.lower(state, images, observed, k).compile()
    compile_s = time.perf_counter() - start
    row.peak_bytes, row.flops_per_step = _xla_peak(compiled), _xla_flops(compiled)

    def train_once():
        nonlocal state
        state, loss = compiled(state, images, observed, k)
        return loss

    seconds, warm = median_seconds(train_once, jax.block_until_ready, args.warmup, args.steps, args.repeats)
    row.train_ms, row.compile_s = 1000 * seconds, compile_s + warm
    jax.block_until_ready(state)

    def profile(directory: str) -> str:
        row_dir = os.path.join(directory, f"{variant}_b{batch}")
        with jax.profiler.trace(row_dir, create_perfetto_trace=True):
            for _ in range(3):
                jax.block_until_ready(train_once())
        return profile_summary(row_dir)

    row._eval = lambda: _jax_eval(model, state, images, args)  # measured later, for the best batch only
    row._profile = profile
    return row


def _jax_eval(model, state, images, args) -> float:
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    predict = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)[0])).lower(variables, images).compile()
    seconds, _ = median_seconds(lambda: predict(variables, images), jax.block_until_ready, args.warmup, args.steps, args.repeats)
    return images.shape[0] / seconds


def profile_summary(trace_dir: str, top: int = 15) -> str:
    """Top ops, and op kinds (names without their .N suffix), by total time, from the perfetto
    trace that jax.profiler wrote."""
    paths = [os.path.join(d, f) for d, _, files in os.walk(trace_dir) for f in files if f == "perfetto_trace.json.gz"]
    if not paths:
        return f"(no perfetto trace under {trace_dir})"
    with gzip.open(sorted(paths)[-1]) as f:
        events = json.load(f)["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
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
        lines.append(f"  {us / 3000:8.2f} ms/step {100 * us / total:5.1f}%  {name[:110]}")
    kinds: dict[str, float] = {}
    for name, us in totals.items():
        kind = re.sub(r"[._]\d+$", "", name.split(" ")[0].split("(")[0])
        kinds[kind] = kinds.get(kind, 0.0) + us
    lines.append("by kind: " + ", ".join(f"{k} {100 * us / total:.0f}%" for k, us in sorted(kinds.items(), key=lambda kv: -kv[1])[:8]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# PyTorch
# ----------------------------------------------------------------------------------------------
def run_torch(variant: str, batch: int, args) -> Row:
    import torch

    from bridgegap_jax import torch_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = variant in ("torch-amp", "torch-best")
    row = Row(variant, batch, "bf16 autocast" if amp else "fp32")
    memory_format = torch.channels_last if amp else torch.contiguous_format
    torch.manual_seed(0)
    model = torch_reference.CAMClassifier(args.depth, args.num_classes, args.alpha).to(device, memory_format=memory_format)
    optimizer = torch_reference.make_optimizer(model, LR, HEAD_LR_MULT, fused=True if amp and device.type == "cuda" else None)
    net = torch.compile(model) if variant == "torch-best" else model
    images, observed, k = synthetic_batch(batch, args.size, args.num_classes)
    x = torch_reference.normalize_uint8(images).to(device).contiguous(memory_format=memory_format)
    y = torch.as_tensor(observed).to(device)
    autocast = torch.bfloat16 if amp else None
    sync = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else (lambda _: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def train_once():
        model.train()
        return torch_reference.train_step(net, optimizer, x, y, k, scheme=SCHEME, unobserved_value=UNOBSERVED,
                                          autocast_dtype=autocast)

    seconds, warm = median_seconds(train_once, sync, args.warmup, args.steps, args.repeats)
    row.train_ms, row.compile_s = 1000 * seconds, warm
    if device.type == "cuda":
        row.peak_bytes = float(torch.cuda.max_memory_allocated())

    def evaluate() -> float:
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.float32, enabled=amp):
            seconds, _ = median_seconds(lambda: torch.sigmoid(net(x)[0]), sync, args.warmup, args.steps, args.repeats)
        return batch / seconds

    row._eval = evaluate  # measured later, for the best batch only
    return row


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[Row], header: str, flops_per_image: float | None) -> str:
    baseline = next((r for r in rows if r.variant == "torch-ref" and r.images_per_s), None)
    lines = [header, "",
             "| variant | batch | precision | train ms/step | train img/s | vs torch-ref | eval img/s | peak GiB | TFLOP/s | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.variant} | {r.batch} | {r.precision} | {r.error} | | | | | | |")
            continue
        ratio = f"{r.images_per_s / baseline.images_per_s:.2f}x" if baseline else "-"
        tflops = (flops_per_image * r.images_per_s / 1e12) if flops_per_image and r.images_per_s else None
        peak = None if r.peak_bytes is None else r.peak_bytes / 2**30
        lines.append(f"| {r.variant} | {r.batch} | {r.precision} | {_fmt(r.train_ms, '.1f')} | {_fmt(r.images_per_s, ',.0f')} | "
                     f"{ratio} | {_fmt(r.eval_images_per_s, ',.0f')} | {_fmt(peak, '.2f')} | {_fmt(tflops, '.3g')} | {_fmt(r.compile_s, '.1f')} |")
    best = best_rows(rows)
    if best:
        lines += ["", "Best batch of each variant, and each JAX variant against each PyTorch variant (images/s ratio):", ""]
        torch_best = [r for r in best.values() if r.variant.startswith("torch")]
        for r in best.values():
            if r.variant.startswith("jax"):
                for t in torch_best:
                    lines.append(f"- {r.variant} b{r.batch} ({r.images_per_s:,.0f} img/s) vs {t.variant} b{t.batch} "
                                 f"({t.images_per_s:,.0f} img/s): **{r.images_per_s / t.images_per_s:.2f}x**")
        same = [(j, t) for j in rows for t in rows if j.variant.startswith("jax") and t.variant.startswith("torch")
                and j.batch == t.batch and j.images_per_s and t.images_per_s]
        lines += [f"- same batch {j.batch}: {j.variant} vs {t.variant}: {j.images_per_s / t.images_per_s:.2f}x" for j, t in same]
    return "\n".join(lines)


def best_rows(rows: list[Row]) -> dict[str, Row]:
    best: dict[str, Row] = {}
    for r in rows:
        if r.images_per_s and (r.variant not in best or r.images_per_s > best[r.variant].images_per_s):
            best[r.variant] = r
    return best


def parse_target(text: str) -> tuple[str, int | None, str, int | None, float]:
    """'jax-bf16:16/torch-ref:16>=2.0' -> (variant, batch, variant, batch, ratio); no batch = best batch."""
    m = re.fullmatch(r"([a-z0-9-]+)(?::(\d+))?/([a-z0-9-]+)(?::(\d+))?>=([0-9.]+)", text)
    if not m or m.group(1) not in VARIANTS or m.group(3) not in VARIANTS:
        raise argparse.ArgumentTypeError(f"--target {text!r}: expected VARIANT[:BATCH]/VARIANT[:BATCH]>=RATIO, e.g. jax-bf16:16/torch-ref:16>=2.0")
    return m.group(1), m.group(2) and int(m.group(2)), m.group(3), m.group(4) and int(m.group(4)), float(m.group(5))


def target_lines(rows: list[Row], targets) -> list[str]:
    def pick(variant, batch):
        candidates = [r for r in rows if r.variant == variant and r.images_per_s and (batch is None or r.batch == batch)]
        return max(candidates, key=lambda r: r.images_per_s, default=None)

    lines = []
    for a, batch_a, b, batch_b, ratio in targets:
        ra, rb = pick(a, batch_a), pick(b, batch_b)
        spec = f"{a}{':' + str(batch_a) if batch_a else ' (best batch)'} / {b}{':' + str(batch_b) if batch_b else ' (best batch)'} >= {ratio}x"
        if ra is None or rb is None:
            lines.append(f"- target {spec}: NOT MEASURED (a row is missing or failed)")
        else:
            got = ra.images_per_s / rb.images_per_s
            lines.append(f"- target {spec}: {ra.variant} b{ra.batch} {ra.images_per_s:,.0f} img/s vs {rb.variant} b{rb.batch} "
                         f"{rb.images_per_s:,.0f} img/s = **{got:.2f}x**, {'MET' if got >= ratio else 'NOT MET'}")
    return lines


def parse_run(text: str) -> tuple[str, list[int]]:
    variant, _, batches = text.partition(":")
    if variant not in VARIANTS or not batches:
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected VARIANT:BATCH[,BATCH...] with VARIANT one of {VARIANTS}")
    try:
        return variant, [int(b) for b in batches.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--run {text!r}: batches must be integers") from None


def _is_oom(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}"
    return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text.lower()


def environment() -> str:
    lines = [f"python {sys.version.split()[0]}, jax {jax.__version__} ({jax.default_backend()}: {jax.devices()[0].device_kind})"]
    if "torch" in sys.modules:
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        lines.append(f"torch {torch.__version__} ({name}; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                     f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32})")
    return "; ".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridgegap_jax.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth (18, 34, 50, 101, 152)")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--size", type=int, default=448, help="image height = width")
    parser.add_argument("--alpha", type=float, default=5.0, help="BoostLU factor")
    parser.add_argument("--run", type=parse_run, action="append", metavar="VARIANT:B1,B2",
                        help=f"a variant and its batch sizes (repeatable); variants {', '.join(VARIANTS)}; "
                             "default torch-ref:16 torch-amp:16,64 torch-best:64,128 jax-fp32:16 jax-bf16:16,64,128,256")
    parser.add_argument("--target", type=parse_target, action="append", default=[], metavar="A[:B]/C[:D]>=R",
                        help="report whether variant A at batch B reaches R x the images/s of variant C at batch D "
                             "(repeatable; no batch = that variant's best), e.g. jax-bf16:16/torch-ref:16>=2.0")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                        help="also time eval (forward only) at each variant's best training batch")
    parser.add_argument("--profile", default="", help="directory: trace 3 training steps of each JAX variant at its best batch "
                                                      "and print the top ops by time")
    parser.add_argument("--markdown", default="", help="append the table to this file (FILE.partial holds it while running)")
    parser.add_argument("--title", default="", help="heading of the table")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke run: ResNet-18, 32x32, 10 classes, 1 warm-up, 2 steps, 2 repeats (overrides those "
                             "flags); unless --run is given, batch 2 of every variant but torch-best")
    args = parser.parse_args(argv)
    if args.tiny:
        args.depth, args.size, args.num_classes, args.steps, args.repeats, args.warmup = 18, 32, 10, 2, 2, 1
        args.run = args.run or [(v, [2]) for v in ("torch-ref", "torch-amp", "jax-fp32", "jax-bf16")]
    runs = args.run or [("torch-ref", [16]), ("torch-amp", [16, 64]), ("torch-best", [64, 128]),
                        ("jax-fp32", [16]), ("jax-bf16", [16, 64, 128, 256])]
    # PyTorch first: JAX's allocator keeps what it has taken, PyTorch's empty_cache gives it back.
    runs = sorted(runs, key=lambda r: not r[0].startswith("torch"))

    if any(v.startswith("torch") for v, _ in runs):
        import torch

        if torch.cuda.is_available() and jax.default_backend() != "gpu" and any(v.startswith("jax") for v, _ in runs):
            print(f"error: PyTorch sees a GPU but JAX runs on {jax.default_backend()}: the two would not be timed on the "
                  "same device (install jax with its CUDA plugin, or check JAX_PLATFORMS)", file=sys.stderr)
            return 1
    title = args.title or f"ResNet-{args.depth}, {args.num_classes} classes, {args.size}x{args.size}, {SCHEME} + BoostLU alpha {args.alpha}"
    print(f"{title}\n{environment()}", flush=True)
    rows: list[Row] = []

    def save_partial():  # what is done so far survives a timeout
        if args.markdown:
            with open(args.markdown + ".partial", "w") as f:
                f.write(table(rows, f"### {title} (partial)", None) + "\n")

    for variant, batches in runs:
        for batch in batches:
            try:
                row = run_torch(variant, batch, args) if variant.startswith("torch") else run_jax(variant, batch, args)
            except Exception as e:  # noqa: BLE001 - an OOM row is a result; anything else is re-raised
                if not _is_oom(e):
                    raise
                row = Row(variant, batch, "", error="out of memory")
            rows.append(row)
            print(f"{row.variant} batch {row.batch}: {_fmt(row.train_ms, '.2f')} ms/step, {_fmt(row.images_per_s, ',.1f')} img/s"
                  f"{' (' + row.error + ')' if row.error else ''}", flush=True)
            best = best_rows([r for r in rows if r.variant == variant]).get(variant)
            for r in rows:  # keep the model and state of the best row of this variant only
                if r is not best:
                    r.__dict__.pop("_eval", None)
                    r.__dict__.pop("_profile", None)
            save_partial()
        best = best_rows([r for r in rows if r.variant == variant]).get(variant)
        if best is not None and args.eval:
            try:
                best.eval_images_per_s = best._eval()
            except Exception as e:  # noqa: BLE001
                if not _is_oom(e):
                    raise
            print(f"{variant} eval batch {best.batch}: {_fmt(best.eval_images_per_s, ',.1f')} img/s", flush=True)
        if best is not None and args.profile and hasattr(best, "_profile"):
            best.profile = best._profile(args.profile)
            print(best.profile, flush=True)
        save_partial()
        for r in rows:  # free the models and states of this variant before the next
            r.__dict__.pop("_eval", None)
            r.__dict__.pop("_profile", None)
        gc.collect()
        if variant.startswith("torch"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    flops = next((r.flops_per_step / r.batch for r in rows if r.flops_per_step), None)
    stats = jax.devices()[0].memory_stats() or {}
    footer = [f"Environment: {environment()}.",
              f"Timing: median of {args.repeats} x {args.steps} steps after {args.warmup} warm-up steps; synthetic data on the device.",
              f"JAX device peak_bytes_in_use over the whole process: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB."
              if "peak_bytes_in_use" in stats else "JAX device peak_bytes_in_use: not reported by this backend."]
    if flops:
        footer.append(f"XLA cost analysis: {flops / 1e9:.1f} GFLOP per image per training step.")
    profiles = [f"```\n{r.profile}\n```" for r in rows if r.profile]
    targets = ["\n".join(target_lines(rows, args.target))] if args.target else []
    text = "\n\n".join([table(rows, f"### {title}", flops)] + targets + ["\n".join(footer)] + profiles) + "\n"
    print("\n" + text, flush=True)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n")
        os.remove(args.markdown + ".partial")
    return 0


if __name__ == "__main__":
    sys.exit(main())
