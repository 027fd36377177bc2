"""LL-Cp: the selected entries are corrected for good: they become observed positives.

k = ceil(B*C*delta_rel) from epoch 2 on (constant). The loss is LL-Ct's; the corrections are
dataset state kept on the host as a bitmap (one bit per example and class: OpenImages V3,
3.4M x 5,000, costs 2.1 GB of host memory and of checkpoint, whatever the number of corrections).
Every example is seen once per epoch, so applying a correction as soon as its step finishes is the
same as applying it from the next epoch. A step's selection is fetched from the device only once
the next step has been dispatched (`record` keeps it pending), so the device never waits on the host.
"""

from __future__ import annotations

import numpy as np

from bridgegap_jax.base import sharding
from bridgegap_jax.run import losses
from bridgegap_jax.run.schemes.base import HostState
from bridgegap_jax.run.schemes.temporary_correction import TemporaryCorrection


class LabelCorrections:
    """A (examples, classes) bitmap of corrected labels."""

    def __init__(self, num_examples: int, num_classes: int, bits: np.ndarray | None = None):
        self.num_classes = num_classes
        shape = (num_examples, (num_classes + 7) // 8)
        bits = np.zeros(shape, np.uint8) if bits is None else np.asarray(bits)
        if bits.shape != shape or bits.dtype != np.uint8:
            raise ValueError(f"correction bitmap has shape {bits.shape} {bits.dtype}, expected {shape} uint8")
        self.bits = bits

    def add(self, index: np.ndarray, selected: np.ndarray) -> None:
        """Mark selected (B, C) entries of examples `index` (B,) as corrected; index -1 = padding."""
        keep = index >= 0
        self.bits[index[keep]] |= np.packbits(selected[keep].astype(bool), axis=1)

    def apply(self, index: np.ndarray, observed: np.ndarray, positive: int = 1) -> np.ndarray:
        """Observed labels (B, C) with every corrected entry set to `positive`."""
        corrected = np.unpackbits(self.bits[index], axis=1, count=self.num_classes).astype(bool)
        return np.where(corrected, np.asarray(positive, observed.dtype), observed)

    def count(self) -> int:
        return int(np.bitwise_count(self.bits).sum(dtype=np.int64))


class CorrectionState(HostState):
    def __init__(self, num_examples: int, num_classes: int):
        self.corrections = LabelCorrections(num_examples, num_classes)
        self.pending = None

    def observed(self, index, labels):
        return self.corrections.apply(index, labels)

    def record(self, index, selected):
        self.flush()  # the previous step's selection: its step has finished by now
        self.pending = (index, selected)

    def flush(self):
        if self.pending is not None:
            index, selected = self.pending
            self.corrections.add(index, sharding.to_host(selected))
            self.pending = None

    def checkpoint(self):
        return {"corrections": self.corrections.bits}

    def restore(self, tree):
        self.corrections = LabelCorrections(
            len(self.corrections.bits), self.corrections.num_classes, tree["corrections"]
        )

    def describe(self):
        return f"{self.corrections.count()} corrected labels so far"


class PermanentCorrection(TemporaryCorrection):
    name = "LL-Cp"
    default_delta_rel = 0.001

    def num_large_losses(self, epoch, rows, num_classes):
        return 0 if epoch <= 1 else losses.large_loss_count(rows * num_classes, self.delta_rel)

    def host_state(self, num_examples, num_classes):
        return CorrectionState(num_examples, num_classes)
