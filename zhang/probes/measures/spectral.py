"""Spectral norms of the linear layers and the measures built on them (group ``spectral``).

A layer's spectral norm is the largest singular value of its linear map at the input shape
the model feeds it (``net.Layer``): for a Dense layer that is its kernel's, for a convolution
the operator's over the whole image with its own padding and strides, not its kernel
reshaped. Both come from one procedure, power iteration on J^T J, with J^T the transpose
of the layer's map (``jax.linear_transpose``): no matrix is formed, and a fixed number of
iterations keeps the work the same for every replica.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zhang.probes.measures import context, net
from zhang.probes.measures.context import Model, Replica

# Power iterations per layer. tests/test_measures_norms.py checks that this many reach 1e-3
# relative of the SVD's value on the digits MLP and on a small conv net, at initialization,
# where singular values crowd the top of the spectrum and convergence is slowest.
ITERS = 300

_SALT = 0x5bec  # folded into the replica's key: draws apart from other measures'


def _norm(layer: net.Layer, kernel, key, iters: int):
  """Largest singular value of ``layer.linear(kernel, .)`` by ``iters`` power iterations."""
  shape = (1, *layer.input_shape)
  forward = lambda x: layer.linear(kernel, x)
  spec = jax.ShapeDtypeStruct(shape, kernel.dtype)
  backward = jax.linear_transpose(forward, spec)

  def step(_, v):
    w = backward(forward(v))[0]
    return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny)

  v = jax.random.normal(key, shape, kernel.dtype)
  v = jax.lax.fori_loop(0, iters, step, v / jnp.linalg.norm(v))
  return jnp.linalg.norm(forward(v))


def norms(model: Model, params, key, iters: int = ITERS):
  """(L,) the spectral norm of each of ``model.layers`` at ``params`` (one replica's)."""
  keys = jax.random.split(jax.random.fold_in(key, _SALT), max(1, len(model.layers)))
  return jnp.stack([_norm(layer, net.kernel(params, layer), k, iters)
                    for layer, k in zip(model.layers, keys)])


def _two_one(layer: net.Layer, params, init_params):
  """||(A - M)^T||_{2,1}: the sum over output units of the l2 norm of their weights' change.
  A kernel, dense (in, out) or conv (kh, kw, in, out), is taken as (fan_in, out), one
  column per output unit (a conv's unit is a channel, its weights shared across positions)."""
  change = net.kernel(params, layer) - net.kernel(init_params, layer)
  change = change.reshape(-1, change.shape[-1])
  return jnp.sum(jnp.linalg.norm(change, axis=0))


def measures(model: Model, rep: Replica, iters: int = ITERS, spectral=None) -> dict:
  """spectral_product, spectral_sum and spectral_complexity of one replica.

  spectral_complexity is Bartlett, Foster & Telgarsky (2017)'s R_A squared, with the
  initialization as the reference matrices M_i:
  (prod ||A_i||_2)^2 (sum (||(A_i - M_i)^T||_{2,1} / ||A_i||_2)^(2/3))^3.

  Args:
    spectral: (L,) the layers' spectral norms when already computed (``norms``), else they
      are computed here from ``rep.key``.
  """
  if spectral is None:
    spectral = norms(model, rep.params, rep.key, iters)
  squared = jnp.square(spectral)
  product = jnp.prod(squared)
  ratios = jnp.stack([_two_one(layer, rep.params, rep.init_params)
                      for layer in model.layers]) / spectral
  spread = jnp.sum(ratios ** (2.0 / 3.0)) ** 3
  log_product = jnp.sum(jnp.log(squared))  # float32 products overflow on deep networks
  return {"spectral_product": product, "spectral_sum": jnp.sum(squared),
          "spectral_complexity": product * spread,
          context.LOG + "spectral_product": log_product,
          context.LOG + "spectral_complexity": log_product + jnp.log(spread)}
