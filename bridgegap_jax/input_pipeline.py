"""tfds -> tf.data -> host numpy batches (uint8 images) for training and evaluation.

The host only decodes, resizes and flips; images stay uint8 (normalisation runs on the device, in
the model). Training order is a pure function of (seed, epoch): a seeded file shuffle and a
seeded example shuffle, deterministic tf.data, and a stateless flip keyed by (seed, epoch, example
index); resuming at step s of an epoch rebuilds that epoch's stream and skips s batches, so a
resumed run sees exactly the batches an uninterrupted one would. Evaluation reads every example
once, in order, and pads the last batch with a mask so one compiled eval shape serves all batches.

TensorFlow is imported only here and in datasets/, and only when a pipeline is built.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def _tf():
    import tensorflow as tf  # imported late: the model and training step must not need TensorFlow

    tf.config.set_visible_devices([], "GPU")  # TF must not claim accelerator memory that JAX needs
    return tf


def epoch_seed(seed: int, epoch: int) -> int:
    """One 31-bit seed per (run seed, epoch), the same on every host."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)


def _decode_and_resize(tf, image, image_size: int):
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    shape = tf.shape(image)

    def resize():
        # Antialiased bilinear matches PIL's downscaling (the reference's transform) far better
        # than plain bilinear.
        resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    same = tf.logical_and(shape[0] == image_size, shape[1] == image_size)
    image = tf.cond(same, lambda: tf.cast(image, tf.uint8), resize)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _options(tf):
    options = tf.data.Options()
    options.deterministic = True
    return options


def num_examples(builder, split: str) -> int:
    return builder.info.splits[split].num_examples


def train_batches(
    builder,
    split: str,
    *,
    label_key: str,
    batch_size: int,
    image_size: int,
    seed: int,
    epoch: int,
    start_step: int = 0,
    flip: bool = True,
    shuffle_buffer: int = 50_000,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of {'image' uint8 (B,S,S,3), 'labels' int8 (B,C), 'index' int64 (B,)} for one epoch.

    The last batch keeps its real size, as the reference's DataLoader does.
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    eseed = epoch_seed(seed, epoch)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=not builder.info.disable_shuffling,  # ordered datasets: the buffer shuffles
        decoders={"image": tfds.decode.SkipDecoding()},  # decode after skip(): resuming is cheap
        read_config=tfds.ReadConfig(shuffle_seed=eseed, options=_options(tf)),
    )
    ds = ds.shuffle(shuffle_buffer, seed=eseed, reshuffle_each_iteration=False)
    ds = ds.skip(start_step * batch_size)

    def prepare(example):
        image = _decode_and_resize(tf, example["image"], image_size)
        if flip:
            key = tf.stack([tf.constant(eseed, tf.int64), example["index"]])
            image = tf.image.stateless_random_flip_left_right(image, seed=key)
        return {"image": image, "labels": tf.cast(example[label_key], tf.int8), "index": example["index"]}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    yield from tfds.as_numpy(ds)


def eval_batches(
    builder, split: str, *, batch_size: int, image_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in stored order: {'image', 'labels' (full), 'index', 'mask' bool (B,)}.

    The last batch is padded to `batch_size`; padded rows have mask False and index -1.
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(options=_options(tf)),
    )

    def prepare(example):
        image = _decode_and_resize(tf, example["image"], image_size)
        return {"image": image, "labels": tf.cast(example["labels"], tf.int8), "index": example["index"]}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    for batch in tfds.as_numpy(ds):
        yield pad_batch(batch, batch_size)


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Pad every field to `batch_size` rows and add 'mask' (True on real rows)."""
    n = len(batch["index"])
    padded = {}
    for name, value in batch.items():
        fill = -1 if name == "index" else 0
        pad = np.full((batch_size - n,) + value.shape[1:], fill, value.dtype)
        padded[name] = np.concatenate([value, pad])
    padded["mask"] = np.arange(batch_size) < n
    return padded
