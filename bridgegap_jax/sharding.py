"""Data parallelism as jax.jit over a one-axis device mesh (the modern form of pmap).

Parameters, batch statistics and optimizer state are replicated; batches are sharded along
'data'. Under jit, BatchNorm's batch statistics are computed over the global batch, so a global
batch of 16 behaves exactly like the reference's single-GPU batch of 16 on any device count.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


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
