"""The table of scripts/gpu_train.sh, from the logs its parts leave in one folder.

    python scripts/gpu_train_table.py LOGDIR [--md FILE]

Each part PART left PART.log (its output) and PART.status ("exit-code seconds"; absent: not run):
  demo_build, demo              the demo dataset's build, then the README's demo command
  train_b16, train_b128         ResNet-50, 448, bf16 on the 448 px fake COCO set
  synthetic                     bridgegap_jax.bench's synthetic training step, same model
End-to-end images/s comes from the training progress lines: every window but the run's first
(which holds the compilation), as images / seconds over all of them.
"""

from __future__ import annotations

import argparse
import os
import re

PROGRESS = re.compile(r"^epoch (\d+)/\d+ step (\d+)/(\d+) \|.*\| ([\d.]+) img/s \|", re.M)
DESCRIBE = re.compile(
    r"^training \S+: (\d+) images, (\d+) steps/epoch x (\d+) epochs, .* batch (\d+) on", re.M
)
MODEL = re.compile(r"^training .*, (ResNet-\d+), (\w+), batch", re.M)
TEST_MAP = re.compile(r"^test: test mAP ([\d.]+)", re.M)
GOAL = 0.9  # end-to-end / synthetic at batch 128


def train_rate(log: str) -> dict:
    """{'rate': images/s or None, 'steps': measured, 'total_steps', 'batch'} from a training log."""
    described = DESCRIBE.search(log)
    if described is None:
        return {"rate": None, "steps": 0, "total_steps": 0, "batch": None}
    num_train, per_epoch, _, batch = (int(g) for g in described.groups())
    last_rows = num_train - (per_epoch - 1) * batch  # one device: the last batch keeps its real size
    images = seconds = 0.0
    steps = total = 0
    previous = {}  # epoch -> step of its previous progress line
    for index, match in enumerate(PROGRESS.finditer(log)):
        epoch, step, rate = int(match.group(1)), int(match.group(2)), float(match.group(4))
        start = previous.get(epoch, 0)
        previous[epoch] = step
        window = (step - start) * batch - (batch - last_rows if step == per_epoch else 0)
        total += step - start
        if index == 0 or rate <= 0:  # the first window: compilation
            continue
        images += window
        seconds += window / rate
        steps += step - start
    rate = images / seconds if seconds else None
    return {"rate": rate, "steps": steps, "total_steps": total, "batch": batch}


def synthetic_rates(log: str, variant: str = "jax-bf16") -> dict[int, float]:
    """{batch: images/s} of `variant` in the benchmark's output: its 'VARIANT batch B: ... X img/s'
    lines, else the rows of its markdown table (columns 'variant', 'batch' and a training img/s)."""
    rates = {}
    for match in re.finditer(rf"^{re.escape(variant)} batch (\d+): .*?([\d,]+(?:\.\d+)?) img/s", log, re.M):
        rates[int(match.group(1))] = float(match.group(2).replace(",", ""))
    return rates or _table_rates(log, variant)


def _table_rates(log: str, variant: str) -> dict[int, float]:
    rates, columns = {}, None
    for line in log.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip().lower() for cell in line.strip().strip("|").split("|")]
        if "variant" in cells and "batch" in cells:
            rate = [i for i, c in enumerate(cells) if "img/s" in c and "eval" not in c]
            columns = (cells.index("variant"), cells.index("batch"), rate[0]) if rate else None
        elif columns and len(cells) > max(columns) and cells[columns[0]] == variant:
            try:
                rates[int(cells[columns[1]])] = float(cells[columns[2]].replace(",", ""))
            except ValueError:  # a failed row: 'out of memory'
                pass
    return rates


def test_map(log: str) -> float | None:
    match = TEST_MAP.search(log)
    return float(match.group(1)) if match else None


