"""Data-parallel sharding in one place: the mesh, the two shardings, and global batches.

One mesh axis, `data`, spans every device of every process.  Parameters and optimiser state
are replicated; each batch is split along its leading axis.  Every process feeds only its own
slice of the global batch (`process_index`-th block of `global_batch / process_count` rows) and
`global_batch` assembles the global `jax.Array` without any cross-host copy.
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh ('data',) over `devices` (default: all devices of all processes).

    The axis type is set to Auto deliberately: the partitioner propagates the batch sharding
    through the model, and plain indexing inside the model keeps working.
    """
    devices = np.asarray(jax.devices() if devices is None else list(devices))
    return Mesh(devices.reshape(-1), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (params, optimiser state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, microbatches: int = 1) -> None:
    """Raises ValueError unless every device gets the same whole number of samples per
    microbatch and every process the same number of rows."""
    devices = mesh.shape[DATA_AXIS]
    if global_batch_size % microbatches:
        raise ValueError(f"train.batch_size={global_batch_size} is not divisible by "
                         f"train.grad_accum_steps={microbatches}")
    if (global_batch_size // microbatches) % devices:
        raise ValueError(
            f"each microbatch ({global_batch_size // microbatches} samples) must split evenly "
            f"over the {devices} devices of the 'data' mesh axis; choose train.batch_size as a "
            f"multiple of {devices * microbatches}")
    if global_batch_size % jax.process_count():
        raise ValueError(f"train.batch_size={global_batch_size} is not divisible by the "
                         f"{jax.process_count()} processes")


def process_batch_size(global_batch_size: int) -> int:
    """Rows this process loads per step."""
    return global_batch_size // jax.process_count()


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """Per-process numpy batch (b, ...) -> global batch-sharded jax.Arrays (b * processes, ...).

    Each process passes the rows it loaded; with one process this is a plain sharded
    device_put.
    """
    sharding = batch_sharded(mesh)
    arrays = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        arrays[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return arrays


def put_replicated(tree, mesh: Mesh):
    """Host or device values -> replicated global arrays (same value on every process)."""
    return jax.device_put(tree, replicated(mesh))


def add_distributed_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """The multi-process flags of every command that can run on several hosts (train, eval).

    `what` says in --help what each process does (e.g. "each process evaluates a share of the
    sequences").  Defaults come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
    """
    parser.add_argument("--multihost", action="store_true",
                        help="call jax.distributed.initialize() with the environment's cluster "
                             "detection (Cloud TPU pod slices, SLURM)")
    parser.add_argument("--coordinator_address", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                        help=f"host:port of process 0 (explicit multi-process set-up; {what})")
    parser.add_argument("--num_processes", type=int,
                        default=int(os.environ.get("JAX_NUM_PROCESSES", "1")))
    parser.add_argument("--process_id", type=int, default=int(os.environ.get("JAX_PROCESS_ID", "0")))


def initialize_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` from the `add_distributed_flags` flags, else nothing."""
    if args.coordinator_address:
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    elif args.multihost:
        jax.distributed.initialize()  # TPU pod slices and SLURM are detected automatically
