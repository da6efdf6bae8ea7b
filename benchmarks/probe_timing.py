"""What the probe benchmarks share (``measures.py``, ``bounds.py``): a config's grid built as
the trainer builds it, and the timing loop of the trainer's ``train_chunk`` and each of a
probe's jit-compiled grid loops, alternated so that all see the same machine load."""

from __future__ import annotations

import functools
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from zhang.experiment import config as config_lib
from zhang.experiment import step as step_lib
from zhang.experiment import train
from zhang.probes import run as run_lib
from zhang.runtime import mesh as mesh_lib


def grid(config_arg: str) -> types.SimpleNamespace:
  """The config's grid as the trainer builds it: config, replicas, program, d (the device
  dataset), reps, states (at initialization) and run (``zhang.probes.run.from_config``).
  ``freeze_at_fit`` is turned off: the plain train step is the yardstick (the freeze mask is
  one traced value per replica)."""
  config = config_lib.load(config_arg)
  config.freeze_at_fit = False
  config = config_lib.resolve(config)
  replicas = config_lib.expand_grid(config)
  program, d, reps, states, _ = train.build(config, replicas, train.load_dataset(config))
  return types.SimpleNamespace(config=config, replicas=replicas, program=program, d=d,
                               reps=reps, states=states, run=run_lib.from_config(config))


def grid_loops(run, replica, kinds) -> dict:
  """{kind: a jit-compiled function of (params, batch stats, x, y, valid) over every replica
  of the run's grid (``step.over_grid``, its plan and mesh; ``valid`` shared)} of
  ``replica(kind, params, batch_stats, x, y, valid)``."""
  out = {}
  for kind in kinds:
    g = step_lib.over_grid(run.plan, run.mesh, functools.partial(replica, kind),
                           replicated=(1,))
    out[kind] = jax.jit(lambda p, bs, x, y, valid, g=g: g(p, bs, x, y, valid),
                        out_shardings=mesh_lib.replicated(run.mesh))
  return out


def best_seconds(program, states, reps, d, steps: int, loops: dict, fixed: tuple,
                 repeats: int) -> dict:
  """{"train": ..., each loop's name: ...}: the best of ``repeats`` timed calls of each
  after one compiling call, alternated; the train call runs ``steps`` steps of ``program``
  from ``states``, each loop is called on ``fixed``."""
  def train_seconds():
    nonlocal states
    t0 = time.perf_counter()
    states, loss = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(steps))
    np.asarray(loss)
    return time.perf_counter() - t0

  def loop_seconds(fn):
    t0 = time.perf_counter()
    np.asarray(fn(*fixed))
    return time.perf_counter() - t0

  timers = {"train": train_seconds,
            **{name: (lambda fn=fn: loop_seconds(fn)) for name, fn in loops.items()}}
  for timer in timers.values():
    timer()  # compiles
  best = {}
  for _ in range(repeats):
    for name, timer in timers.items():
      best[name] = min(best.get(name, np.inf), timer())
  return best
