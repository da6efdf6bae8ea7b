"""The models' layers with explicit gradients, in forms XLA CPU runs fast inside loops.

The execution plan (``zhang/runtime/plan.py``) applies them on CPU, around the plain models
of ``zhang/experiment/models.py`` (``explicit_gradients``: a Flax method interceptor, so the
models stay plain and the parameters, initialization and forward values are unchanged). The trainer
runs its steps inside a ``while`` body (``fori_loop``; ``lax.map`` over replicas is another), where
XLA CPU runs some of JAX's own gradients far slower than outside a loop (benchmarks/RESULTS.md,
"Execution plan"):

- ``conv_general_dilated``: JAX differentiates a convolution into two more with unusual
  dimension labels (the weight gradient is ``f01b_i01o->01bf``). Outside a loop XLA CPU
  rewrites them into its canonical NHWC x HWIO form and runs its fast kernels; inside one it
  does not, and falls back to a naive loop nest (upstream: jax-ml/jax#12868). Here both
  gradients are stated directly as canonical convolutions over explicitly transposed
  operands; a strided layer's input gradient as one undilated convolution per stride phase.
  Those gradient convolutions are themselves this path's (``_canonical_conv``), so a
  Hessian-vector product taken reverse over reverse (``zhang.probes.measures.curvature``)
  stays in the canonical form, except a strided layer's weight gradient (dilated).
  Only NHWC x HWIO convolutions without dilation or feature groups (every one in
  ``zhang.experiment.models``) take this path, anything else goes to ``lax``.
- ``max_pool``: JAX's gradient is a ``select_and_scatter``, which XLA CPU expands into a
  reduce-window carrying index arrays plus a scatter. Here it is one pass per window offset
  that routes dy to the first maximum of each window, the same choice on ties, summed per
  stride phase at the output's resolution and interleaved into the input's shape once.
- ``local_response_norm``: the analytic gradient, in two elementwise passes and one window
  sum, instead of autodiff through the power.
- ``dense_dot_general``: a Dense layer's product. Where the layer has few outputs (under
  ``NARROW_DENSE``: the logits' layer, 512 -> 10 on images, 512 -> 59 or 113 on modadd), its
  weight gradient is computed as (out, in) and transposed afterwards, behind an optimization
  barrier: XLA CPU runs the (in, out) product with few output columns slower (6x at 10
  columns, 2x at 59, 1.7x at 113 and 1.1x at 256, 16 replicas of a 1,740-example batch),
  which the README's digits run and modadd's step feel. Wider layers keep JAX's form.

Forward computations are the ones of ``lax``/``flax`` (bit for bit), except that a 1x1
stride-1 convolution is computed as the matrix product it is (XLA CPU runs it faster that
way; the same sums, perhaps in another order). The gradients are the same sums in a
different order, so they agree with JAX's to float rounding (``tests/test_layers.py``).
"""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zhang.experiment import models

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
  if rhs.shape[:2] == (1, 1) and strides == (1, 1) and padding == ((0, 0), (0, 0)):
    # A 1x1 convolution is a matrix product over the channels. XLA CPU runs it as one
    # 3-5x faster than as a convolution; JAX's gradients of a dot stay fast inside loops.
    return lax.dot_general(lhs, rhs[0, 0], (((3,), (0,)), ((), ())), precision=precision)
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

  # Weight gradient: dW[i, j, c, o] = sum over (b, h, w) of xpad[b, s h + i, s w + j, c]
  # dy[b, h, w, o]. As a canonical convolution: the input's channels are its batch, the
  # images its features, and dy (dilated by the stride) the kernel. The padding stays
  # inside the convolution (XLA CPU runs it 2x slower on an explicitly padded operand).
  # The operand whose channels become the batch is transposed from NHWC to CHWN, an
  # order XLA CPU copies slowly (every element a new cache line); with stride 1 and fewer
  # output than input channels, dy takes that role instead and x is the kernel.
  # Accumulated in float32 at least.
  dy_as_batch = (sh, sw) == (1, 1) and dy.shape[3] < x.shape[3]

  def weight_grad(xc, dyc):
    if dy_as_batch:  # dW[i] = sum over u of x[u] dy[u + lo - i]: reversed taps of a correlation
      (lo_h, hi_h), (lo_w, hi_w) = padding
      dw = _canonical_conv(
          jnp.transpose(dyc, (3, 1, 2, 0)), jnp.transpose(xc, (1, 2, 0, 3)),
          ((kh - 1 - lo_h, kh - 1 - hi_h), (kw - 1 - lo_w, kw - 1 - hi_w)), precision)
      return jnp.transpose(dw[:, ::-1, ::-1, :], (3, 1, 2, 0))
    xt, dyt = jnp.transpose(xc, (3, 1, 2, 0)), jnp.transpose(dyc, (1, 2, 0, 3))
    if (sh, sw) == (1, 1):
      return _canonical_conv(xt, dyt, padding, precision)[:, :kh, :kw, :]
    dw = lax.conv_general_dilated(xt, dyt, (1, 1), padding, rhs_dilation=(sh, sw),
                                  dimension_numbers=_NHWC, precision=precision)
    return dw[:, :kh, :kw, :]

  dw = weight_grad(x, dy).astype(jnp.promote_types(x.dtype, jnp.float32))
  dw = jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)
  dx = _input_grad(dy, w, x.shape[1:3], strides, padding, precision).astype(x.dtype)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def _canonical_conv(x, w, padding, precision):
  """A stride-1 NHWC x HWIO convolution of the gradients above, itself through ``_conv``
  where its padding is not negative, so that differentiating a gradient (a Hessian-vector
  product, reverse over reverse) takes the same canonical forms. The same values."""
  if any(p < 0 for pair in padding for p in pair):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                    precision=precision)
  return _conv(x, w, (1, 1), tuple(tuple(p) for p in padding), precision)


