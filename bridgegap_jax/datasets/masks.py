"""Simulated partial labels, a pure function of (full labels, seed, example index).

config.data.observation picks the observed training labels:
  'stored'           the dataset's labels_obs (single positive: SPEC §2's seeded generator over
                     the formatted file; OpenImages: the human verifications). The default.
  'single_positive'  one positive per image, drawn uniformly.
  'k_positives:K'    K positives per image (all of them if it has fewer).
  'fraction:F'       round(F * n) of an image's n known labels, drawn uniformly; they keep their
                     value (positive, or observed negative), the rest become unobserved.
The draws are keyed by (seed, example index) through stateless random ops, so any process
count, shard or read order sees the same observed labels in every epoch. They are therefore not
SPEC §2's sequential RandomState draws (those depend on every row before); 'stored' is the
benchmark's observation, these are for studying other supervision levels.

Encodings (catalog.DatasetSpec.label_encoding): 'single_positive' datasets store full labels
{0, 1} and observe 1 positive / -1 observed negative / 0 unobserved; 'partial' (OpenImages) stores
{1, 0, -1} verified labels and observes 1 / 0 / -1 unobserved, drawing only from verified entries.
"""

from __future__ import annotations

MODES = ("stored", "single_positive", "k_positives:K", "fraction:F")
# Observed value of (positive, negative, unobserved) entries in each encoding.
CODES = {"single_positive": (1, -1, 0), "partial": (1, 0, -1)}


def parse(mode: str) -> tuple[str, float] | None:
    """None for 'stored', else ('positives', K) or ('fraction', F); a clear error otherwise."""
    error = ValueError(f"config.data.observation={mode!r} is not one of {', '.join(MODES)} "
                       "(K a positive integer, 0 < F <= 1)")
    if mode == "stored":
        return None
    if mode == "single_positive":
        return "positives", 1
    kind, _, value = mode.partition(":")
    try:
        if kind == "k_positives" and int(value) >= 1 and str(int(value)) == value:
            return "positives", int(value)
        if kind == "fraction" and 0 < float(value) <= 1:
            return "fraction", float(value)
    except ValueError:
        pass
    raise error


def observe(labels, index, *, mode: str, seed: int, encoding: str):
    """Observed int8 labels (C,) of one example (TensorFlow ops: runs inside tf.data).

    labels: (C,) the stored 'labels' (full labels, or OpenImages' verified labels); index: its
    int64 example index.
    """
    import tensorflow as tf

    parsed = parse(mode)
    if parsed is None:
        raise ValueError("observe() simulates labels; 'stored' reads labels_obs instead")
    if encoding not in CODES:
        raise ValueError(f"label encoding {encoding!r} is not one of {sorted(CODES)}")
    kind, amount = parsed
    pos_code, neg_code, unobserved = CODES[encoding]
    labels = tf.cast(labels, tf.int32)
    positive = labels == 1
    known = positive | (labels == (0 if encoding == "single_positive" else neg_code))
    pool = positive if kind == "positives" else known
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    draw = tf.random.stateless_uniform(tf.shape(labels), seed=key)
    # Rank of each pool entry among the pool's entries in draw order; keep the first `count`.
    order = tf.argsort(tf.where(pool, draw, 2.0), stable=True)
    rank = tf.math.invert_permutation(order)
    size = tf.reduce_sum(tf.cast(pool, tf.int32))
    if kind == "positives":
        count = tf.minimum(size, int(amount))
    else:
        count = tf.cast(tf.round(amount * tf.cast(size, tf.float32)), tf.int32)
    keep = pool & (rank < count)
    observed = tf.where(keep & positive, pos_code, tf.where(keep, neg_code, unobserved))
    return tf.cast(observed, tf.int8)
