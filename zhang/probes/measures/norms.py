"""Norm-based measures of one replica (group ``norms``) and its per-layer norms.

Sums and products run over the model's linear layers (``net.layers``: its Dense and Conv
kernels; biases, batch-norm scales and offsets, embeddings and attention are not layers,
``net`` says why); ``params`` counts every parameter but batch norm's, as the paper does
(``zhang.experiment.models.param_count``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from zhang.experiment import models
from zhang.probes.measures import context, net, spectral
from zhang.probes.measures.context import Model, Replica


def _kernels(model: Model, params) -> list:
  return [net.kernel(params, layer) for layer in model.layers]


def _frobenius(a):
  return jnp.sqrt(jnp.sum(jnp.square(a)))


def params_count(params) -> int:
  """Parameters of one replica's tree, batch-norm scales and offsets excluded (static)."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return sum(math.prod(leaf.shape) for path, leaf in leaves
             if not models.is_batch_norm_param(path))


def _path_norm_defined(model: Model, rep: Replica) -> bool:
  """Whether a forward pass of squared weights sums over the network's paths: no batch norm
  and no parameter outside a Dense or Conv layer (attention, embeddings). Static."""
  if jax.tree.leaves(rep.batch_stats):
    return False
  owned = {layer.path[:-1] for layer in model.layers}
  leaves = jax.tree_util.tree_flatten_with_path(rep.params)[0]
  names = [tuple(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]
  return all(n[:-1] in owned and n[-1] in ("kernel", "bias") for n in names)


def path_norm(model: Model, rep: Replica):
  """Neyshabur et al. (2015)'s L2 path norm: the model's own forward pass with every weight
  squared and every bias zero, on an all-ones input, its outputs summed.

  Through ReLU and Dense/Conv layers this is the sum over input-output paths of the product
  of the squared weights along them (a ReLU passes the nonnegative values unchanged). Max
  pooling and AlexNet's local response normalization are applied as the model applies them
  (Jiang et al. 2020's definition, f_{w^2}(1)): a max pool keeps the largest window entry,
  not the sum of its paths. NaN where no such forward pass exists: with batch norm (its
  normalization by batch statistics is not a product of weights along paths; squaring its
  scale does not make it one) and with parameters outside Dense/Conv layers (attention's
  softmax, embedding lookups). A token model's all-ones input is token id 1 everywhere: its
  value sums the paths from those tokens' units only.
  """
  if not _path_norm_defined(model, rep):
    return jnp.float32(jnp.nan)
  squared = jax.tree_util.tree_map_with_path(
      lambda p, w: jnp.zeros_like(w) if str(getattr(p[-1], "key", p[-1])) == "bias"
      else jnp.square(w), rep.params)
  ones = jnp.ones((1, *rep.x.shape[1:]), rep.x.dtype)
  return jnp.sum(model.logits(squared, rep.batch_stats, ones).astype(jnp.float32))


def measures(model: Model, rep: Replica) -> dict:
  """The group's measures of one replica. Over the layers' kernels W (W0 at initialization):
  frobenius_sum = sum ||W||_F^2, frobenius_product = prod ||W||_F^2, init_distance =
  sum ||W - W0||_F^2, init_distance_relative = mean ||W - W0||_F / ||W0||_F; params (every
  parameter but batch norm's) and path_norm (``path_norm``)."""
  kernels = _kernels(model, rep.params)
  inits = _kernels(model, rep.init_params)
  squared = jnp.stack([jnp.sum(jnp.square(w)) for w in kernels])
  distance = jnp.stack([jnp.sum(jnp.square(w - w0)) for w, w0 in zip(kernels, inits)])
  init = jnp.stack([jnp.sum(jnp.square(w0)) for w0 in inits])
  return {
      "params": jnp.float32(params_count(rep.params)),
      "frobenius_sum": jnp.sum(squared),
      "frobenius_product": jnp.prod(squared),
      "init_distance": jnp.sum(distance),
      "init_distance_relative": jnp.mean(jnp.sqrt(distance / init)),
      "path_norm": path_norm(model, rep),
      context.LOG + "frobenius_product": jnp.sum(jnp.log(squared)),
  }


def layer_details(model: Model, rep: Replica, iters: int = spectral.ITERS,
                  spectral_norms=None) -> dict:
  """Per-layer norms of one replica, each (L,) in the order of ``model.layers``
  (``net.names`` names them): "frobenius" ||W||_F, "init_distance_relative"
  ||W - W0||_F / ||W0||_F and "spectral" ||W||_2 (``spectral.norms``, or ``spectral_norms``
  when already computed; False leaves it out)."""
  if spectral_norms is None:
    spectral_norms = spectral.norms(model, rep.params, rep.key, iters)
  kernels = _kernels(model, rep.params)
  inits = _kernels(model, rep.init_params)
  out = {
      "frobenius": jnp.stack([_frobenius(w) for w in kernels]),
      "init_distance_relative": jnp.stack([_frobenius(w - w0) / _frobenius(w0)
                                           for w, w0 in zip(kernels, inits)]),
  }
  if spectral_norms is not False:  # False: leave them out (no power iterations)
    out["spectral"] = spectral_norms
  return out
