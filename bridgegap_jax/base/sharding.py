"""Data parallelism as jax.jit over a one-axis device mesh (the modern form of pmap).

Parameters, batch statistics and optimizer state are replicated; batches are sharded along
'data'. Under jit, BatchNorm's batch statistics are computed over the global batch, so a global
batch of 16 behaves exactly like the reference's single-GPU batch of 16 on any device count.
The same code runs on one device, several, or several hosts (one process per host).
"""

from __future__ import annotations

import collections
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 'data' mesh of `devices` (default: all), each process's devices one contiguous block.

    The input pipeline gives process p rows [p*L, (p+1)*L) of every global batch, so process p's
    devices must hold exactly those rows: order by process first (jax.devices() does not promise it).
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id))), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def to_global(mesh: Mesh, local: np.ndarray) -> jax.Array:
    """This process's rows of a batch -> one global array sharded along 'data'."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), local)


def to_host(array: jax.Array) -> np.ndarray:
    """A (possibly multi-host) global array, gathered whole on every process."""
    if array.is_fully_addressable:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def connect_processes() -> None:
    """With several processes, one small collective over each group of devices a run uses (a device of
    each process: the lock, checkpoints; all of them: steps, gathers), right after
    jax.distributed.initialize, while the processes are together. On CPU hosts gloo opens a group's
    connections at its first collective and gives the processes 30 s (fixed) to meet there; at a
    run's own first collectives a loaded or slow host can be further behind (importing, reading its
    data, compiling), and the run failed with 'Gloo context initialization failed'. Open connections
    stay; a collective waits for the others far longer (30 minutes)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.broadcast_one_to_all(np.zeros((), np.int32))
    mesh = make_mesh()
    to_host(to_global(mesh, np.zeros(len(mesh.local_devices), np.int32)))


def prefetch_to_device(
    batches: Iterator[dict], mesh: Mesh, keys: Sequence[str], depth: int = 2
) -> Iterator[tuple[dict, dict]]:
    """(host batch, {key: global device array}) pairs, `depth` batches ahead of the consumer.

    The copies are dispatched asynchronously, so the next batches travel to the devices while the
    current step runs. `batches` must already be final on the host (e.g. LL-Cp's corrections applied).
    """
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append((batch, {key: to_global(mesh, batch[key]) for key in keys}))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
