"""Input pipeline: tfds ArrayRecord sources -> grain workers -> this process's rows of each global batch.

A run reads a fixed sequence of global batches, its *plan*: a list of segments (each training
epoch, each evaluation pass), so batch i of the plan is a pure function of i. grain maps plan
positions to batches in worker processes, keeping their order; resuming at any position reads
nothing before it (O(one batch), not O(steps done)). One worker pool serves the whole run, so
validation batches are decoded while the last training steps run.

- Training order: a full permutation of the training split per epoch, a function of (seed, epoch)
  only, so every process count sees the same global batches. The last batch keeps its real size,
  as the reference's DataLoader does, cut to a multiple of the device count so it splits evenly.
- Each process fetches and decodes only its own rows: rows [p*L, (p+1)*L) of every global batch.
- Images leave the host as uint8 (S, S, 3); normalisation runs on the device. A training image is
  flipped by a draw keyed by (seed, epoch, example index): the same whatever reads it.
- Evaluation reads every example once, in stored order; the last batch is padded (index -1) so
  one compiled eval shape serves all batches.
"""

from __future__ import annotations

import dataclasses
import mmap
import signal
from typing import Iterator, Sequence

import numpy as np

from bridgegap_jax.data import images, masks
from bridgegap_jax.data.catalog import Dataset

TRAIN_LABELS = {"observed": "labels_obs", "full": "labels"}


@dataclasses.dataclass(frozen=True)
class Segment:
    """`num_batches` consecutive batches of `split`: a training epoch (epoch >= 1) or an evaluation pass."""

    split: str
    num_batches: int
    epoch: int = 0  # 0: evaluation (stored order, full labels, padded, no flip)


@dataclasses.dataclass(frozen=True)
class Options:
    """The pipeline's settings, from a config that configuration.check accepted (pipeline_options)."""

    image_size: int
    batch_size: int  # global training batch
    eval_batch_size: int  # global evaluation batch
    seed: int = 0
    resize: str = "bilinear"  # images.RESIZE_METHODS
    random_flip: bool = True
    train_labels: str = "observed"  # 'observed' (partial labels) | 'full'
    observation: str = "stored"  # datasets/masks.py
    observation_seed: int = 1200
    process_index: int = 0
    process_count: int = 1
    row_multiple: int = 1  # the device count: every global batch splits evenly over the devices


def last_batch_rows(num_examples: int, options: Options) -> int:
    """Rows of an epoch's last, smaller batch after the cut to the device count (0: none)."""
    return num_examples % options.batch_size // options.row_multiple * options.row_multiple


def steps_per_epoch(num_examples: int, options: Options) -> int:
    return num_examples // options.batch_size + (last_batch_rows(num_examples, options) > 0)


