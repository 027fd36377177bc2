"""What a loss scheme is: a k schedule on the host, a jittable loss, and optional host state.

A scheme is constructed once per run from the config (`delta_rel`, the dataset's unobserved value).
The trainer calls, per step: `num_large_losses` (host) -> the jitted step with `loss` inside ->
the host state's `record`. Host state is dataset state that outlives a step (LL-Cp's corrections);
the trainer checkpoints whatever `HostState.checkpoint()` returns and hands it back on resume.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import numpy as np

from bridgegap_jax.run import losses
from bridgegap_jax.run.losses import LossOutput


class HostState:
    """No host state: labels pass through, nothing is recorded or checkpointed."""

    def observed(self, index: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The observed labels to train on for examples `index` (this process's rows)."""
        return labels

    def record(self, index: np.ndarray, selected: jax.Array) -> None:
        """A step's selection (global (B, C) device array) for the examples `index` (global (B,))."""

    def flush(self) -> None:
        """Finish pending records: called before a checkpoint and at the end of every epoch."""

    def checkpoint(self) -> dict[str, Any]:
        """Arrays to save with the train state; also the restore target (shapes and dtypes)."""
        return {}

    def restore(self, tree: dict[str, Any]) -> None:
        """Take back what `checkpoint` saved."""

    def describe(self) -> str:
        """A few words for the validation line (e.g. how many labels were corrected)."""
        return ""


class Scheme:
    """Base class: subclasses set `name` and `default_delta_rel` and implement `loss`."""

    name: ClassVar[str]
    default_delta_rel: ClassVar[float] = 0.0

    def __init__(self, delta_rel: float | None = None, unobserved_value: int = 0, group_size: int = 0):
        """`group_size` G > 0 ranks the losses of each group of G rows on its own (docs/method.md,
        "Large batches")."""
        self.delta_rel = self.default_delta_rel if delta_rel is None else float(delta_rel)
        self.unobserved_value = unobserved_value
        self.group_size = group_size

    def num_large_losses(self, epoch: int, rows: int, num_classes: int) -> int:
        """k for a group of `rows` examples in 1-based `epoch` (host arithmetic, float64)."""
        return 0

    def large_loss_counts(self, epoch: int, rows: int, num_classes: int) -> np.ndarray:
        """k of each selection group of a batch of `rows` rows: the `k` argument of `loss`."""
        sizes = losses.group_sizes(rows, self.group_size)
        return np.asarray([self.num_large_losses(epoch, size, num_classes) for size in sizes], np.int32)

    def loss(self, logits: jax.Array, observed: jax.Array, k: jax.Array) -> LossOutput:
        raise NotImplementedError

    def host_state(self, num_examples: int, num_classes: int) -> HostState:
        return HostState()

    def describe(self) -> str:
        return f"{self.name} (delta_rel {self.delta_rel})"
