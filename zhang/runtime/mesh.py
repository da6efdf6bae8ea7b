"""The device mesh, shardings, padding of the grid, and multi-host start-up.

The mesh has two axes: ``replica`` (the stacked train state and every per-replica array are
split along it) and ``data`` (a replica's batch is split along it, for replicas whose batch
is large). The dataset is replicated. ``mesh_shape`` in the config gives the axis sizes;
-1 takes the devices left over (the default ``(-1, 1)`` puts every device on ``replica``).
Axes are Auto: XLA's partitioner places the collectives.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zhang.errors import UsageError

AXES = ("replica", "data")


def resolve_shape(mesh_shape, num_devices: int) -> tuple[int, int]:
  """Replaces a -1 in ``mesh_shape`` and checks the product is the device count."""
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != 2 or any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
    raise UsageError(f"mesh_shape={tuple(mesh_shape)} must be (replica, data) sizes, "
                     f"positive or one -1, e.g. (-1, 1)")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise UsageError(f"mesh_shape={shape} does not divide the {num_devices} devices: "
                       f"use sizes whose product is {num_devices}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise UsageError(f"mesh_shape={shape} needs {math.prod(shape)} devices but "
                     f"{num_devices} are available: use sizes whose product is "
                     f"{num_devices}, or -1 for one axis")
  return shape


def make_mesh(mesh_shape) -> jax.sharding.Mesh:
  shape = resolve_shape(mesh_shape, jax.device_count())
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def replica_sharding(mesh) -> NamedSharding:
  """Leading axis on ``replica``, the rest whole."""
  return NamedSharding(mesh, P("replica"))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def pad(replicas: list, multiple: int) -> list:
  """Pads the grid to a multiple of the replica axis with inert copies of its last replica.

  The copies train like the original (same kind, so they join its kind's group) and are
  never reported: outputs cover ``replicas[:len(real)]`` only.
  """
  extra = (-len(replicas)) % multiple
  last = replicas[-1]
  return list(replicas) + [dataclasses.replace(last, index=len(replicas) + i)
                           for i in range(extra)]


def put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host array (the same on every process) as a global array with ``sharding``."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def joins_peers(num_processes=None, auto: bool = False) -> bool:
  """Whether ``initialize_distributed`` with these arguments (or $ZHANG_NUM_PROCESSES) would
  wait for other processes."""
  num_processes = num_processes or int(os.environ.get("ZHANG_NUM_PROCESSES", "0") or 0)
  return bool(auto or num_processes > 1)


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                           auto: bool = False) -> None:
  """Starts JAX's multi-controller runtime when the run spans several processes.

  Explicit arguments (or $ZHANG_COORDINATOR_ADDRESS, $ZHANG_NUM_PROCESSES,
  $ZHANG_PROCESS_ID) for CPU/GPU clusters; ``auto`` for Cloud TPU VMs, where JAX reads
  everything from the TPU metadata. One process and no ``auto``: nothing to do.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("ZHANG_COORDINATOR_ADDRESS")
  num_processes = num_processes or int(env.get("ZHANG_NUM_PROCESSES", "0") or 0)
  if process_id is None and env.get("ZHANG_PROCESS_ID"):
    process_id = int(env["ZHANG_PROCESS_ID"])
  if auto and not num_processes:
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # no TPU metadata (or cluster) to detect
      reason = " ".join(str(e).split())[:120]
      raise UsageError(f"--distributed found no cluster to join ({reason}): it is for Cloud "
                       f"TPU VMs; elsewhere give --coordinator_address HOST:PORT, "
                       f"--num_processes and --process_id (or run one process without "
                       f"these flags)") from None
    return
  if not num_processes or num_processes == 1:
    return
  if not coordinator_address:
    raise UsageError(f"--num_processes={num_processes} needs --coordinator_address "
                     f"HOST:PORT (process 0's address, reachable from every process)")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise UsageError(f"--coordinator_address={coordinator_address} must be HOST:PORT, e.g. "
                     f"10.0.0.2:8476 (process 0's address, reachable from every process)")
  if num_processes < 1:
    raise UsageError(f"--num_processes={num_processes} must be >= 1")
  if process_id is None or not 0 <= process_id < num_processes:
    raise UsageError(f"--process_id={process_id} must be in [0, {num_processes}) "
                     f"when --num_processes={num_processes}")
  if jax.config.jax_platforms in (None, "", "cpu") and not _has_accelerator_plugin():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def _has_accelerator_plugin() -> bool:
  import importlib.util
  return any(importlib.util.find_spec(m) is not None
             for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))