def eval_batch_count(num_examples: int, options: Options) -> int:
    return -(-num_examples // options.eval_batch_size)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The training order of `epoch`: a permutation of all examples, the same on every process."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def flips(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """(B,) bool: which examples `index` are flipped in `epoch`, keyed by (seed, epoch, index)."""
    return np.asarray([np.random.default_rng([seed, epoch, int(i), 1]).random() < 0.5 for i in index], bool)


class BatchReader:
    """Plan position -> this process's rows of that global batch. Runs in grain's worker processes.

    Training batch: {'image' uint8 (L,S,S,3), 'labels' int8 (L,C) observed labels, 'index' (L,)
    these rows' examples, 'batch_index' (n,) every example of the global batch}.
    Evaluation batch: {'image', 'labels' (full labels), 'index' (-1 on padded rows)}, L rows.
    """

    def __init__(self, dataset: Dataset, segments: Sequence[Segment], options: Options):
        self.dataset, self.segments, self.options = dataset, tuple(segments), options
        self.starts = np.cumsum([0] + [s.num_batches for s in self.segments])
        self._sources, self._permutations = {}, {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):  # sources and permutations are made anew in each worker
        return {**self.__dict__, "_sources": {}, "_permutations": {}}

    def segment_start(self, segment: int) -> int:
        """Plan position of the first batch of segment `segment`."""
        return int(self.starts[segment])

    def __call__(self, position: int) -> dict[str, np.ndarray]:
        segment = int(np.searchsorted(self.starts, position, side="right")) - 1
        part, batch = self.segments[segment], int(position - self.starts[segment])
        if part.epoch:
            return self._train_batch(part, batch)
        return self._eval_batch(part, batch)

    def _source(self, split: str):
        if split not in self._sources:
            self._sources[split] = self.dataset.source(split)
        return self._sources[split]

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:  # one epoch at a time: OpenImages' is 27 MB
            self._permutations = {
                epoch: epoch_permutation(self.options.seed, epoch, self.dataset.split_sizes["train"])
            }
        return self._permutations[epoch]

    def _read(self, split: str, index: np.ndarray, flip: np.ndarray | None = None):
        """(images (L,S,S,3), records) of examples `index`: only these records are read."""
        o = self.options
        try:
            records = self._source(split).__getitems__([int(i) for i in index]) if len(index) else []
        except Exception as error:  # noqa: BLE001 - array_record reports damage as RuntimeError and others
            raise self.dataset.damaged(split, error) from None
        out = np.empty((len(index), o.image_size, o.image_size, 3), np.uint8)
        for row, record in enumerate(records):
            try:
                image = images.decode_and_resize(record["image"], o.image_size, o.resize)
            except images.DecodeError as error:
                raise images.DecodeError(
                    f"{self.dataset.directory}, split {split}, example {int(index[row])} (image "
                    f"{record['image_id'].decode(errors='replace')}): {error}; re-run the prepare command, which "
                    "drops unreadable images"
                ) from None
            out[row] = image[:, ::-1] if flip is not None and flip[row] else image
        return out, records

    def _train_batch(self, part: Segment, step: int) -> dict[str, np.ndarray]:
        o = self.options
        batch_index = self._permutation(part.epoch)[step * o.batch_size :][: o.batch_size]
        batch_index = batch_index[: len(batch_index) // o.row_multiple * o.row_multiple]
        rows = len(batch_index) // o.process_count
        index = batch_index[o.process_index * rows :][:rows]
        flip = flips(o.seed, part.epoch, index) if o.random_flip else None
        image, records = self._read(part.split, index, flip)
        parsed = masks.parse(o.observation)
        if parsed is None:
            labels = _stack(records, TRAIN_LABELS[o.train_labels], self.dataset.num_classes)
        else:
            labels = masks.observe(
                _stack(records, "labels", self.dataset.num_classes),
                index,
                mode=o.observation,
                seed=o.observation_seed,
                encoding=self.dataset.label_encoding,
            )
        return {
            "image": image,
            "labels": labels,
            "index": index.astype(np.int64),
            "batch_index": batch_index.astype(np.int64),
        }

    def _eval_batch(self, part: Segment, batch: int) -> dict[str, np.ndarray]:
        o = self.options
        rows = o.eval_batch_size // o.process_count
        first = batch * o.eval_batch_size + o.process_index * rows
        index = np.arange(first, min(first + rows, self.dataset.split_sizes[part.split]), dtype=np.int64)
        image, records = self._read(part.split, index)
        labels = _stack(records, "labels", self.dataset.num_classes)
        pad = rows - len(index)
        return {
            "image": np.concatenate([image, np.zeros((pad,) + image.shape[1:], np.uint8)]),
            "labels": np.concatenate([labels, np.zeros((pad, labels.shape[1]), np.int8)]),
            "index": np.concatenate([index, np.full(pad, -1, np.int64)]),
        }


def _stack(records, key: str, num_classes: int) -> np.ndarray:
    if not records:
        return np.zeros((0, num_classes), np.int8)
    return np.stack([np.asarray(r[key], np.int8) for r in records])


def default_workers() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # as run/stopping.py's


def _init_worker(worker_index: int, worker_count: int) -> None:
    """Each grain worker ignores Ctrl-C, SIGTERM and SIGHUP, which a terminal (pressed, or closed) or a
    preempted machine sends to every process: the training process stops at its next batch and
    closes the stream, which stops the workers and frees the shared memory of their batches. Stopped themselves, they would print
    tracebacks, leak it, and fail the batches the training process still needs to reach its stop.
    (They start with these signals blocked, see Stream, so none lands before this runs.)

    A training process that is killed (kill -9, out of memory) cannot stop its workers, and they would
    go on forever: each one exits when it sees that its parent is gone."""
    import os
    import threading
    import time

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)  # what is pending is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    parent = os.getppid()

    def exit_with_the_parent():
        while os.getppid() == parent:  # an orphan is adopted by init (or a subreaper)
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_the_parent, name="exit-with-the-parent", daemon=True).start()


