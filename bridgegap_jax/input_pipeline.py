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


def _decode(tf, data, image_format: str):
    """Decode one image. The format is static per dataset (its tfds Image feature): a per-image
    tf.cond costs more inside the batch's map_fn than the resize does."""
    if image_format == "jpeg":
        # The accurate integer IDCT is bit-identical to PIL's decode (the reference's); TF's default
        # fast IDCT is 0.92 grey levels away from it, and no faster.
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
    if image_format == "png":
        return tf.io.decode_png(data, channels=3)
    raise ValueError(f"images stored as {image_format!r}: the pipeline reads 'jpeg' or 'png' (re-run the prepare command)")


def _decode_and_resize(tf, data, image_size: int, antialias: bool, image_format: str):
    # Antialiased bilinear is PIL's bilinear (the reference's resize): 0.14 grey levels from it at
    # 448; plain bilinear is 0.63 away and about 2x cheaper (scripts/input_throughput.py). A
    # same-size resize samples the pixel centres exactly, so it is the identity: no branch needed.
    resized = tf.image.resize(_decode(tf, data, image_format), [image_size, image_size], method="bilinear", antialias=antialias)
    # Round half up; bilinear weights are non-negative, so values stay within [0, 255].
    return tf.ensure_shape(tf.cast(resized + 0.5, tf.uint8), [image_size, image_size, 3])


def _options(tf):
    options = tf.data.Options()
    options.deterministic = True
    return options


def _decode_rows(tf, encoded, index, image_size: int, flip_seed: int | None, antialias: bool, image_format: str):
    """Decode (and maybe flip) a batch of encoded images; a stateless flip keyed by example index."""

    def one(args):
        data, example_index = args
        image = _decode_and_resize(tf, data, image_size, antialias, image_format)
        if flip_seed is not None:
            key = tf.stack([tf.constant(flip_seed, tf.int64), example_index])
            image = tf.image.stateless_random_flip_left_right(image, seed=key)
        return image

    spec = tf.TensorSpec([image_size, image_size, 3], tf.uint8)
    return tf.map_fn(one, (encoded, index), fn_output_signature=spec)


def _process_rows(n, process_index: int, process_count: int):
    """[start, stop) of this process's rows in a global batch of n rows (n divisible by the count)."""
    local = n // process_count
    return process_index * local, (process_index + 1) * local


def image_format(builder) -> str:
    """'jpeg' or 'png': how the dataset stores its images."""
    return builder.info.features["image"].encoding_format or "unknown"


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
    shuffle_buffer: int = 10_000,
    process_index: int = 0,
    process_count: int = 1,
    row_multiple: int = 1,
    observation: str = "stored",
    observation_seed: int = 1200,
    antialias: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of global batches of `batch_size`, this process's share of each.

    Yields {'image' uint8 (L,S,S,3), 'labels' int8 (L,C): this process's L rows; 'index' int64 (B,):
    the example indices of the whole global batch}. Every process reads the same global order (a
    function of seed and epoch only, so any process count sees the same global batches) and
    decodes only its own rows. The last batch keeps its real size, as the reference's DataLoader
    does, cut to a multiple of `row_multiple` (the device count) so that it splits evenly.
    `antialias=False` resizes ~2x faster per core, a little further from PIL (input_throughput.py).
    `observation` other than 'stored' simulates the observed labels from the full labels
    (datasets/masks.py: keyed by (observation_seed, example index), the same in every epoch).
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    from bridgegap_jax.datasets import catalog, masks

    if masks.parse(observation) is not None and label_key != "labels_obs":
        raise ValueError(f"observation={observation!r} simulates observed labels from the full labels; it needs "
                         f"label_key='labels_obs' (config.data.train_labels='observed'), not {label_key!r}")

    def labels_of(ex):
        if masks.parse(observation) is None:
            return tf.cast(ex[label_key], tf.int8)
        return masks.observe(ex["labels"], ex["index"], mode=observation, seed=observation_seed,
                             encoding=catalog.label_encoding(builder))

    eseed = epoch_seed(seed, epoch)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=not builder.info.disable_shuffling,  # ordered datasets: the buffer shuffles
        decoders={"image": tfds.decode.SkipDecoding()},  # decode after skip(): resuming is cheap
        read_config=tfds.ReadConfig(shuffle_seed=eseed, options=_options(tf)),
    )
    ds = ds.map(lambda ex: {"image": ex["image"], "labels": labels_of(ex), "index": ex["index"]})
    ds = ds.shuffle(shuffle_buffer, seed=eseed, reshuffle_each_iteration=False)
    ds = ds.skip(start_step * batch_size).batch(batch_size)

    def local_rows(batch):
        n = tf.shape(batch["index"])[0] // row_multiple * row_multiple
        start, stop = _process_rows(n, process_index, process_count)
        return {
            "image": _decode_rows(tf, batch["image"][start:stop], batch["index"][start:stop], image_size,
                                  eseed if flip else None, antialias, image_format(builder)),
            "labels": batch["labels"][start:stop],
            "index": batch["index"][:n],
        }

    ds = ds.map(local_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(lambda batch: tf.shape(batch["index"])[0] > 0).prefetch(tf.data.AUTOTUNE)
    yield from tfds.as_numpy(ds)


def eval_batches(
    builder, split: str, *, batch_size: int, image_size: int, process_index: int = 0, process_count: int = 1,
    antialias: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in stored order, in global batches padded to `batch_size`.

    Yields {'image': this process's rows (L = batch_size / process_count), 'labels' (full labels),
    'index' and 'mask' (True on real rows): the whole global batch}. Padded rows have index -1.
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(options=_options(tf)),
    )
    ds = ds.map(lambda ex: {"image": ex["image"], "labels": tf.cast(ex["labels"], tf.int8), "index": ex["index"]})
    start, stop = _process_rows(batch_size, process_index, process_count)

    def local_rows(batch):
        n = tf.shape(batch["index"])[0]
        first, last = tf.minimum(start, n), tf.minimum(stop, n)
        images = _decode_rows(tf, batch["image"][first:last], batch["index"][first:last], image_size, None, antialias,
                              image_format(builder))
        return {"image": images, "labels": batch["labels"], "index": batch["index"]}

    ds = ds.batch(batch_size).map(local_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for batch in tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)):
        image = pad_rows(batch.pop("image"), stop - start, 0)
        batch = {name: pad_rows(value, batch_size, -1 if name == "index" else 0) for name, value in batch.items()}
        batch["mask"] = batch["index"] >= 0
        batch["image"] = image
        yield batch


def pad_rows(value: np.ndarray, rows: int, fill) -> np.ndarray:
    """`value` padded with `fill` to `rows` rows."""
    pad = np.full((rows - len(value),) + value.shape[1:], fill, value.dtype)
    return np.concatenate([value, pad])
