"""The benchmark's report: the table of rows, the pairings (ours against torch.compile at the same
batch, each option against its plain variant), the targets judged MET / NOT MET / NOT MEASURED,
and the footer that says how it was measured.

Utilisation = FLOPs per image (flops.py) x images/s / the measured bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import re
from typing import NamedTuple

from bridgegap_jax.bench.rows import XLA_PREFIX, Row, split_variant, xla_flags_of


def fmt(value, spec: str, missing: str = "-") -> str:
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
            f"| {r.variant} | {r.batch} | {r.precision or '-'} | {fmt(r.train_ms, '.1f')} | "
            f"{fmt(r.images_per_s, ',.0f')} | {ratio} | {util('train', r.images_per_s)} | "
            f"{fmt(r.eval_images_per_s, ',.0f')} | {util('forward', r.eval_images_per_s)} | "
            f"{fmt(r.peak_gib, '.2f')} | {fmt(r.compile_s, '.0f')} | {r.note} |"
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
