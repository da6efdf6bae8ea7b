"""The timing loop the probe benchmarks share (``measures.py``, ``bounds.py``): the trainer's
``train_chunk`` and each of a probe's jit-compiled grid loops, alternated so that all see the
same machine load."""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np


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
