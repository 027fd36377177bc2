"""LL-Cp's permanent label corrections: dataset state kept on the host as a bitmap.

An entry the loss corrects becomes an observed positive for good. Every example is seen once per
epoch, so applying a correction as soon as its step finishes is the same as applying it from the
next epoch (SPEC §3). One bit per (example, class): OpenImages V3 (3.4M x 5,000) costs 2.1 GB of
host memory and of checkpoint, whatever the number of corrections.
"""

from __future__ import annotations

import numpy as np


class LabelCorrections:
    def __init__(self, num_examples: int, num_classes: int, bits: np.ndarray | None = None):
        self.num_classes = num_classes
        shape = (num_examples, (num_classes + 7) // 8)
        if bits is None:
            bits = np.zeros(shape, np.uint8)
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
