"""The output margin of one replica on its training set and the measures scaled by it (group
``margin``).

A replica's margin on an example is its logit for the label it trained on (corrupted as it
trained on it) less its largest other logit; gamma is a low percentile of those margins over
the training set (the 10th, Jiang et al. 2020's choice: the minimum is one example's and
noisy). Norm measures divided by gamma^2 are the scale-free forms their bounds take.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zhang.probes.measures.context import Model, Replica

Q = 10.0  # the percentile of the margins that is gamma

# The measures that have a ``<name>_over_margin`` form (m / gamma^2).
OVER_MARGIN = ("frobenius_sum", "frobenius_product", "spectral_product", "spectral_sum",
               "spectral_complexity", "path_norm")


def margins(model: Model, rep: Replica):
  """(m,) logit[y] - max over the other classes' logits for every training example (padding
  included), in passes of ``model.chunk`` examples."""
  m, chunk = rep.x.shape[0], model.chunk
  if m % chunk:
    raise ValueError(f"{m} examples are not a whole number of chunks of {chunk}")
  xs = rep.x.reshape(m // chunk, chunk, *rep.x.shape[1:])
  ys = rep.y.reshape(m // chunk, chunk)

  def one(batch):
    x, y = batch
    logits = model.logits(rep.params, rep.batch_stats, x).astype(jnp.float32)
    label = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    true = jnp.sum(jnp.where(label, logits, 0.0), axis=-1)
    other = jnp.max(jnp.where(label, -jnp.inf, logits), axis=-1)
    return true - other

  return jax.lax.map(one, (xs, ys)).reshape(m)


def percentile(values, valid, q: float):
  """The q-th percentile of ``values`` where ``valid`` is nonzero, interpolated linearly
  between the two nearest ranks (``numpy.percentile``'s default, method="linear"); NaN
  without valid entries. Fixed work: one sort of all entries, the invalid ones last."""
  keep = valid > 0
  n = jnp.sum(keep)
  ranked = jnp.sort(jnp.where(keep, values, jnp.inf))
  position = (q / 100.0) * (jnp.maximum(n, 1) - 1).astype(jnp.float32)
  lo = jnp.floor(position).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(n, 1) - 1)
  fraction = position - lo
  value = ranked[lo] + fraction * (ranked[hi] - ranked[lo])
  return jnp.where(n > 0, value, jnp.nan)


def margin(model: Model, rep: Replica, q: float = Q):
  """gamma: the q-th percentile of the margins over the replica's real training examples."""
  return percentile(margins(model, rep), rep.valid, q)


def _over_square(value, gamma):
  """value / gamma^2, NaN where gamma <= 0 (the replica misclassifies over q% of its training
  set, where the bounds these measures come from say nothing)."""
  positive = gamma > 0
  return jnp.where(positive, value / jnp.square(jnp.where(positive, gamma, 1.0)), jnp.nan)


def measures(model: Model, rep: Replica, gamma=None, q: float = Q) -> dict:
  """inverse_margin = 1 / gamma^2 (NaN where gamma <= 0) of one replica; ``gamma`` when
  already computed (``margin``)."""
  if gamma is None:
    gamma = margin(model, rep, q)
  return {"inverse_margin": _over_square(jnp.float32(1.0), gamma)}


def over_margin(values: dict, gamma) -> dict:
  """``<name>_over_margin`` = value / gamma^2 for each name of ``OVER_MARGIN`` in ``values``
  (NaN where gamma <= 0); traced or on the host alike."""
  return {f"{name}_over_margin": _over_square(values[name], gamma)
          for name in OVER_MARGIN if name in values}