def read_part(folder: str, part: str) -> tuple[str, str]:
    """(log text, status): status is 'ok', 'not run', 'timed out after N s' or 'failed (exit N): last line'."""
    log_path, status_path = (os.path.join(folder, f"{part}.{ext}") for ext in ("log", "status"))
    log = open(log_path, errors="replace").read() if os.path.exists(log_path) else ""
    if not os.path.exists(status_path):
        return log, "not run"
    code, seconds = open(status_path).read().split()[:2]
    if code == "0":
        return log, "ok"
    if code in ("124", "137"):
        return log, f"timed out after {seconds} s"
    lines = [line for line in log.splitlines() if line.strip()]
    last = lines[-1][:150].replace("|", "/") if lines else "no output"  # a pipe would split the table cell
    return log, f"failed (exit {code}): {last}"


def seconds_of(folder: str, part: str) -> str:
    path = os.path.join(folder, f"{part}.status")
    return open(path).read().split()[1] if os.path.exists(path) else "-"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = [
    "| run | steps (measured) | wall s | end-to-end img/s | synthetic step img/s "
    "| end-to-end / synthetic | test mAP | status |",
    "|---|---|---|---|---|---|---|---|",
]
NOTES = (
    "End-to-end: the training progress lines, every window but the first (compilation); steps: all "
    "(measured). Synthetic: `python -m bridgegap_jax.bench`, the same model on data already on the "
    "device."
)


def row(name: str, log: str, wall: str, synthetic: float | None, status: str) -> tuple[str, float | None]:
    """(the markdown row of one training run, end-to-end / synthetic or None)."""
    run = train_rate(log)
    ratio = run["rate"] / synthetic if run["rate"] and synthetic else None
    cells = [
        name,
        f"{run['total_steps']} ({run['steps']})",
        wall,
        _fmt(run["rate"], ",.0f"),
        _fmt(synthetic, ",.0f"),
        "-" if ratio is None else f"{100 * ratio:.0f}%",
        _fmt(test_map(log), ".2f"),
        status,
    ]
    return "| " + " | ".join(cells) + " |", ratio


def table(folder: str, title: str = "") -> str:
    lines = ([f"### {title}", ""] if title else []) + HEADER
    demo_log, demo_status = read_part(folder, "demo")
    build_log, build_status = read_part(folder, "demo_build")
    build = (
        "already built"
        if build_log.startswith("already built")
        else (f"built in {seconds_of(folder, 'demo_build')} s ({build_status})")
    )
    lines.append(
        row(
            "(a) demo, README command",
            demo_log,
            seconds_of(folder, "demo"),
            None,
            f"{demo_status}; dataset {build}",
        )[0]
    )
    synthetic_log, synthetic_status = read_part(folder, "synthetic")
    synthetic = synthetic_rates(synthetic_log)
    ratio = None
    for batch in (16, 128):
        log, status = read_part(folder, f"train_b{batch}")
        model = MODEL.search(log)
        name = f"(b) {', '.join(model.groups()) if model else 'ResNet-50, bfloat16'}, batch {batch}"
        text, ratio = row(
            name,
            log,
            seconds_of(folder, f"train_b{batch}"),
            synthetic.get(batch),
            f"{status}; synthetic {synthetic_status}",
        )
        lines.append(text)
    verdict = "not measured" if ratio is None else f"{ratio:.0%}, {'met' if ratio >= GOAL else 'NOT met'}"
    lines += ["", f"Goal: end-to-end >= {GOAL:.0%} of the synthetic step at batch 128: {verdict}.", NOTES]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logdir")
    parser.add_argument("--md", help="also write the table, after LOGDIR/env.txt, to this file")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    text = table(args.logdir, args.title)
    print(text, end="")
    if args.md:
        env_path = os.path.join(args.logdir, "env.txt")
        env = open(env_path).read().strip() if os.path.exists(env_path) else ""
        with open(args.md, "w") as f:
            f.write((f"```\n{env}\n```\n\n" if env else "") + text)


if __name__ == "__main__":
    main()
