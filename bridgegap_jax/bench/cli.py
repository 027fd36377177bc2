"""Training-step and eval throughput: our JAX step against the PyTorch reference, one process per row.

    python -m bridgegap_jax.bench              # ResNet-50, 80 classes, 448: the default pairings
    python -m bridgegap_jax.bench --depth=101 --num-classes=5000 --run=torch-ref:16 --run=jax-bf16:128
    python -m bridgegap_jax.bench --run=jax-bf16:128 --run=jax-bf16+fused-bn:128   # an option off / on
    python -m bridgegap_jax.bench --tiny       # CPU smoke run: ResNet-18 at 32x32, 10 classes

Rows. `--run VARIANT:B1,B2,...` times VARIANT at each batch size; rows run in the order given,
each in a fresh Python process (`--child`: runner.py), so PyTorch and JAX never share a process or
GPU memory and every row starts from an empty allocator. A row measures the training step (forward, BoostLU,
LL-R loss at epoch 3 with the scheme's k, backward, Adam with the 10x head) on synthetic data
already on the device: compilation and `--warmup` steps excluded, the median of `--repeats`
timings of `--steps` steps, each ended by block_until_ready / cuda.synchronize. At the batches of
`--eval-at` it also times eval (forward in eval mode, sigmoid), and at those of `--profile-at`
(JAX rows) it traces 3 steps and keeps the top XLA ops by time. With `--budget` the rows share a
wall-clock budget: a row still running at its end is stopped, the rows not started are listed as
skipped, and the table is printed with what was measured.

Variants (PyTorch: torch_rows.py; JAX: jax_rows.py):

    torch-ref    the reference as shipped: torchvision model, float32 (PyTorch defaults, i.e.
                 TF32 convolutions on Ampere and later), NCHW, eager, Adam (foreach default)
    torch-amp    + bf16 autocast, channels_last, fused Adam, cudnn.benchmark
    torch-best   + torch.compile of the model (PyTorch's best setup)
    jax-fp32     our training step (steps.py: the one training runs), float32 (XLA's default
                 precision: TF32 on GPUs that have it), state donated
    jax-bf16     the same with a bfloat16 trunk (parameters, BN statistics, head, loss: float32)

A JAX variant takes options, `jax-bf16+OPTION+...`, each the same function up to float rounding:
the speed options of layers.py (SPEED_OPTIONS; the model field in brackets) `fused-bn`
(batch_norm=fused: BatchNorm, residual add and ReLU as one op with its own backward),
`strided-pool` (max_pool=strided: the stem's max-pool as 9 strided slices, no select-and-scatter),
`s2d-stem` (stem=space_to_depth: the 7x7/2 stem conv as 4x4/1 on 2x2 blocks), `bf16-head`
(head_dtype=bfloat16: the CAM head's matmul in bf16, float32 sums); XLA options `xla-NAME` with
NAME a preset of bridgegap_jax/model/xla_options.py.

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
import json
import os
import signal
import sys
import tempfile
import time

from bridgegap_jax.bench.rows import SCHEME, Row, split_variant
from bridgegap_jax.bench.runner import Runner, child_main, stop_children_and_exit
from bridgegap_jax.bench.tables import fmt, parse_target, report, table

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
        prog="python -m bridgegap_jax.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101, 152), help="ResNet depth")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    previous = signal.signal(signal.SIGTERM, stop_children_and_exit)
    try:
        return _benchmark(args)
    finally:  # called in-process (tests), the caller's handler comes back
        signal.signal(signal.SIGTERM, previous)


def _benchmark(args) -> int:
    """The rows of `args`, each in its own process, then the table."""
    from bridgegap_jax.bench import flops as flops_lib
    from bridgegap_jax.model.resnet import CAMClassifier

    start = time.monotonic()
    title = args.title or f"{args.model_name}, {SCHEME} + BoostLU alpha {args.alpha:g}"
    # Model FLOPs of the default layers (traced, nothing runs): the same for every row.
    flops = flops_lib.model_flops(
        CAMClassifier(num_classes=args.num_classes, depth=args.depth, alpha=args.alpha), args.size
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
                f"[{time.monotonic() - start:4.0f} s] {variant} b{batch}: {fmt(row.train_ms, '.2f')} "
                f"ms/step, {fmt(row.images_per_s, ',.1f')} img/s, "
                f"eval {fmt(row.eval_images_per_s, ',.1f')} img/s{'; ' + row.note if row.note else ''}",
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
