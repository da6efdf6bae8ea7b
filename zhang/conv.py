"""A 2-D convolution whose gradient XLA CPU runs fast inside loops.

JAX differentiates ``lax.conv_general_dilated`` into two more convolutions with unusual
dimension labels (the weight gradient is ``f01b_i01o->01bf``). Outside a loop, XLA CPU
rewrites them into its canonical NHWC x HWIO form and runs them through its fast kernels;
inside a ``while`` body (``fori_loop``, ``lax.map``), where the trainer's steps run, it does
not, and falls back to a naive loop nest 10-70x slower (measured in benchmarks/RESULTS.md,
"Convolutions inside loops"; the upstream report is jax-ml/jax#12868). ``conv_general_dilated``
below computes the same convolution and states both gradients directly as canonical
convolutions over explicitly transposed and padded operands, which XLA keeps as they are.

It is a drop-in for ``flax.linen.Conv(conv_general_dilated=...)``: same parameters, same
forward computation. The gradients are the same sums, evaluated by different kernels inside
loops, so they agree with JAX's to float rounding (bit for bit outside loops on CPU).
Only NHWC x HWIO convolutions without dilation or feature groups, which is every
convolution in ``zhang.models``, take this path; anything else is passed to ``lax``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_canonical(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated``'s signature; NHWC x HWIO, undilated, ungrouped
  convolutions get gradients written as canonical convolutions (module docstring)."""
  plain = (lhs.ndim == 4 and _is_canonical(dimension_numbers) and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, strides, padding, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_fwd(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, residuals, dy):
  x, w = residuals
  (kh, kw), (sh, sw) = w.shape[:2], strides
  (oh, ow) = dy.shape[1:3]

  # Weight gradient: dW[i, j, c, o] = sum over (b, h, w) of xpad[b, s h + i, s w + j, c]
  # dy[b, h, w, o]. As a canonical convolution: the input's channels are its batch, the
  # images its features, and dy (dilated by the stride) the kernel. The padding stays
  # inside the convolution (XLA CPU runs it 2x slower on an explicitly padded operand).
  dw = lax.conv_general_dilated(
      jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1), padding,
      rhs_dilation=(sh, sw), dimension_numbers=_NHWC, precision=precision)
  dw = jnp.transpose(dw[:, :kh, :kw, :], (1, 2, 0, 3)).astype(w.dtype)

  # Input gradient: dy dilated by the stride, padded so that a stride-1 convolution with
  # the flipped kernel (inputs and outputs swapped) lands on x's shape.
  def pads(n, m, k, s, lo):
    return (k - 1 - lo, n - (m - 1) * s - 1 + lo)

  w_flip = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
  dx = lax.conv_general_dilated(
      dy, w_flip, (1, 1), (pads(x.shape[1], oh, kh, sh, padding[0][0]),
                           pads(x.shape[2], ow, kw, sw, padding[1][0])),
      lhs_dilation=(sh, sw), dimension_numbers=_NHWC, precision=precision).astype(x.dtype)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)
