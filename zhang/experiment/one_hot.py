"""A Dense layer on one-hot inputs, computed as the rows it selects: mlp_tokens' first layer.

``OneHotDense`` has ``nn.Dense``'s parameters and forward values on inputs that are
concatenated one-hot blocks (a token each, perhaps scaled), but computes x @ kernel as the sum
of the tokens' kernel rows and the kernel's gradient as a scatter-add of those rows, instead
of products over the zeros: for modadd's default MLP the layer was two thirds of the step's
FLOPs. Under ``jax.vmap`` (a stack of replicas) the gather and the scatter run on the stacked
kernels as one table (their own batching rules), which XLA CPU runs several times faster than
the batched gather ``vmap`` would make.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import custom_batching


class OneHotDense(nn.Dense):
  """``nn.Dense`` on inputs that are concatenated one-hot blocks of ``vocab`` entries (each
  block one nonzero value, a token's, perhaps scaled): x @ kernel computed as the sum of the
  tokens' kernel rows times their values, and the kernel's gradient as those rows' sums
  (a scatter-add) instead of dense products over the zeros. The same parameters, forward
  values (a sum of the same nonzero terms) and gradients up to float rounding as
  ``nn.Dense``; the input's gradient is the Dense one (dy @ kernel^T, left to XLA to drop
  where nothing needs it). It is an ``nn.Dense``, so the tangent kernel factors it as one
  (``zhang.probes.ntk.empirical``) and ``zhang.runtime.flops`` counts its additions.

  ``unit_values``: the caller's promise that every nonzero entry is 1 (plain one-hot
  vectors), so the rows are added and scattered without multiplying them by their values,
  two (B, features) products fewer per step."""
  vocab: int = 0
  unit_values: bool = False

  @nn.compact
  def __call__(self, inputs):
    kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = one_hot_product(inputs, kernel, self.vocab, self.unit_values)
    return y + bias if bias is not None else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def one_hot_product(x, kernel, vocab: int, unit_values: bool = False):
  """x (B, T vocab) @ kernel (T vocab, F) for x with one nonzero per block of ``vocab``
  (each 1 if ``unit_values``)."""
  return _row_ops(unit_values)[0](kernel, *_one_hot_rows(x, vocab))


def _one_hot_rows(x, vocab: int):
  """The kernel row of each block's nonzero entry (B, T) and its value (B, T), as arrays of
  their own: left to fuse, XLA recomputes both (an argmax over the block) for every element
  of the (B, F) products that read them."""
  blocks = x.reshape(x.shape[0], -1, vocab)
  # Sums over each block, which has one nonzero term: faster than an argmax and a gather.
  ids = jnp.sum(jnp.where(blocks != 0, jnp.arange(vocab, dtype=jnp.int32), 0), axis=-1)
  values = jnp.sum(blocks, axis=-1)
  return jax.lax.optimization_barrier((ids + vocab * jnp.arange(blocks.shape[1]), values))


def _one_hot_fwd(x, kernel, vocab, unit_values):
  rows, values = _one_hot_rows(x, vocab)
  return _row_ops(unit_values)[0](kernel, rows, values), (rows, values, kernel)


def _one_hot_bwd(vocab, unit_values, residuals, dy):
  rows, values, kernel = residuals
  scatter = _row_ops(unit_values)[1]
  return dy @ kernel.T, scatter(dy, rows, values, jnp.zeros_like(kernel))


# The gather and the scatter-add of kernel rows, with their own rule under ``jax.vmap``: a
# stack of replicas' kernels (R, rows, F) is read and written as one (R rows, F) table at
# offset row indices. XLA CPU runs such a plain gather or scatter several times faster than
# the batched one ``vmap`` would make of it (one with the replica axis as a batch dimension).

def _gather_plain(kernel, rows, values, unit: bool):
  """sum over t of values[:, t] * kernel[rows[:, t]], (B, F) (values taken as 1 if
  ``unit``): one gather of B rows per token, added (XLA CPU runs that faster than a gather
  of (B, T) rows summed over T)."""
  terms = [kernel.at[rows[:, t]].get(mode="promise_in_bounds") for t in range(rows.shape[1])]
  return sum(terms if unit else [values[:, t, None] * g for t, g in enumerate(terms)])


def _scatter_plain(dy, rows, values, zeros, unit: bool):
  """zeros + the scatter-add of values[:, t] * dy into rows[:, t], every token t (values
  taken as 1 if ``unit``)."""
  for t in range(rows.shape[1]):
    zeros = zeros.at[rows[:, t]].add(dy if unit else values[:, t, None] * dy,
                                     mode="promise_in_bounds")
  return zeros


def _flat(axis_size, in_batched, *args):
  """The batched arguments of a row table's gather or scatter with the batch axis first,
  unbatched ones broadcast to it."""
  return [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
          for a, b in zip(args, in_batched)]


def _offsets(rows, table_rows: int):
  """Row indices (R, B, T) into the (R table_rows) rows of the stacked tables."""
  return rows + (table_rows * jnp.arange(rows.shape[0]))[:, None, None]


@functools.cache
def _row_ops(unit: bool):
  """The gather and the scatter-add of kernel rows (values taken as 1 if ``unit``), each
  with its rule under ``jax.vmap``."""

  @custom_batching.custom_vmap
  def gather(kernel, rows, values):
    return _gather_plain(kernel, rows, values, unit)

  @gather.def_vmap
  def gather_vmap(axis_size, in_batched, kernel, rows, values):
    kernel, rows, values = _flat(axis_size, in_batched, kernel, rows, values)
    r, n, f = kernel.shape
    idx = _offsets(rows, n).reshape(-1, rows.shape[-1])
    out = _gather_plain(kernel.reshape(r * n, f), idx, values.reshape(idx.shape), unit)
    return out.reshape(r, rows.shape[1], f), True

  @custom_batching.custom_vmap
  def scatter(dy, rows, values, zeros):
    return _scatter_plain(dy, rows, values, zeros, unit)

  @scatter.def_vmap
  def scatter_vmap(axis_size, in_batched, dy, rows, values, zeros):
    dy, rows, values, zeros = _flat(axis_size, in_batched, dy, rows, values, zeros)
    r, n, f = zeros.shape
    idx = _offsets(rows, n).reshape(-1, rows.shape[-1])
    out = _scatter_plain(dy.reshape(-1, f), idx, values.reshape(idx.shape),
                         zeros.reshape(r * n, f), unit)
    return out.reshape(r, n, f), True

  return gather, scatter


one_hot_product.defvjp(_one_hot_fwd, _one_hot_bwd)