def _phase(n: int, m: int, k: int, s: int, lo: int, a: int):
  """One axis of the input gradient's stride phase ``a``: the rows r = s t + a (t < size)
  of an input of ``n`` rows (forward: ``m`` outputs, kernel ``k``, stride ``s``, low padding
  ``lo``) receive dy through the taps first, first + s, ... (``taps`` of them), as a
  stride-1 convolution of dy padded by (low, high). Returns (first, taps, low, high, size)."""
  first = (a + lo) % s
  taps = len(range(first, k, s))
  low = taps - 1 - (a + lo - first) // s
  size = -(-(n - a) // s)
  return first, taps, low, size - m - low + taps - 1, size


def _input_grad(dy, w, hw, strides, padding, precision):
  """dx of an NHWC x HWIO convolution: a stride-1 convolution of dy with the flipped kernel
  (inputs and outputs swapped). With a stride s > 1, one such convolution per stride phase
  of the input, each with the taps that reach it (2x2, 2x1, 1x2 and 1x1 of a 3x3 kernel at
  s = 2), interleaved once. Convolving a dy dilated by s instead multiplies zeros 3 times in
  4 at s = 2, and XLA CPU runs a dilated convolution outside its fast kernels."""
  (kh, kw), (sh, sw), (oh, ow) = w.shape[:2], strides, dy.shape[1:3]
  rows = [_phase(hw[0], oh, kh, sh, padding[0][0], a) for a in range(sh)]
  cols = [_phase(hw[1], ow, kw, sw, padding[1][0], b) for b in range(sw)]
  whole_h, whole_w = rows[0][4], cols[0][4]
  parts = []
  for fh, th, loh, hih, nh in rows:
    line = []
    for fw, tw, low, hiw, nw in cols:
      if th == 0 or tw == 0:  # no tap reaches these inputs (a kernel smaller than the stride)
        part = jnp.zeros((dy.shape[0], nh, nw, w.shape[2]), dy.dtype)
      else:
        sub = jnp.transpose(w[fh::sh, fw::sw][::-1, ::-1], (0, 1, 3, 2))
        part = _canonical_conv(dy, sub, ((loh, hih), (low, hiw)), precision)
      line.append(jnp.pad(part, ((0, 0), (0, whole_h - nh), (0, whole_w - nw), (0, 0))))
    parts.append(line)
  if sh == sw == 1:
    return parts[0][0]
  # (B, rows / s, s, cols / s, s, C) -> (B, rows, cols, C), then the padding rows cut off.
  dx = jnp.stack([jnp.stack(line, axis=3) for line in parts], axis=2)
  dx = dx.reshape(dx.shape[0], whole_h * sh, whole_w * sw, dx.shape[-1])
  return dx[:, :hw[0], :hw[1]]


# ------------------------------------------------------------------------------- max pool

def _pads(n: int, k: int, s: int, padding: str):
  """Output size and (low, high) padding of a SAME or VALID window."""
  if padding == "VALID":
    return (n - k) // s + 1, (0, 0)
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return out, (total // 2, total - total // 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window, strides, padding="SAME"):
  """``flax.linen.max_pool(x, window, strides, padding)`` on NHWC inputs, ``padding``
  "SAME" or "VALID"."""
  return nn.max_pool(x, window, strides=strides, padding=padding)


def _max_pool_fwd(x, window, strides, padding):
  y = max_pool(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, dy):
  x, y = residuals
  (kh, kw), (sh, sw) = window, strides
  b, h, w, c = x.shape
  oh, ph = _pads(h, kh, sh, padding)
  ow, pw = _pads(w, kw, sw, padding)
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), (*ph, 0), (*pw, 0), (0, 0, 0)))
  hp, wp = xp.shape[1:3]
  zero = jnp.zeros((), dy.dtype)
  # Window offset (i, j) of output (u, v) is xp's (sh u + i, sw v + j): on the lattice of
  # phase (i % sh, j % sw), shifted by (i // sh, j // sw). Each phase's routed dy is summed
  # at the output's resolution, and the phases are interleaved once at the input's.
  hc = max(-(-hp // sh), oh + (kh - 1) // sh)
  wc = max(-(-wp // sw), ow + (kw - 1) // sw)
  phases = {(a, e): jnp.zeros((b, hc, wc, c), dy.dtype) for a in range(sh) for e in range(sw)}
  taken = jnp.zeros(y.shape, bool)  # the window's maximum has been routed already
  span_h, span_w = (oh - 1) * sh + 1, (ow - 1) * sw + 1
  for i in range(kh):  # window offsets in row-major order: the first maximum wins
    for j in range(kw):
      xs = lax.slice(xp, (0, i, j, 0), (b, i + span_h, j + span_w, c), (1, sh, sw, 1))
      hit = (xs == y) & ~taken
      taken = taken | hit
      di, dj = i // sh, j // sw
      phases[i % sh, j % sw] += lax.pad(jnp.where(hit, dy, zero), zero,
                                        ((0, 0, 0), (di, hc - oh - di, 0),
                                         (dj, wc - ow - dj, 0), (0, 0, 0)))
  # dxp[:, sh U + a, sw V + e] = phases[a, e][:, U, V]
  grid = jnp.stack([jnp.stack([phases[a, e] for e in range(sw)], axis=3)
                    for a in range(sh)], axis=2)  # (b, hc, sh, wc, sw, c)
  dxp = grid.reshape(b, hc * sh, wc * sw, c)
  return (dxp[:, ph[0]:ph[0] + h, pw[0]:pw[0] + w, :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# ------------------------------------------------------------------ local response norm

def _channel_window_sum(v, radius: int):
  """sum over c' in [c - radius, c + radius] of v[..., c'] (zeros past the ends)."""
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(radius, radius)])
  c = v.shape[-1]
  return sum(padded[..., i:i + c] for i in range(2 * radius + 1))


def _lrn_denominator(x, depth_radius, bias, alpha):
  return bias + alpha * _channel_window_sum(jnp.square(x), depth_radius)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def local_response_norm(x, depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75):
  """``zhang.experiment.models.local_response_norm`` with its analytic gradient (the window is
  symmetric, so its transpose is itself): dx = dy d^-b - 2 a b x W(dy x d^(-b-1)), d the
  denominator, W the window sum."""
  return models.local_response_norm(x, depth_radius, bias, alpha, beta)


def _lrn_fwd(x, depth_radius, bias, alpha, beta):
  d = _lrn_denominator(x, depth_radius, bias, alpha)
  return x / d ** beta, (x, d)


def _lrn_bwd(depth_radius, bias, alpha, beta, residuals, dy):
  del bias
  x, d = residuals
  scale = d ** -beta
  inner = _channel_window_sum(dy * x * scale / d, depth_radius)
  return (dy * scale - (2 * alpha * beta) * x * inner,)


local_response_norm.defvjp(_lrn_fwd, _lrn_bwd)


# ---------------------------------------------------------------------------- dense


NARROW_DENSE = 128  # output features below which the weight gradient is computed as (out, in)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None,
                      preferred_element_type=None):
  """``flax.linen.Dense(dot_general=...)``: x (B, in) @ kernel (in, out), with the explicit
  weight gradient described in the module docstring; any other product goes to ``lax``."""
  if (lhs.ndim == 2 and rhs.ndim == 2 and preferred_element_type is None
      and tuple(map(tuple, dimension_numbers[0])) == ((1,), (0,))
      and dimension_numbers[1] == ((), ())):
    return _dense(lhs, rhs, precision)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type)


def _matmul(a, b, contract, precision):
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x, w, precision):
  return _matmul(x, w, ((1,), (0,)), precision)


def _dense_fwd(x, w, precision):
  return _dense(x, w, precision), (x, w)


def _dense_bwd(precision, residuals, dy):
  x, w = residuals
  dx = _matmul(dy, w, ((1,), (1,)), precision)
  if w.shape[1] < NARROW_DENSE:
    # (out, in), then transposed; without the barrier XLA folds the transpose back into the
    # product's layout and runs the slow one.
    dw = lax.optimization_barrier(_matmul(dy, x, ((0,), (0,)), precision)).T
  else:
    dw = _matmul(x, dy, ((0,), (0,)), precision)
  return dx, dw


_dense.defvjp(_dense_fwd, _dense_bwd)


# ------------------------------------------------------------------- the plain models

def _intercept(next_fun, args, kwargs, context):
  """Runs the models' layers (``zhang.experiment.models``) through the functions above."""
  module = context.module
  if context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  if isinstance(module, models.MaxPool):
    return max_pool(args[0], tuple(module.window), tuple(module.strides), module.padding)
  if isinstance(module, models.LocalResponseNorm):
    return local_response_norm(args[0])
  hooks = {nn.Conv: ("conv_general_dilated", conv_general_dilated),
           nn.Dense: ("dot_general", dense_dot_general)}
  hook = hooks.get(type(module))
  if hook is None or getattr(module, hook[0]) is not None or module.is_initializing():
    return next_fun(*args, **kwargs)
  # The same layer with Flax's own hook set, applied to the bound layer's parameters: a
  # pure function of them, so gradients reach them as through the layer itself.
  plain = module.clone(parent=None, **{hook[0]: hook[1]})
  return plain.apply({"params": module.variables["params"]}, *args, **kwargs)


@contextlib.contextmanager
def explicit_gradients():
  """Within the block, ``zhang.experiment.models``' convolutions, max pools, local response
  norms and dense layers applied (``module.apply``, traced) are differentiated as above. Parameters,
  initialization and forward values are unchanged."""
  with nn.intercept_methods(_intercept):
    yield
