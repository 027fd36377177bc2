"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 of a run, estimated at its log points.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", Appendix A. G is the true
gradient and Sigma the covariance of one example's gradient, so the gradient of a batch of n rows
has E|G_n|^2 = |G|^2 + tr(Sigma) / n. Batches up to about B_simple use their steps efficiently;
past it each doubling of the batch buys less than 2x fewer steps.

At a log point the batch of B rows is split into P equal parts of b = B / P rows (the device
shards on several devices, else config.train.noise_scale_parts groups of consecutive rows), and
the gradient g_p of each part's loss is taken at the parameters before that step's update:

    |G_small|^2 = mean_p |g_p|^2            (batch b)
    |G_big|^2   = |mean_p g_p|^2            (batch B: the whole batch's gradient as its parts')
    |G|^2     = (B |G_big|^2 - b |G_small|^2) / (B - b)        unbiased
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/b - 1/B)        unbiased

The big gradient is the mean of the parts' (not the train step's own): each part normalises
with its own BatchNorm statistics and ranks its own large losses, so only then is E g_p the
expectation of the big gradient and the difference of the two norms noise alone. (BatchNorm
also makes an example's gradient depend on its part: parts of fewer rows measure more noise.)

One log point's |G|^2 is a difference of two close numbers while the batch is well below
B_simple (on configs/demo.py, batch 16: its spread is ~4x its mean), so, as McCandlish et al.
recommend, numerator and denominator are each smoothed by an exponential moving average over the
log points before their ratio is taken: B_simple = EMA(tr Sigma) / EMA(|G|^2). Both averages
start at 0 with the same weights, so the start-up bias (Adam's 1 - decay^t) cancels in the ratio.
DECAY 0.95 averages about the last 20 log points: as long as the noise allows while still following
the noise scale as it grows in training (on the demo, ~40 to ~300 over its first 3 epochs, 12 log
points); 0.9 left the demo's estimate jumping by 10x between log points, 0.98 lags ~50.
"""

from __future__ import annotations

import math

DECAY = 0.95  # per log point


def unbiased_estimates(
    small_sq: float, big_sq: float, small_batch: int, big_batch: int
) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from the mean squared gradient norm of batches of `small_batch` rows and
    the squared norm of their mean, a batch of `big_batch` rows (Appendix A)."""
    grad_sq = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
    trace = (small_sq - big_sq) / (1 / small_batch - 1 / big_batch)
    return grad_sq, trace


class SmoothedNoiseScale:
    """The EMAs of |G|^2 and tr(Sigma) over the log points, and their ratio. `state()` is what a
    checkpoint keeps (JSON numbers beside the progress record); a checkpoint written before the noise
    scale was measured holds none of it, and the averages start again from there."""

    def __init__(self, saved: dict | None = None):
        saved = saved or {}
        self.grad_sq = float(saved.get("noise_ema_grad_sq", 0.0))
        self.trace = float(saved.get("noise_ema_trace", 0.0))
        self.points = int(saved.get("noise_points", 0))

    def update(self, small_sq: float, big_sq: float, small_batch: int, big_batch: int) -> tuple[float, float]:
        """One log point's norms; returns its own (|G|^2, tr(Sigma)). A point that is not finite (a
        non-finite step) is left out of the averages."""
        grad_sq, trace = unbiased_estimates(small_sq, big_sq, small_batch, big_batch)
        if math.isfinite(grad_sq) and math.isfinite(trace):
            self.grad_sq = DECAY * self.grad_sq + (1 - DECAY) * grad_sq
            self.trace = DECAY * self.trace + (1 - DECAY) * trace
            self.points += 1
        return grad_sq, trace

    def value(self) -> float | None:
        """B_simple; None before the first point, or while EMA(|G|^2) <= 0 (the gradient is not yet
        told apart from the noise: the scale is beyond what the parts can measure)."""
        if not self.points or self.grad_sq <= 0:
            return None
        return self.trace / self.grad_sq

    def state(self) -> dict:
        return {"noise_ema_grad_sq": self.grad_sq, "noise_ema_trace": self.trace, "noise_points": self.points}


def text(value: float | None) -> str:
    """The noise scale as the progress line shows it: 3 significant digits, '-' while unknown."""
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def meaning(value: float | None) -> str:
    """What a noise scale says about the batch, in one sentence."""
    if value is None:
        return (
            "the gradient was not told apart from its noise: the noise scale is beyond what this batch "
            "measures (a larger batch, or more log points, can)"
        )
    return (
        f"batches up to about {text(value)} use their steps efficiently; past it each doubling of the batch "
        "buys less than 2x fewer steps"
    )
