"""The data-parallel device mesh and moving host batches onto it.

One 1-D mesh, axis "data", over every device of every process. Training
batches are split along "data"; state and metrics are replicated. Two ways
in for host arrays, depending on what each process holds:
  `local_to_global`: each process holds its own slice of the batch (training:
      per-process grain shards) -> one global array;
  `same_to_global`: every process holds the same whole array (evaluation
      batches, previews) -> one global array, each device taking its part.
Outputs meant for the host are compiled with `replicated(mesh)` out-shardings,
so `jax.device_get` works in every process.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def data_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
    return jax.NamedSharding(mesh, jax.P("data"))


def replicated(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
    return jax.NamedSharding(mesh, jax.P())


def local_to_global(tree: Any, sharding: jax.NamedSharding) -> Any:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def same_to_global(tree: Any, sharding: jax.NamedSharding) -> Any:
    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(put, tree)
