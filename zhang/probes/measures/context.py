"""What every measure of a trained replica is computed from, inside the one compiled program.

``zhang measures`` maps one replica's measures over the grid (``step.over_grid``: the plan's
vmap or loop, the run's mesh), so every function a measure group provides is a pure JAX
function of one replica's ``Replica`` (traced) and the run's ``Model`` (static): no Python
control flow on values, loops as ``jax.lax`` loops, and a fixed amount of work per replica.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

# The key prefix of a product measure's logarithm in a group's dict ("log:spectral_product"):
# float32 overflows past 3.4e38 (20 layers of inception_small at initialization multiply to
# 8.7e36), so the driver takes the product from its logarithm in float64
# (``compute.finish``).
LOG = "log:"


class Model(NamedTuple):
  """What every replica shares (static)."""
  # (params, batch_stats, x) -> float32 logits (B, classes), evaluation mode (batch norm on
  # its running statistics), in the run's compute dtype.
  logits: Callable
  module: Any  # the Flax Linen module (``zhang.experiment.models``)
  layers: tuple  # the model's linear layers (``zhang.probes.measures.net.layers``)
  chunk: int  # examples per pass in loops over ``Replica.x`` (bounds memory)
  # Hessian-vector products (``curvature.hvp``) where ``logits`` runs under the execution
  # plan's explicit CPU gradients (custom_vjp rules, ``zhang.runtime.layers``), which
  # forward mode cannot go through: ``reverse_hvp``, reverse over reverse through those
  # rules (a conv net's: the gradients' own convolutions take them too), or forward over
  # reverse through ``hvp_logits``, ``logits`` with JAX's own rules (an MLP's: faster
  # there). Neither: forward over reverse through ``logits``.
  hvp_logits: Callable | None = None
  reverse_hvp: bool = False


class Replica(NamedTuple):
  """One replica's arrays (traced; no replica axis inside the program)."""
  params: Any  # its parameters at the step measured
  init_params: Any  # its parameters at initialization (step 0)
  batch_stats: Any  # {} for models without batch norm
  x: jax.Array  # (m, ...) training examples as it evaluates them (randomized, whitened)
  y: jax.Array  # (m,) int32 its training labels, corrupted as it trained on them
  # (m,) float32: 1 for a real example, 0 for padding (m is a multiple of ``Model.chunk``);
  # every mean, percentile and accuracy counts the real examples only.
  valid: jax.Array
  key: jax.Array  # its PRNG key: replica r's draws from (seed, r) alone
