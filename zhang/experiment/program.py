"""A grid's compiled program (``compile_grid``): the train chunk (``step.py``) and the
evaluation (``evaluate.py``) jit-compiled for every replica under one execution plan,
sharded over the mesh's replica axis."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zhang.experiment import evaluate as evaluate_lib
from zhang.experiment import step as step_lib
from zhang.runtime.plan import Plan


class GridProgram(NamedTuple):
  """A grid's compiled functions and the plan they were compiled under."""
  settings: step_lib.StepSettings
  plan: Plan
  init: Callable  # (init key, sample input) -> TrainState
  # (states, reps, data, step0, num_steps[, loss sum[, frozen]]) -> (states, loss sum)
  train_chunk: Callable
  evaluate: Callable  # (states, reps, data) -> dict of (R,) metrics
  # (states, reps, data, fit_since, step) -> (metrics, fit_since): per-example fit times
  evaluate_and_track: Callable
  # (states, reps, data, batches, step0, num_steps, loss sum[, frozen]) -> (states, loss
  # sum): ``train_chunk`` on the streaming path's batches
  stream_chunk: Callable = None
  # (states, reps, data, images, labels, indices, valid, is_test) -> (sums, bins, hits): one
  # batch of a streamed evaluation; (states, reps, train sums, test sums, bins, n_train,
  # n_test) -> metrics: its end
  stream_eval: Callable = None
  stream_metrics: Callable = None


def compile_grid(module, s: step_lib.StepSettings, has_batch_norm: bool, plan: Plan,
                 mesh=None, lr_scales=None) -> GridProgram:
  """The jit-compiled train chunk and evaluation of a grid.

  With a ``mesh`` (axes ``replica``, ``data``), the state stays sharded on ``replica``, a
  batch is split on ``data`` too, and the small outputs (losses, metrics) come back
  replicated so every process can read them. The train chunk takes the states' buffers
  (donated), the tracked evaluation the fit times'.
  """
  g = step_lib.grid_functions(module, s, has_batch_norm, plan, mesh, lr_scales)
  jit = functools.partial(jax.jit, compiler_options=plan.compiler_options() or None)
  chunk, track, metrics = {}, {}, {}
  if mesh is not None:
    by_replica, everywhere = NamedSharding(mesh, P("replica")), NamedSharding(mesh, P())
    chunk = dict(out_shardings=(by_replica, everywhere))
    metrics = dict(out_shardings=everywhere)
    track = dict(out_shardings=(everywhere, by_replica))
  return GridProgram(
      s, plan, functools.partial(step_lib.init_state, module, s, lr_scales=lr_scales),
      jit(functools.partial(step_lib.train_chunk, g), donate_argnums=(0,), **chunk),
      jit(functools.partial(evaluate_lib.evaluate, g), **metrics),
      jit(functools.partial(evaluate_lib.evaluate_and_track, g), donate_argnums=(3,), **track),
      jit(functools.partial(step_lib.stream_chunk, g), donate_argnums=(0,), **chunk),
      jit(functools.partial(evaluate_lib.stream_eval_batch, g), **metrics),
      jit(functools.partial(evaluate_lib.stream_metrics, g), static_argnums=(5, 6), **metrics))