def _own_mapping(array: np.ndarray) -> np.ndarray:
    """`array`, if grain handed it over in shared memory, as a plain array on a mapping of its own.

    grain's SharedMemoryArray unlinks its segment in __del__. One still referenced while the
    interpreter shuts down (by an exception's traceback, a caller's global) meets a __del__ that can no
    longer run: the segment stays, and the resource tracker reports it as leaked at exit. A plain
    array on a second mapping of the same memory has no __del__: grain's array is dropped at once (its
    own thread pool unlinks the name), and the memory stays mapped until the plain array is freed,
    whenever that is. No copy: a mapping costs a system call, and the pages are read once either way.
    """
    shm = getattr(array, "shm", None)
    if shm is None:  # small or empty arrays travel pickled, not in shared memory
        return array
    memory = mmap.mmap(shm._fd, shm.size)  # dups the descriptor: independent of grain's mapping
    return np.frombuffer(memory, array.dtype, count=array.size).reshape(array.shape)


class Stream:
    """The plan's batches from position `start` on, decoded by `workers` processes (0: this process).

    Iterate it, and `close()` it when done (it is also a context manager): the workers and their
    shared memory are released at once, not at interpreter exit. The batches it gives are plain
    arrays that may outlive it (_own_mapping).
    """

    def __init__(self, reader: BatchReader, start: int = 0, workers: int = 0, buffer_per_worker: int = 2):
        from multiprocessing import resource_tracker

        import grain
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads absl flags; a library caller may not have parsed any
            flags.FLAGS.mark_as_parsed()
        # grain starts worker i, from threads of its own, when batch i is first asked for. Blocked
        # signals are inherited (by threads and processes), so until `workers` batches have come, a
        # stop signal cannot reach a worker before _init_worker ignores them; this process takes
        # them in another of its threads, or once they are unblocked. (multiprocessing's resource
        # tracker unblocks them in the thread that starts it: it is started here, before.)
        self._starting = workers
        self._blocked = None
        if workers > 0:
            # The tracker ignores SIGINT and SIGTERM, not SIGHUP; started with it blocked, it keeps it
            # blocked, and a closed terminal does not end it (its shared memory would leak).
            self._blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            resource_tracker.ensure_running()
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        dataset = grain.MapDataset.range(start, len(reader)).map(reader)
        iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        if workers > 0:
            iterable = iterable.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer_per_worker),
                worker_init_fn=_init_worker,
            )
        self._iterator = iter(iterable)

    def _unblock(self) -> None:
        if self._blocked is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._blocked)
            self._blocked = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            return {key: _own_mapping(value) for key, value in next(self._iterator).items()}
        finally:
            self._starting -= 1
            if self._starting <= 0:
                self._unblock()

    def take(self, count: int) -> Iterator[dict[str, np.ndarray]]:
        """The next `count` batches (one segment)."""
        for _ in range(count):
            yield next(self)

    def close(self) -> None:
        import gc

        from grain._src.python.ipc import shared_memory_array

        self._unblock()
        self._iterator.close()
        self._iterator = None
        # The batches still in grain's buffers are in shared memory that is unlinked when their arrays
        # are collected, by a thread pool of grain's: collect them now and wait for that pool, or the
        # segments would outlive the run (and the resource tracker would warn about them at exit).
        gc.collect()
        pool = shared_memory_array.SharedMemoryArray._del_thread_pool
        if pool is not None:
            shared_memory_array.SharedMemoryArray._del_thread_pool = None
            pool.close()
            pool.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def eval_plan(dataset: Dataset, split: str, options: Options) -> list[Segment]:
    """One evaluation pass over `split`."""
    return [Segment(split, eval_batch_count(dataset.split_sizes[split], options))]


def run_plan(dataset: Dataset, options: Options, num_epochs: int) -> list[Segment]:
    """Every epoch's training batches and validation pass, then the test pass."""
    train = steps_per_epoch(dataset.split_sizes["train"], options)
    plan = []
    for epoch in range(1, num_epochs + 1):
        plan += [Segment("train", train, epoch)] + eval_plan(dataset, "validation", options)
    return plan + eval_plan(dataset, "test", options)
