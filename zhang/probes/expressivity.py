"""Theorem 1 of Zhang et al. (2017): finite-sample expressivity of ReLU networks.

A two-layer ReLU network with `2n + d` weights,

  c(z) = sum_j w_j * max(<a, z> - b_j, 0),

represents any real function on any `n` distinct points `z_1..z_n` in `R^d`:
project on a direction `a` that separates the points, sort the projections
`x_1 < ... < x_n`, put one kink `b_j` in each gap (`b_1 < x_1`,
`x_{j-1} < b_j < x_j`), and solve the lower-triangular system
`A w = y`, `A_ij = max(x_i - b_j, 0)`.

`construct_deep` is the appendix's depth-`k`, width-`O(n/k)` variant: the same
kinks, split into `k - 1` blocks of `ceil(n / (k - 1))`, one block per hidden
layer, with the projection and a running sum carried from layer to layer.

Everything is float64 numpy. Numerical notes: each kink sits just after the
previous projection (`b_j = x_{j-1} + gap / 8`), which makes the network the
piecewise-linear interpolant of the sorted targets; its slopes are then those of
the interpolant (about `|dy| / gap`) instead of growing along the sort order, and
`w` comes from an O(n) recursion on the slopes that is the forward substitution
for `A w = y`. The direction `a` is the best of a few random ones (largest
smallest gap relative to the spread), since the smallest gap sets the slopes and
so the rounding error of `apply`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from zhang.errors import UsageError

# Where a kink sits inside its gap, measured from the previous projection. Small
# values decouple neighbouring slopes (error factor KINK / (1 - KINK) per step).
_KINK = 0.125
_NUM_DIRECTIONS = 8


class DuplicatePointsError(UsageError):
  """Two identical inputs have different targets: no function fits them."""


class Params(NamedTuple):
  """Parameters of the Theorem 1 network.

  a: (d,) projection direction; b: (m,) kinks (biases); w: (m,) or (m, k)
  output weights, where m <= n is the number of distinct points.
  """

  a: np.ndarray
  b: np.ndarray
  w: np.ndarray


def num_params(params) -> int:
  """Number of weights and biases (2n + d for one output, n + nk + d for k)."""
  if isinstance(params, Params):
    return int(params.a.size + params.b.size + params.w.size)
  return int(sum(layer["w"].size + layer["b"].size for layer in params))


def _as_targets(y, n: int) -> np.ndarray:
  y = np.asarray(y, dtype=np.float64)
  if y.ndim not in (1, 2) or y.shape[0] != n:
    raise UsageError(f"targets must have shape ({n},) or ({n}, k); got {y.shape}")
  return y


def _unique_points(x: np.ndarray, y: np.ndarray):
  """Drops repeated points, checking that repeats share one target."""
  _, first, inverse = np.unique(x, axis=0, return_index=True, return_inverse=True)
  inverse = inverse.reshape(-1)
  if len(first) == len(x):
    return x, y
  clash = np.any((y != y[first][inverse]).reshape(len(x), -1), axis=1)
  if np.any(clash):
    i = int(np.flatnonzero(clash)[0])
    j = int(first[inverse[i]])
    raise DuplicatePointsError(
      f"points {j} and {i} are identical but have different targets; "
      f"no function (and so no network) can fit both: remove one or make "
      f"their targets equal")
  first = np.sort(first)
  return x[first], y[first]


def _direction(x: np.ndarray, rng: np.random.Generator):
  """Returns a unit direction `a` and the sorted projections of `x` on it."""
  n, d = x.shape
  best = None
  for _ in range(_NUM_DIRECTIONS):
    a = rng.standard_normal(d)
    a /= np.linalg.norm(a)
    proj = x @ a
    order = np.argsort(proj, kind="stable")
    xs = proj[order]
    gaps = np.diff(xs)
    spread = xs[-1] - xs[0] if n > 1 else 1.0
    score = gaps.min() / spread if n > 1 else 1.0
    if best is None or score > best[0]:
      best = (score, a, order, xs)
  score, a, order, xs = best
  # The gaps must survive recomputing `x @ a` on other batch shapes, whose
  # rounding differs by a few ulps of |x| |a|.
  scale = float(np.max(np.abs(x))) * math.sqrt(d) if x.size else 1.0
  if n > 1 and np.diff(xs).min() <= 1e3 * np.finfo(np.float64).eps * max(scale, 1.0):
    raise UsageError(
      "could not find a direction separating the points: some are distinct "
      "but closer than float64 resolution; remove near-duplicates")
  return a, order, xs


def _kinks(xs: np.ndarray) -> np.ndarray:
  """b_1 < x_1 and x_{j-1} < b_j < x_j, each kink 1/8 into its gap."""
  gaps = np.diff(xs)
  first_gap = float(np.mean(gaps)) if len(gaps) else 1.0
  b = np.empty_like(xs)
  b[0] = xs[0] - first_gap
  b[1:] = xs[:-1] + _KINK * gaps
  return b


def _weights(xs: np.ndarray, b: np.ndarray, ys: np.ndarray) -> np.ndarray:
  """Solves A w = y (A_ij = max(x_i - b_j, 0)) by forward substitution.

  Written on the slopes s_j = w_1 + ... + w_j of the piecewise-linear
  network: between b_j and b_{j+1} it has slope s_j, and
  y_{j+1} = y_j + s_j (b_{j+1} - x_j) + s_{j+1} (x_{j+1} - b_{j+1}).
  """
  n = len(xs)
  s = np.empty((n,) + ys.shape[1:], dtype=np.float64)
  s[0] = ys[0] / (xs[0] - b[0])
  for j in range(1, n):
    s[j] = (ys[j] - ys[j - 1] - s[j - 1] * (b[j] - xs[j - 1])) / (xs[j] - b[j])
  w = np.empty_like(s)
  w[0] = s[0]
  w[1:] = np.diff(s, axis=0)
  return w


def _prepare(x, y, seed: int):
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2:
    raise UsageError(f"points must have shape (n, d); got {x.shape}")
  if len(x) == 0:
    raise UsageError("need at least one point")
  y = _as_targets(y, len(x))
  x, y = _unique_points(x, y)
  a, order, xs = _direction(x, np.random.default_rng(seed))
  b = _kinks(xs)
  return a, b, _weights(xs, b, y[order])


def construct(x, y, seed: int = 0) -> Params:
  """Builds the Theorem 1 network that maps each x[i] to y[i] exactly.

  Args:
   x: (n, d) points; repeated points must have equal targets.
   y: (n,) or (n, k) real targets.
   seed: picks the random projection direction.
  Returns:
   Params(a, b, w) with 2m + d numbers (m = number of distinct points) for
   one output; apply(params, x) == y up to float64 rounding.
  """
  a, b, w = _prepare(x, y, seed)
  return Params(a=a, b=b, w=w)


def apply(params: Params, x, batch_size: int = 1024) -> np.ndarray:
  """Evaluates c(z) = sum_j w_j max(<a, z> - b_j, 0) on the rows of x."""
  x = np.asarray(x, dtype=np.float64)
  a, b, w = (np.asarray(p, dtype=np.float64) for p in params)
  proj = x @ a
  out = np.empty((len(x),) + w.shape[1:], dtype=np.float64)
  for i in range(0, len(x), batch_size):  # bounds the (batch, n) hidden layer
    hidden = np.maximum(proj[i:i + batch_size, None] - b[None, :], 0.0)
    out[i:i + batch_size] = hidden @ w
  return out


def construct_deep(x, y, depth: int, seed: int = 0) -> list[dict]:
  """Depth-`depth` ReLU network of width ceil(n / (depth - 1)) + 2k + 1.

  Layer 1 is one unit, u = max(<a, z> - b_1, 0), which is the projection
  shifted to be positive on the sample. Hidden layer l = 2..depth holds
  block l-1 of the Theorem 1 kinks, max(u - b_j, 0), plus u carried through
  (u >= 0 so max(u, 0) = u) and, from layer 3 on, the partial sum S of the
  previous blocks' outputs carried as the pair max(S, 0), max(-S, 0) per
  output. The linear read-out adds the last block to the carried sum. The
  network has O(n + d) nonzero weights (num_nonzero), although the dense
  matrices returned here have O(n^2 / depth) entries.

  Args:
   x: (n, d) points; y: (n,) or (n, k) targets; depth >= 2 hidden layers.
  Returns:
   A list of {"w", "b"} layers; all but the last are followed by ReLU.
  """
  if depth < 2:
    raise UsageError(f"depth must be >= 2 (depth 2 is Theorem 1); got {depth}")
  a, b, w = _prepare(x, y, seed)
  squeeze = w.ndim == 1
  w = w.reshape(len(w), -1)
  n, k = w.shape
  shift = b[0]
  kinks = b - shift  # in units of u = <a, z> - b_1 >= 0 on the sample
  blocks = np.array_split(np.arange(n), min(depth - 1, n))
  blocks += [np.arange(0)] * (depth - 1 - len(blocks))  # empty tail layers when n < depth - 1
  layers = [{"w": a[:, None].copy(), "b": np.array([-shift])}]
  prev_width, prev_block, prev_has_sum = 1, None, False
  for block in blocks:
    m = len(block)
    has_sum = prev_block is not None
    width = m + 1 + (2 * k if has_sum else 0)
    wl = np.zeros((prev_width, width))
    bl = np.zeros(width)
    wl[0, :m] = 1.0  # unit 0 of the previous layer is always u
    bl[:m] = -kinks[block]
    wl[0, m] = 1.0  # carry u
    if has_sum:
      pm = len(prev_block)
      partial = np.zeros((prev_width, k))  # S_l = carried S + previous block
      partial[1:1 + pm] = w[prev_block]
      if prev_has_sum:
        partial[1 + pm:1 + pm + k] += np.eye(k)
        partial[1 + pm + k:1 + pm + 2 * k] -= np.eye(k)
      wl[:, m + 1:m + 1 + k] = partial
      wl[:, m + 1 + k:] = -partial
    # Put u first so the next layer finds it at unit 0.
    perm = np.r_[m, np.arange(m), np.arange(m + 1, width)]
    layers.append({"w": wl[:, perm], "b": bl[perm]})
    prev_width, prev_block, prev_has_sum = width, block, has_sum
  m = len(prev_block)
  out = np.zeros((prev_width, k))
  out[1:1 + m] = w[prev_block]
  if prev_has_sum:
    out[1 + m:1 + m + k] += np.eye(k)
    out[1 + m + k:1 + m + 2 * k] -= np.eye(k)
  layers.append({"w": out[:, 0] if squeeze else out, "b": np.zeros(() if squeeze else k)})
  return layers


def apply_deep(layers: list[dict], x) -> np.ndarray:
  """Evaluates a construct_deep network: ReLU after every layer but the last."""
  h = np.asarray(x, dtype=np.float64)
  for layer in layers[:-1]:
    h = np.maximum(h @ layer["w"] + layer["b"], 0.0)
  return h @ layers[-1]["w"] + layers[-1]["b"]


def num_nonzero(layers: list[dict]) -> int:
  """Nonzero weights and biases of a construct_deep network (O(n + d))."""
  return int(sum(np.count_nonzero(layer["w"]) + np.count_nonzero(layer["b"]) for layer in layers))
