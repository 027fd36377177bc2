"""Training-step and eval throughput: our JAX step against the PyTorch reference, one process per row.

    python -m bridgegap_jax.benchmark              # ResNet-50, 80 classes, 448: the default pairings
    python -m bridgegap_jax.benchmark --depth=101 --num-classes=5000 --run=torch-ref:16 --run=jax-bf16:128
    python -m bridgegap_jax.benchmark --run=jax-bf16:128 --run=jax-bf16+fused-bn:128   # an option off / on
    python -m bridgegap_jax.benchmark --tiny       # CPU smoke run: ResNet-18 at 32x32, 10 classes

Rows. `--run VARIANT:B1,B2,...` times VARIANT at each batch size; rows run in the order given,
each in a fresh Python process (`--child`), so PyTorch and JAX never share a process or GPU memory
and every row starts from an empty allocator. A row measures the training step (forward, BoostLU,
LL-R loss at epoch 3 with the scheme's k, backward, Adam with the 10x head) on synthetic data
already on the device: compilation and `--warmup` steps excluded, the median of `--repeats`
timings of `--steps` steps, each ended by block_until_ready / cuda.synchronize. At the batches of
`--eval-at` it also times eval (forward in eval mode, sigmoid), and at those of `--profile-at`
(JAX rows) it traces 3 steps and keeps the top XLA ops by time. With `--budget` the rows share a
wall-clock budget: a row still running at its end is stopped, the rows not started are listed as
skipped, and the table is printed with what was measured.

Variants:

    torch-ref    the reference as shipped: torchvision model, float32 (PyTorch defaults, i.e.
                 TF32 convolutions on Ampere and later), NCHW, eager, Adam (foreach default)
    torch-amp    + bf16 autocast, channels_last, fused Adam, cudnn.benchmark
    torch-best   + torch.compile of the model (PyTorch's best setup)
    jax-fp32     our training step (steps.py: the one training runs), float32 (XLA's default
                 precision: TF32 on GPUs that have it), state donated
    jax-bf16     the same with a bfloat16 trunk (parameters, BN statistics, head, loss: float32)

A JAX variant takes options, `jax-bf16+OPTION+...`, each the same function up to float rounding:
model options (steps.make_model keyword in brackets) `fused-bn` (batch_norm=fused: BatchNorm,
residual add and ReLU as one op with its own backward), `strided-pool` (max_pool=strided: the
stem's max-pool as 9 strided slices, no select-and-scatter), `s2d-stem` (stem=space_to_depth:
the 7x7/2 stem conv as 4x4/1 on 2x2 blocks), `bf16-head` (head_dtype=bfloat16: the CAM head's
matmul in bf16, float32 sums); XLA options `xla-NAME` with NAME a preset of xla_options.py.

Inputs: JAX gets uint8 NHWC images and normalises on the device, as training does; PyTorch gets
ImageNet-normalised float32 NCHW tensors, as the reference's DataLoader delivers them.

FLOPs and utilisation: FLOPs are analytic (flops.py: the model's convolution and matmul MACs x 2,
training = 3 x forward; ResNet-50 at 448 with 80 classes: 98.3 GFLOP per image per training
step), the same for every row. Utilisation = FLOPs per image x images/s / the device's bf16
matmul peak, measured first in its own process (an 8192^3 bf16 matmul on a GPU). Peak memory:
PyTorch's max_memory_allocated; JAX's peak_bytes_in_use of the row's process (XLA's planned peak
of the step where the device does not report it).

The parent process imports neither PyTorch nor TensorFlow and uses no device; without PyTorch the
JAX rows still run and the PyTorch rows are listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

from bridgegap_jax import xla_options

TORCH_VARIANTS = ("torch-ref", "torch-amp", "torch-best")
JAX_VARIANTS = ("jax-fp32", "jax-bf16")
MODEL_OPTIONS = {
    "fused-bn": {"batch_norm": "fused"},
    "strided-pool": {"max_pool": "strided"},
    "s2d-stem": {"stem": "space_to_depth"},
    "bf16-head": {"head_dtype": "bfloat16"},
}
XLA_PREFIX = "xla-"
SCHEME, EPOCH = "LL-R", 3
LR, HEAD_LR_MULT = 1e-5, 10.0
ROW_MARK = "@@benchmark-row "  # the child's last line: this, then the row as JSON
SKIP_WHEN_LEFT_S = 10.0  # with --budget: a row is not started with less time left than this

# The default pairings (ResNet-50, 80 classes, 448): the goals' rows first, then the options.
DEFAULT_RUNS = [
    "torch-ref:16",
    "jax-bf16:16",
    "jax-bf16:128",
    "torch-best:128",
    "jax-bf16:256",
    "torch-best:256",
    "jax-bf16+fused-bn+strided-pool+s2d-stem:128",
    "jax-bf16+fused-bn:128",
    "jax-bf16+strided-pool:128",
    "jax-bf16+s2d-stem:128",
    "jax-bf16+xla-conv-fusion:128",
    "jax-fp32:16",
    "torch-amp:128",
]
DEFAULT_TARGETS = ["jax-bf16*:16/torch-ref:16>=2.5", "jax-bf16*/torch-best>=1.2"]
DEFAULT_EVAL_TARGETS = ["jax-bf16*/torch-best>=1.2"]


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


def split_variant(variant: str) -> tuple[str, list[str]]:
    """'jax-bf16+fused-bn+xla-nhwc' -> ('jax-bf16', ['fused-bn', 'xla-nhwc']), checked."""
    base, *options = variant.split("+")
    if base not in TORCH_VARIANTS + JAX_VARIANTS:
        raise ValueError(
            f"variant {variant!r}: {base!r} is not one of {', '.join(TORCH_VARIANTS + JAX_VARIANTS)}"
        )
    if options and base not in JAX_VARIANTS:
        raise ValueError(f"variant {variant!r}: options apply to the JAX variants only")
    known = list(MODEL_OPTIONS) + [XLA_PREFIX + name for name in xla_options.PRESETS]
    unknown = [o for o in options if o not in known]
    if unknown:
        raise ValueError(
            f"variant {variant!r}: unknown option(s) {', '.join(unknown)}; options: {', '.join(known)}"
        )
    return base, options


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

    from bridgegap_jax import schemes

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    observed = np.zeros((batch, num_classes), np.int32)
    observed[np.arange(batch), rng.integers(0, num_classes, batch)] = 1
    return images, observed, schemes.create(SCHEME).num_large_losses(EPOCH, batch, num_classes)


def _is_oom(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text.lower()


# ----------------------------------------------------------------------------------------------
# Child processes: the bf16 matmul peak, a JAX row, a PyTorch row
# ----------------------------------------------------------------------------------------------
def measure_peak() -> dict:
    """bf16 matmul FLOP/s of the default device (the best of 5 timings of 10 square matmuls)."""
    import jax
    import jax.numpy as jnp

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
    import flax
    import jax
    import optax

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
    import jax
    import jax.numpy as jnp

    from bridgegap_jax import schemes, sharding, steps

    base, options = split_variant(variant)
    model_options = {k: v for o in options if o in MODEL_OPTIONS for k, v in MODEL_OPTIONS[o].items()}
    model = steps.make_model(
        num_classes,
        depth=depth,
        width=width,
        alpha=alpha,
        dtype="bfloat16" if base == "jax-bf16" else "float32",
        **model_options,
    )
    tx = steps.make_optimizer(LR, HEAD_LR_MULT)
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
    import jax

    from bridgegap_jax import steps

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


def measure_torch(spec: dict) -> Row:
    variant, batch, m = spec["variant"], spec["batch"], spec["model"]
    amp = variant in ("torch-amp", "torch-best")
    row = Row(variant, batch)
    try:
        import torch
        import torchvision  # noqa: F401 - the reference model

        from bridgegap_jax import torch_reference
    except ImportError as e:
        row.note, row.skipped = f"skipped: PyTorch is not installed ({e})", True
        return row

    row.precision = "bf16 autocast" if amp else "fp32"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    row.environment = (
        f"torch {torch.__version__} on {name} (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
        f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32})"
    )
    torch.backends.cudnn.benchmark = amp  # the reference leaves it off; the tuned setups turn it on
    memory_format = torch.channels_last if amp else torch.contiguous_format
    torch.manual_seed(0)
    model = torch_reference.CAMClassifier(m["depth"], m["num_classes"], m["alpha"])
    model = model.to(device, memory_format=memory_format)
    fused = True if amp and device.type == "cuda" else None
    optimizer = torch_reference.make_optimizer(model, LR, HEAD_LR_MULT, fused=fused)
    net = torch.compile(model) if variant == "torch-best" else model
    images, observed, k = synthetic_batch(batch, m["size"], m["num_classes"])
    x = torch_reference.normalize_uint8(images).to(device).contiguous(memory_format=memory_format)
    y = torch.as_tensor(observed).to(device)
    autocast = torch.bfloat16 if amp else None
    sync = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else (lambda _: None)

    def train_once():
        model.train()
        return torch_reference.train_step(
            net, optimizer, x, y, k, scheme=SCHEME, unobserved_value=0, autocast_dtype=autocast
        )

    seconds, warm = median_seconds(train_once, sync, spec["warmup"], spec["steps"], spec["repeats"])
    row.train_ms, row.compile_s = 1000 * seconds, warm
    if device.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    if spec["eval"]:
        model.eval()
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=autocast or torch.float32, enabled=amp),
        ):
            seconds, _ = median_seconds(
                lambda: torch.sigmoid(net(x)[0]), sync, spec["warmup"], spec["steps"], spec["repeats"]
            )
        row.eval_ms = 1000 * seconds
    return row


def child_main(spec: dict) -> int:
    """Measure one thing and print it as the last line: ROW_MARK + JSON."""
    if spec["kind"] == "peak":
        result = measure_peak()
    else:
        measure = measure_torch if spec["variant"] in TORCH_VARIANTS else measure_jax
        try:
            result = dataclasses.asdict(measure(spec))
        except Exception as e:  # noqa: BLE001 - a failed row is a result; the traceback goes to the log
            import traceback

            traceback.print_exc()
            note = (
                "out of memory"
                if _is_oom(e)
                else f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            )
            result = dataclasses.asdict(Row(spec["variant"], spec["batch"], note=note))
    print(ROW_MARK + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# The parent: runs the children, prints the table
# ----------------------------------------------------------------------------------------------
_CHILDREN: set[int] = set()  # process groups of the running children


def _stop_children_and_exit(signum, frame):
    """On SIGTERM (an outer timeout): stop the running child too, it has a session of its own."""
    for pid in list(_CHILDREN):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(128 + signum)


def run_child(spec: dict, timeout: float, env: dict) -> tuple[dict | None, str, bool]:
    """(the child's result or None, its output, whether it was stopped at the timeout)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(env, PYTHONPATH=os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p))
    command = [sys.executable, "-m", "bridgegap_jax.benchmark", "--child", json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as log:
        # A session of its own: a timeout stops the child's helpers too (torch.compile's workers).
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        _CHILDREN.add(child.pid)
        try:
            child.wait(timeout=max(timeout, 1.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            timed_out = True
        finally:
            _CHILDREN.discard(child.pid)
        log.seek(0)
        output = log.read()
    marked = [line for line in output.splitlines() if line.startswith(ROW_MARK)]
    return (json.loads(marked[-1][len(ROW_MARK) :]) if marked else None), output, timed_out


def _tail(output: str, lines: int = 12) -> str:
    return "\n".join("    | " + line for line in output.strip().splitlines()[-lines:])


class Runner:
    """Runs the rows in order within the budget; remembers that PyTorch is missing once it is."""

    def __init__(self, args, start: float):
        self.args = args
        self.deadline = start + args.budget if args.budget else None
        self.no_torch = ""

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def peak(self) -> dict | None:
        result, output, _ = run_child({"kind": "peak"}, min(180.0, self.left()), dict(os.environ))
        if result is None:
            print(f"bf16 matmul peak: not measured\n{_tail(output)}", flush=True)
        return result

    def row(self, variant: str, batch: int) -> Row:
        a = self.args
        if variant in TORCH_VARIANTS and self.no_torch:
            return Row(variant, batch, note=self.no_torch, skipped=True)
        if a.tiny and variant == "torch-best":
            return Row(
                variant,
                batch,
                note="skipped: torch.compile is not timed by --tiny (minutes of C++ compilation on a CPU)",
                skipped=True,
            )
        if self.left() < SKIP_WHEN_LEFT_S:
            return Row(variant, batch, note="skipped: time budget spent", skipped=True)
        spec = {
            "kind": "row",
            "variant": variant,
            "batch": batch,
            "steps": a.steps,
            "repeats": a.repeats,
            "warmup": a.warmup,
            "eval": batch in a.eval_at,
            "profile_dir": "",
            "model": {"depth": a.depth, "num_classes": a.num_classes, "size": a.size, "alpha": a.alpha},
        }
        env = dict(os.environ)
        if variant not in TORCH_VARIANTS:
            if batch in a.profile_at:
                spec["profile_dir"] = os.path.join(a.profile_dir, f"{variant}_b{batch}_{os.getpid()}")
            env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *xla_flags_of(variant)]).strip()
        budget_first = self.left() < a.row_timeout  # a timeout is then the budget's end
        result, output, timed_out = run_child(spec, min(a.row_timeout, self.left()), env)
        if result is None:
            if timed_out and budget_first:
                return Row(variant, batch, note="stopped: time budget spent")
            why = f"timed out after {a.row_timeout:.0f} s" if timed_out else "failed (no result)"
            print(f"{variant} batch {batch}: {why}\n{_tail(output)}", flush=True)
            return Row(variant, batch, note=why)
        row = Row(**result)
        if row.note.startswith("failed"):
            print(_tail(output), flush=True)
        if variant in TORCH_VARIANTS and row.skipped:
            self.no_torch = row.note
        return row


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[Row], header: str, flops: dict, peak_flops: float | None) -> str:
    reference = next((r for r in rows if r.variant == "torch-ref" and r.images_per_s), None)
    ref_name = f"vs torch-ref b{reference.batch}" if reference else "vs torch-ref"
    lines = [
        header,
        "",
        f"| variant | batch | precision | train ms/step | train img/s | {ref_name} | train util | eval img/s "
        "| eval util | peak GiB | compile s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def util(kind: str, images_per_s) -> str:
        if not (peak_flops and images_per_s):
            return "-"
        return f"{100 * flops[kind] * images_per_s / peak_flops:.1f}%"

    for r in rows:
        ratio = f"{r.images_per_s / reference.images_per_s:.2f}x" if reference and r.images_per_s else "-"
        lines.append(
            f"| {r.variant} | {r.batch} | {r.precision or '-'} | {_fmt(r.train_ms, '.1f')} | "
            f"{_fmt(r.images_per_s, ',.0f')} | {ratio} | {util('train', r.images_per_s)} | "
            f"{_fmt(r.eval_images_per_s, ',.0f')} | {util('forward', r.eval_images_per_s)} | "
            f"{_fmt(r.peak_gib, '.2f')} | {_fmt(r.compile_s, '.0f')} | {r.note} |"
        )
    return "\n".join(lines)


def pairing_lines(rows: list[Row]) -> list[str]:
    """Ours against torch.compile at the same batch, and each option against its plain variant."""

    def measured(variant, batch):
        return next((r for r in rows if r.variant == variant and r.batch == batch and r.images_per_s), None)

    lines = []
    for t in (r for r in rows if r.variant == "torch-best" and r.images_per_s):
        for j in (
            r for r in rows if r.variant.startswith("jax-bf16") and r.batch == t.batch and r.images_per_s
        ):
            evals = ""
            if j.eval_images_per_s and t.eval_images_per_s:
                evals = f"; eval {j.eval_images_per_s / t.eval_images_per_s:.2f}x"
            lines.append(
                f"- b{t.batch}: {j.variant} {j.images_per_s:,.0f} img/s vs torch-best "
                f"{t.images_per_s:,.0f} img/s = **{j.images_per_s / t.images_per_s:.2f}x**{evals}"
            )
    for r in (r for r in rows if "+" in r.variant and r.images_per_s):
        plain = measured(r.variant.split("+")[0], r.batch)
        if plain:
            evals = ""
            if r.eval_images_per_s and plain.eval_images_per_s:
                evals = f", eval {r.eval_images_per_s / plain.eval_images_per_s:.3f}x"
            lines.append(
                f"- option {r.variant} b{r.batch} vs {plain.variant}: train "
                f"{r.images_per_s / plain.images_per_s:.3f}x{evals}"
            )
    return lines


class Target(NamedTuple):
    ours: str  # a variant, or a prefix ending in '*': the best of the variants that start with it
    ours_batch: int | None  # None: the best batch
    theirs: str
    theirs_batch: int | None
    ratio: float


def parse_target(text: str) -> Target:
    """'jax-bf16*:16/torch-ref:16>=2.5' -> Target; no batch = the best batch."""
    m = re.fullmatch(r"([a-z0-9+*-]+?)(?::(\d+))?/([a-z0-9+*-]+?)(?::(\d+))?>=([0-9.]+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"target {text!r}: expected VARIANT[:BATCH]/VARIANT[:BATCH]>=RATIO")
    for name in (m.group(1), m.group(3)):
        try:
            split_variant(name.rstrip("*"))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"target {text!r}: {e}") from None
    batch = lambda g: int(g) if g else None  # noqa: E731
    return Target(m.group(1), batch(m.group(2)), m.group(3), batch(m.group(4)), float(m.group(5)))


def _pick(rows: list[Row], name: str, batch: int | None, metric: str) -> Row | None:
    def matches(r):
        same = r.variant.startswith(name[:-1]) if name.endswith("*") else r.variant == name
        return same and (batch is None or r.batch == batch) and getattr(r, metric)

    return max((r for r in rows if matches(r)), key=lambda r: getattr(r, metric), default=None)


def _missing(rows: list[Row], name: str, batch: int | None) -> str:
    """'no NAME bB row (why)': the notes of the rows that were meant to give it."""
    prefix = name.rstrip("*")
    notes = sorted(
        {
            r.note
            for r in rows
            if r.note
            and (r.variant.startswith(prefix) if name.endswith("*") else r.variant == name)
            and batch in (None, r.batch)
        }
    )
    return f"no {name}{f' b{batch}' if batch else ''} row" + (f" ({'; '.join(notes)})" if notes else "")


def target_lines(rows: list[Row], targets: list[Target], metric: str, model: str = "") -> list[str]:
    """One line per target: MET / NOT MET / NOT MEASURED, the rows it compared, and, where an
    option won, what the defaults alone give."""
    lines = []
    for t in targets:

        def side(name, batch):
            best = " (best of its options)" if name.endswith("*") else ""
            return f"{name.rstrip('*')}{best}" + (f" b{batch}" if batch else " (best batch)")

        what = "eval" if metric == "eval_images_per_s" else "train"
        spec = f"{model}{what}: {side(t.ours, t.ours_batch)} / {side(t.theirs, t.theirs_batch)} >= {t.ratio}x"
        ours, theirs = (
            _pick(rows, t.ours, t.ours_batch, metric),
            _pick(rows, t.theirs, t.theirs_batch, metric),
        )
        if ours is None or theirs is None:
            missing = [
                _missing(rows, name, batch)
                for name, batch, row in ((t.ours, t.ours_batch, ours), (t.theirs, t.theirs_batch, theirs))
                if row is None
            ]
            lines.append(f"- **NOT MEASURED** {spec}: {'; '.join(missing)}")
            continue
        got = getattr(ours, metric) / getattr(theirs, metric)
        line = (
            f"- **{'MET' if got >= t.ratio else 'NOT MET'}** {spec}: {ours.variant} b{ours.batch} "
            f"{getattr(ours, metric):,.0f} img/s vs {theirs.variant} b{theirs.batch} "
            f"{getattr(theirs, metric):,.0f} img/s = **{got:.2f}x**"
        )
        plain = _pick(rows, t.ours.rstrip("*").split("+")[0], t.ours_batch, metric)
        if plain is not None and plain is not ours:
            ratio = getattr(plain, metric) / getattr(theirs, metric)
            line += f" (defaults only: {plain.variant} b{plain.batch} {ratio:.2f}x)"
        lines.append(line)
    return lines


def footer(args, rows: list[Row], flops: dict, peak: dict | None) -> list[str]:
    environments = sorted(
        {r.environment for r in rows if r.environment} | ({peak["environment"]} if peak else set())
    )
    lines = [
        f"Environment: {'; '.join(environments) or 'unknown'}.",
        f"Timing: median of {args.repeats} timings of {args.steps} steps after {args.warmup} warm-up "
        "step(s), one process per row, synthetic data on the device.",
        f"FLOPs (analytic, flops.py): {flops['train'] / 1e9:.1f} GFLOP per image per training step, "
        f"{flops['forward'] / 1e9:.1f} per eval image.",
    ]
    if peak:
        lines.append(
            "Utilisation = FLOPs x images/s / the measured bf16 matmul peak, "
            f"{peak['peak_flops'] / 1e12:.3g} TFLOP/s ({peak['matmul']}^3)."
        )
    else:
        lines.append("Utilisation: not computed (the bf16 matmul peak was not measured).")
    xla = sorted({o for r in rows for o in r.variant.split("+")[1:] if o.startswith(XLA_PREFIX)})
    if xla:
        lines.append(
            "XLA options: " + "; ".join(f"{o} = {' '.join(xla_flags_of('jax-bf16+' + o))}" for o in xla) + "."
        )
    return lines


def parse_run(text: str) -> tuple[str, list[int]]:
    variant, _, batches = text.partition(":")
    try:
        split_variant(variant)
        return variant, [int(b) for b in batches.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected VARIANT:BATCH[,BATCH...]; {e}") from None


def _batches(text: str) -> set[int]:
    return {int(b) for b in text.split(",") if b.strip()}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bridgegap_jax.benchmark", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth (18, 34, 50, 101, 152)")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--size", type=int, default=448, help="image height = width")
    parser.add_argument("--alpha", type=float, default=5.0, help="BoostLU factor")
    parser.add_argument(
        "--run",
        type=parse_run,
        action="append",
        metavar="VARIANT:B1,B2",
        help="a variant and its batch sizes (repeatable, run in order); default: " + " ".join(DEFAULT_RUNS),
    )
    parser.add_argument(
        "--target",
        type=parse_target,
        action="append",
        metavar="A[:B]/C[:D]>=R",
        help="report MET / NOT MET: variant A at batch B reaches R x the training images/s of C at "
        "D (no batch: the best; A* = the best variant starting with A); without --run: "
        + " ".join(DEFAULT_TARGETS),
    )
    parser.add_argument(
        "--eval-target",
        type=parse_target,
        action="append",
        metavar="A[:B]/C[:D]>=R",
        help="the same for eval images/s; without --run: " + " ".join(DEFAULT_EVAL_TARGETS),
    )
    parser.add_argument(
        "--eval-at",
        type=_batches,
        default={128},
        metavar="B1,B2",
        help="also time eval in the rows of these batch sizes (default 128; '' = none)",
    )
    parser.add_argument(
        "--profile-at",
        type=_batches,
        default=set(),
        metavar="B1,B2",
        help="trace 3 steps of the JAX rows of these batch sizes and print their top ops",
    )
    parser.add_argument("--profile-dir", default=os.path.join(tempfile.gettempdir(), "bridgegap_profile"))
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--budget", type=float, default=0, help="seconds for all rows (0: no limit)")
    parser.add_argument("--row-timeout", type=float, default=600, help="seconds for one row")
    parser.add_argument(
        "--markdown", default="", help="append the results to this file (FILE.partial while running)"
    )
    parser.add_argument("--title", default="", help="heading of the table")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="CPU smoke run: ResNet-18, 32x32, 10 classes, 1 warm-up, 2 x 2 steps, batch B as "
        "max(2, B // 32) (overrides those flags); torch-best rows are skipped",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one row, as JSON
    args = parser.parse_args(argv)
    if not args.run:  # the default rows come with their targets; given rows only with given targets
        args.run = [parse_run(r) for r in DEFAULT_RUNS]
        args.target = args.target or [parse_target(t) for t in DEFAULT_TARGETS]
        args.eval_target = args.eval_target or [parse_target(t) for t in DEFAULT_EVAL_TARGETS]
    args.target, args.eval_target = args.target or [], args.eval_target or []
    args.model_name = f"ResNet-{args.depth}, {args.num_classes:,} classes, {args.size}x{args.size}"
    if args.tiny:
        shrink_to_tiny(args)
    return args


def shrink_to_tiny(args) -> None:
    """--tiny: ResNet-18 at 32x32 with 10 classes, few steps, every batch B as max(2, B // 32)."""
    args.model_name += " (--tiny: ResNet-18, 10 classes, 32x32, batch / 32 instead)"
    args.depth, args.size, args.num_classes = 18, 32, 10
    args.steps, args.repeats, args.warmup = 2, 2, 1

    def tiny(batch):
        return batch and max(2, batch // 32)

    args.run = [(variant, sorted({tiny(b) for b in batches})) for variant, batches in args.run]
    args.eval_at, args.profile_at = {tiny(b) for b in args.eval_at}, {tiny(b) for b in args.profile_at}
    args.target, args.eval_target = (
        [t._replace(ours_batch=tiny(t.ours_batch), theirs_batch=tiny(t.theirs_batch)) for t in targets]
        for targets in (args.target, args.eval_target)
    )


def report(args, title: str, rows: list[Row], flops: dict, peak: dict | None) -> str:
    peak_flops = peak["peak_flops"] if peak else None
    parts = [table(rows, f"### {title}", flops, peak_flops)]
    pairings = pairing_lines(rows)
    if pairings:
        parts.append("Pairings (images/s ratios):\n\n" + "\n".join(pairings))
    model = args.model_name + " "
    goals = target_lines(rows, args.target, "images_per_s", model) + target_lines(
        rows, args.eval_target, "eval_images_per_s", model
    )
    if goals:
        parts.append("Targets:\n\n" + "\n".join(goals))
    parts.append("\n".join(footer(args, rows, flops, peak)))
    parts += [f"Profile of {r.variant} b{r.batch}:\n\n```\n{r.profile}\n```" for r in rows if r.profile]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    from bridgegap_jax import flops as flops_lib, steps

    signal.signal(signal.SIGTERM, _stop_children_and_exit)
    start = time.monotonic()
    title = args.title or f"{args.model_name}, {SCHEME} + BoostLU alpha {args.alpha:g}"
    # Model FLOPs of the default layers (traced, nothing runs): the same for every row.
    flops = flops_lib.model_flops(
        steps.make_model(args.num_classes, depth=args.depth, alpha=args.alpha), args.size
    )
    print(
        f"{title}: {flops['train'] / 1e9:.1f} GFLOP per image per training step; rows: "
        + " ".join(f"{v}:{','.join(map(str, b))}" for v, b in args.run),
        flush=True,
    )
    runner = Runner(args, start)
    peak = runner.peak()
    if peak:
        print(f"bf16 matmul peak: {peak['peak_flops'] / 1e12:.3g} TFLOP/s; {peak['environment']}", flush=True)
    rows: list[Row] = []
    for variant, batches in args.run:
        for batch in batches:
            row = runner.row(variant, batch)
            rows.append(row)
            print(
                f"[{time.monotonic() - start:4.0f} s] {variant} b{batch}: {_fmt(row.train_ms, '.2f')} "
                f"ms/step, {_fmt(row.images_per_s, ',.1f')} img/s, "
                f"eval {_fmt(row.eval_images_per_s, ',.1f')} img/s{'; ' + row.note if row.note else ''}",
                flush=True,
            )
            if args.markdown:  # what is done so far survives an outer timeout
                with open(args.markdown + ".partial", "w") as f:
                    f.write(table(rows, f"### {title} (partial)", flops, peak and peak["peak_flops"]) + "\n")
    text = report(args, title, rows, flops, peak)
    print("\n" + text, flush=True)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n")
        if os.path.exists(args.markdown + ".partial"):
            os.remove(args.markdown + ".partial")
    return 0


if __name__ == "__main__":
    sys.exit(main())
