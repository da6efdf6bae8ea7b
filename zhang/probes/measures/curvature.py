"""Curvature of one replica's training loss at its parameters: the Hessian's top eigenvalue and
its trace (Keskar et al. 2017's sharp minima; Jastrzebski et al. 2018's Hessian trace).

The loss is the mean cross-entropy over the replica's real examples (``Replica.valid``) as it
evaluates them (``Model.logits``: batch norm on its running statistics), differentiated with
respect to ``params`` only. Both measures are built from Hessian-vector products (``hvp``:
forward-over-reverse, ``jax.jvp`` of ``jax.grad``, or reverse-over-reverse through a conv
net's explicit CPU gradients: ``Model.reverse_hvp``), each a sum over chunks of ``Model.chunk``
examples so that one chunk's activations are in memory at a time; the Hessian itself is never
formed.

- ``hessian_top``: power iteration from a Gaussian start, ``power_iterations`` products; the
  value is the Rayleigh quotient v.Hv of the last unit vector. Power iteration finds the
  eigenvalue of largest magnitude; at a trained network's minimum that is the top (positive)
  one, and after k steps the Rayleigh quotient's relative error is of order (l2/l1)^(2k).
- ``hessian_trace``: Hutchinson's estimator, the mean of z.Hz over ``trace_samples``
  Rademacher vectors z. It is unbiased with variance 2 (|H|_F^2 - sum_i H_ii^2) per sample.

The chunked loss, its gradient and ``hvp`` are also what ``zhang.probes.measures.flatness``
uses, and what a benchmark times (one ``hvp`` is one "replica-step" of this group). The
counts are in ``zhang.probes.measures.flatness.Settings`` (one settings object for both groups).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zhang.experiment import randomize


def stream(key, name: str):
  """A key for one measure's draws, independent of the others drawn from the same key."""
  return jax.random.fold_in(key, zlib.crc32(f"measures/{name}".encode()) & 0x7FFFFFFF)


def tree_dot(a, b):
  """sum over leaves of <a, b>, in float32."""
  return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def split_like(flat, tree):
  """``flat`` (one vector of every leaf's size) cut into ``tree``'s shapes and dtypes."""
  leaves, tree_def = jax.tree.flatten(tree)
  ends = np.cumsum([x.size for x in leaves])
  return jax.tree.unflatten(tree_def, [
      flat[end - x.size:end].reshape(x.shape).astype(x.dtype) for x, end in zip(leaves, ends)])


def normal_like(key, tree):
  """Standard normal noise of ``tree``'s shapes and dtypes: one Threefry stream of counters
  for all leaves (``randomize.example_normal``, cheaper than ``jax.random.normal`` on XLA
  CPU; one call, not one per leaf, compiles in a fraction of the time)."""
  size = sum(x.size for x in jax.tree.leaves(tree))
  return split_like(randomize.example_normal(key, (size,)), tree)


def rademacher_like(key, tree):
  """Independent +-1 entries of ``tree``'s shapes and dtypes."""
  size = sum(x.size for x in jax.tree.leaves(tree))
  return split_like(jnp.where(randomize.words(key, size) & 1, 1.0, -1.0), tree)


def sum_over_chunks(fn, model, rep):
  """sum over the replica's chunks k of ``fn(x_k, y_k, valid_k)`` (any pytree), as a
  fori_loop, so that one chunk's activations are in memory at a time."""
  c = model.chunk
  n = rep.x.shape[0] // c
  x = rep.x.reshape(n, c, *rep.x.shape[1:])
  y = rep.y.reshape(n, c)
  valid = rep.valid.reshape(n, c)
  shapes = jax.eval_shape(fn, x[0], y[0], valid[0])
  init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  body = lambda k, total: jax.tree.map(jnp.add, total, fn(x[k], y[k], valid[k]))
  return jax.lax.fori_loop(0, n, body, init)


def num_valid(rep):
  """The replica's count of real examples, at least 1 (a mean's denominator)."""
  return jnp.maximum(jnp.sum(rep.valid.astype(jnp.float32)), 1.0)


def chunk_loss(model, rep, params, x, y, valid):
  """The summed cross-entropy of one chunk's real examples at ``params``."""
  logits = model.logits(params, rep.batch_stats, x).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return jnp.sum(valid.astype(jnp.float32) * losses)


def loss(model, rep, params):
  """The mean training cross-entropy over the replica's real examples at ``params``."""
  total = sum_over_chunks(lambda x, y, v: chunk_loss(model, rep, params, x, y, v), model, rep)
  return total / num_valid(rep)


def loss_grad(model, rep, params):
  """The gradient of ``loss`` with respect to ``params``, summed over chunks."""
  grad = jax.grad(chunk_loss, argnums=2)
  total = sum_over_chunks(lambda x, y, v: grad(model, rep, params, x, y, v), model, rep)
  n = num_valid(rep)
  return jax.tree.map(lambda g: g / n.astype(g.dtype), total)


def hvp(model, rep, v):
  """H v, H the Hessian of ``loss`` at ``rep.params``, summed over chunks: the jvp of the
  gradient (through ``model.hvp_logits`` where given), or with ``model.reverse_hvp`` the
  gradient of <gradient, v> (the same sums)."""
  if model.hvp_logits is not None:
    model = model._replace(logits=model.hvp_logits)
  grad = jax.grad(chunk_loss, argnums=2)

  def chunk_hvp(x, y, valid):
    g = lambda p: grad(model, rep, p, x, y, valid)
    if model.reverse_hvp:
      return jax.grad(lambda p: tree_dot(g(p), v))(rep.params)
    return jax.jvp(g, (rep.params,), (v,))[1]

  total = sum_over_chunks(chunk_hvp, model, rep)
  n = num_valid(rep)
  return jax.tree.map(lambda h: h / n.astype(h.dtype), total)


def _scaled(tree, scale):
  return jax.tree.map(lambda x: (x * scale).astype(x.dtype), tree)


def top_eigenvalue(model, rep, key, iterations: int):
  """Power iteration on ``hvp``: the Rayleigh quotient of its last unit vector."""
  v = normal_like(key, rep.params)
  v = _scaled(v, jax.lax.rsqrt(tree_dot(v, v)))

  def body(_, carry):
    v, _ = carry
    hv = hvp(model, rep, v)
    rayleigh = tree_dot(v, hv)
    norm = jnp.sqrt(tree_dot(hv, hv))
    # A zero product (a loss flat in every direction) leaves v as it is.
    v = jax.tree.map(lambda a, b: jnp.where(norm > 0, a, b), _scaled(hv, 1.0 / norm), v)
    return v, rayleigh

  return jax.lax.fori_loop(0, iterations, body, (v, jnp.float32(0.0)))[1]


def trace(model, rep, key, samples: int):
  """Hutchinson's estimate of tr(H): the mean of z.Hz over Rademacher vectors z."""
  def body(i, total):
    z = rademacher_like(jax.random.fold_in(key, i), rep.params)
    return total + tree_dot(z, hvp(model, rep, z))

  return jax.lax.fori_loop(0, samples, body, jnp.float32(0.0)) / samples


def measures(model, rep, s) -> dict:
  """hessian_top and hessian_trace of one replica (float32 scalars); ``s`` is a
  ``flatness.Settings`` (its ``power_iterations`` and ``trace_samples``)."""
  return dict(
      hessian_top=top_eigenvalue(model, rep, stream(rep.key, "hessian_top"),
                                 s.power_iterations),
      hessian_trace=trace(model, rep, stream(rep.key, "hessian_trace"), s.trace_samples))
