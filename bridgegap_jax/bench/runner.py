"""Rows in child processes: the child's side (measure one thing, print it as its last line) and the
parent's (start each child in a session of its own, stop it at its timeout or the budget's end).

Each row runs in a fresh Python process, so PyTorch and JAX never share a process or GPU memory and
every row starts from an empty allocator; a JAX row's XLA options go into its XLA_FLAGS. With a
budget, a row still running at its end is stopped and the rows not started are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from bridgegap_jax.bench.rows import TORCH_VARIANTS, Row, xla_flags_of

ROW_MARK = "@@benchmark-row "  # the child's last line: this, then the row as JSON
SKIP_WHEN_LEFT_S = 10.0  # with --budget: a row is not started with less time left than this


def _is_oom(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text.lower()


def child_main(spec: dict) -> int:
    """Measure one thing and print it as the last line: ROW_MARK + JSON."""
    if spec["kind"] == "peak":
        from bridgegap_jax.bench.jax_rows import measure_peak

        result = measure_peak()
    else:
        try:
            if spec["variant"] in TORCH_VARIANTS:
                from bridgegap_jax.bench.torch_rows import measure_torch as measure
            else:
                from bridgegap_jax.bench.jax_rows import measure_jax as measure
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


_CHILDREN: set[int] = set()  # process groups of the running children


def stop_children_and_exit(signum, frame):
    """On SIGTERM (an outer timeout): stop the running child too, it has a session of its own."""
    for pid in list(_CHILDREN):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(128 + signum)


def run_child(spec: dict, timeout: float, env: dict) -> tuple[dict | None, str, bool]:
    """(the child's result or None, its output, whether it was stopped at the timeout)."""
    root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )  # above bridgegap_jax/
    env = dict(env, PYTHONPATH=os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p))
    command = [sys.executable, "-m", "bridgegap_jax.bench", "--child", json.dumps(spec)]
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
