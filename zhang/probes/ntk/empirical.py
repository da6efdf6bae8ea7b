"""The empirical neural tangent kernel of a network at initialization, in panels of examples.

``K[i, j] = (1/C) sum_c <d f_c(x_i)/dw, d f_c(x_j)/dw>``: the tangent kernel of the C logits,
averaged over classes, summed over every parameter leaf (``J_leaf J_leaf^T``). The full
(n C x n C) kernel is close to ``K (x) I_C`` at initialization (the output layer's part is
exactly that; a hidden layer's blocks between two classes are sums of terms of random sign;
``TangentKernel.class_coupling`` measures what is left on a few examples), so the
class-averaged kernel carries the dynamics (``zhang.probes.ntk.dynamics``) and its
eigendecomposition costs n^3, not (n C)^3.

Two ways to the same numbers (``method``):

- ``"jacobian"``: per-example jacobians of every leaf (``jax.vmap(jax.jacrev)``),
  (b, C x leaf size) each, contracted as ``sum_leaf J_a J_b^T``.
- ``"structured"`` (the default): the same contraction, factored where a leaf's jacobian is
  an outer product. A Dense layer called once on (B, d_in) inputs has
  ``d f_c / dW = h (x) delta_c`` (h its input, delta_c the logit's gradient at its output), so
  its kernel and bias contribute ``(H_a H_b^T + 1) * sum_c D_ac D_bc^T``: d_in + C d_out
  numbers per example instead of C (d_in + 1) d_out. The inputs are sown and the output
  gradients read from zero perturbations at each Dense output (``nn.Module.perturb``, one
  backward pass per class for a whole panel). Every other leaf (convolutions, batch norm)
  is contracted as in ``"jacobian"``. For MLP 1x512 on digits: 5,796 numbers per example
  instead of 384,100, and 66x fewer FLOPs per kernel entry.

Panels: the kernel is assembled from blocks between panels of examples, only on and above
the diagonal; a panel's features are kept once computed when they all fit in memory, else
recomputed (``MemoryPlan``). Products run in float32 (``dtype="float64"`` under
``jax.enable_x64``) and blocks are accumulated into a float64 matrix, which the eigensolver
needs: on digits (MLP 1x512, 1,438 examples, eigenvalues 0.41 to 2.3e5) every eigenvalue,
the smallest included, is within 1e-4 (structured; 4e-4 by jacobians) of an all-float64
computation.
"""

from __future__ import annotations

import dataclasses
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from zhang.errors import UsageError
from zhang.experiment import models
from zhang.probes.kernels import interpolation as kernels_lib
from zhang.runtime import flops as flops_lib

METHODS = ("structured", "jacobian")
_GB = 1e9
_OVERHEAD_BYTES = int(1.5 * _GB)  # interpreter, jax, the dataset, compiled programs
_DEFAULT_MEMORY_FRACTION = 0.8
PANEL_BYTES = 512 * 2**20  # the default panel: about this many bytes of features
# Host float64 n x n matrices at the peak: the kernel, the eigensolver's copy, eigenvectors
# and workspace (dsyevd: 2 n^2), and the interpolation solver's copy.
_HOST_SQUARES = 6
COUPLING_EXAMPLES = 48  # examples on which the full class-by-class kernel is measured
_IN, _OUT = "ntk_in", "ntk_out"  # names of the sown inputs and the output perturbations


@dataclasses.dataclass(frozen=True)
class DenseLayer:
  """A Dense layer whose kernel and bias are contracted in factored form."""
  path: tuple[str, ...]
  d_in: int
  d_out: int
  bias: bool


def dense_layers(module, params_shapes, input_shape) -> tuple[DenseLayer, ...]:
  """The module's Dense layers that are called once per forward pass on (B, d_in) inputs
  (``jax.eval_shape``: nothing computed): the ones whose jacobian is an outer product."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    if isinstance(m, nn.Dense) and context.method_name == "__call__":
      calls.setdefault(tuple(m.path), []).append(args[0].ndim)
    return next_fun(*args, **kwargs)

  def apply(params):
    with nn.intercept_methods(record):
      return module.apply({"params": params}, jnp.zeros((1, *input_shape)), train=False,
                          mutable=["batch_stats"])

  jax.eval_shape(apply, params_shapes)
  flat = traverse_util.flatten_dict(params_shapes)
  out = []
  for path, ndims in calls.items():
    kernel = flat.get(path + ("kernel",))
    if ndims == [2] and kernel is not None and len(kernel.shape) == 2:
      out.append(DenseLayer(path, int(kernel.shape[0]), int(kernel.shape[1]),
                            path + ("bias",) in flat))
  return tuple(out)


def panel_layout(n: int, block: int) -> tuple[int, int]:
  """(panels, examples per panel) covering n examples in panels of at most about
  ``block``: equal panels, a multiple of 8 where n allows (padding is computed, wasted)."""
  count = max(1, -(-n // max(1, block)))
  size = -(-n // count)
  if size > 8:
    size = -(-size // 8) * 8
  return count, size


def _panels(x, count: int, size: int) -> list:
  pad = count * size - x.shape[0]
  if pad:
    x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
  return [x[i * size:(i + 1) * size] for i in range(count)]


def _dot(a, b):
  """a b^T over their flattened trailing axes: (b_a, b_b)."""
  return jax.lax.dot_general(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1),
                             (((1,), (1,)), ((), ())), preferred_element_type=a.dtype)


@dataclasses.dataclass
class KernelStats:
  """What one kernel took: examples whose features were computed and kernel entries
  contracted (padding included, recomputation too), and seconds."""
  feature_examples: int = 0
  contracted_entries: int = 0
  seconds: float = 0.0


class TangentKernel:
  """The compiled features and contractions of one model, reused for every kernel of it.

  ``module``: a Linen module taking (B, *input_shape) and ``train``; it is applied in
  evaluation mode (batch norm with its running statistics, which ``state`` holds).
  """

  def __init__(self, module, num_classes: int, input_shape, method: str = "structured"):
    if method not in METHODS:
      raise ValueError(f"method {method!r} must be one of {', '.join(METHODS)}")
    self.module, self.num_classes, self.method = module, num_classes, method
    self.input_shape = tuple(input_shape)
    shapes = jax.eval_shape(lambda: module.init(
        jax.random.key(0), jnp.zeros((1, *self.input_shape)), train=False))["params"]
    self.dense = dense_layers(module, shapes, self.input_shape) if (
        method == "structured") else ()
    self._factored = {layer.path + (leaf,) for layer in self.dense
                      for leaf in ("kernel", "bias")}
    self.param_shapes = jax.tree.map(lambda a: tuple(a.shape), shapes)
    flat = traverse_util.flatten_dict(shapes)
    self.num_params = int(sum(math.prod(a.shape) for a in flat.values()))
    self.generic_params = int(sum(math.prod(a.shape) for k, a in flat.items()
                                  if k not in self._factored))
    self._paths = {layer.path for layer in self.dense}
    self._features = jax.jit(self._features_fn)
    self._contract = jax.jit(self._contract_fn)
    self._blocks = jax.jit(lambda p, s, x: self._blocks_fn(self._features_fn(p, s, x)))

  @property
  def floats_per_example(self) -> int:
    """Numbers a panel holds per example: d_in + C d_out per factored Dense layer, C times
    the size of every other leaf."""
    c = self.num_classes
    return sum(layer.d_in + c * layer.d_out for layer in self.dense) + c * self.generic_params

  @property
  def entry_flops(self) -> int:
    """FLOPs of one kernel entry's contraction."""
    c = self.num_classes
    return (sum(2 * (layer.d_in + c * layer.d_out) + 3 for layer in self.dense)
            + 2 * c * self.generic_params)

  # ------------------------------------------------------------------ features

  def _sow_and_perturb(self, next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    m = context.module
    if (context.method_name == "__call__" and isinstance(m, nn.Dense)
        and tuple(m.path) in self._paths):
      m.sow("intermediates", _IN, args[0])
      out = m.perturb(_OUT, out)
    return out

  def _features_fn(self, params, state, x):
    """A panel's features: per factored Dense layer its inputs H (b, d_in) and output
    gradients D (b, C, d_out); per other leaf its jacobian (b, C, size)."""
    b, c = x.shape[0], self.num_classes
    flat = traverse_util.flatten_dict(params)
    dense = ()
    if self.dense:
      zeros = traverse_util.unflatten_dict({
          layer.path + (_OUT,): jnp.zeros((b, layer.d_out), x.dtype) for layer in self.dense})

      def logits(pert):
        with nn.intercept_methods(self._sow_and_perturb):
          out, inter = self.module.apply({"params": params, **state, "perturbations": pert},
                                         x, train=False, mutable=["intermediates"])
        return out, inter["intermediates"]

      out, vjp, sown = jax.vjp(logits, zeros, has_aux=True)
      # One backward pass per class for the whole panel: examples do not interact in
      # evaluation mode, so example i's cotangent reaches only example i's perturbation.
      basis = jnp.broadcast_to(jnp.eye(c, dtype=out.dtype)[:, None, :], (c, b, c))
      (grads,) = jax.vmap(vjp)(basis)
      grads, sown = traverse_util.flatten_dict(grads), traverse_util.flatten_dict(sown)
      dense = tuple((sown[layer.path + (_IN,)][0], jnp.moveaxis(grads[layer.path + (_OUT,)], 0, 1))
                    for layer in self.dense)
    rest = {k: v for k, v in flat.items() if k not in self._factored}
    generic = ()
    if rest:
      fixed = {k: v for k, v in flat.items() if k in self._factored}

      def one(rest_, xi):
        p = traverse_util.unflatten_dict({**fixed, **rest_})
        return self.module.apply({"params": p, **state}, xi[None], train=False)[0]

      jac = jax.vmap(jax.jacrev(one), (None, 0))(rest, x)  # leaves (b, C, *leaf shape)
      generic = tuple(j.reshape(b, c, -1) for j in jax.tree.leaves(jac))
    return dense, generic

  def _contract_fn(self, fa, fb):
    """The (b_a, b_b) block of C K (the sum over classes, before the average)."""
    (da, ga), (db, gb) = fa, fb
    total = 0.0
    for (ha, ta), (hb, tb), layer in zip(da, db, self.dense):
      h = _dot(ha, hb)
      total = total + (h + 1.0 if layer.bias else h) * _dot(ta, tb)
    for ja, jb in zip(ga, gb):
      total = total + _dot(ja, jb)
    return total

  def _blocks_fn(self, feats):
    """The full class-by-class kernel of a panel with itself, (b, C, b, C)."""
    dense, generic = feats
    total = 0.0
    for (h, t), layer in zip(dense, self.dense):
      hh = _dot(h, h) + (1.0 if layer.bias else 0.0)
      total = total + hh[:, None, :, None] * jnp.einsum("ick,jdk->icjd", t, t)
    for j in generic:
      total = total + jnp.einsum("icp,jdp->icjd", j, j)
    return total

  # ------------------------------------------------------------------ kernels

  def matrices(self, params, state, x, x_test=None, block: int = 256, hold: bool = True,
               dtype: str = "float32") -> tuple[np.ndarray, np.ndarray | None, KernelStats]:
    """The class-averaged kernel on ``x`` (n, n) and between ``x_test`` and ``x`` (m, n),
    float64 on the host.

    Args:
      block: examples per panel (about; see ``panel_layout``).
      hold: keep every panel's features once computed (else recompute them: three panels
        in memory at a time).
      dtype: of the features and their products, "float32" or "float64".
    """
    with jax.enable_x64(dtype == "float64"):
      cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
      return self._matrices(cast(params), cast(state), cast(x),
                            None if x_test is None else cast(x_test), block, hold)

  def _matrices(self, params, state, x, x_test, block: int, hold: bool):
    start = time.perf_counter()
    stats = KernelStats()
    n = x.shape[0]
    count, size = panel_layout(n, block)
    groups = {"train": (_panels(x, count, size), size, n)}
    m = 0 if x_test is None else x_test.shape[0]
    if m:
      t_count, t_size = panel_layout(m, block)
      groups["test"] = (_panels(x_test, t_count, t_size), t_size, m)
    cache = {}

    def panel(group: str, i: int):
      if (group, i) in cache:
        return cache[group, i]
      xs, size_, _ = groups[group]
      feats = self._features(params, state, xs[i])
      stats.feature_examples += size_
      if hold:
        cache[group, i] = feats
      return feats

    def rows(group: str, i: int) -> slice:
      _, size_, total = groups[group]
      return slice(i * size_, min((i + 1) * size_, total))

    k = np.zeros((n, n))
    k_test = np.zeros((m, n)) if m else None
    for c in range(count):
      fc = panel("train", c)
      cols = rows("train", c)
      for r in range(c + 1):
        fr = fc if r == c else panel("train", r)
        part = np.asarray(self._contract(fr, fc), np.float64)
        del fr
        if r == c:  # exactly symmetric (the product's rounding is not)
          part = 0.5 * (part + part.T)
        rr = rows("train", r)
        k[rr, cols] = part[:rr.stop - rr.start, :cols.stop - cols.start]
        k[cols, rr] = k[rr, cols].T
        stats.contracted_entries += size * size
      for t in range(len(groups["test"][0]) if m else 0):
        ft = panel("test", t)
        part = np.asarray(self._contract(ft, fc), np.float64)
        del ft
        rr = rows("test", t)
        k_test[rr, cols] = part[:rr.stop - rr.start, :cols.stop - cols.start]
        stats.contracted_entries += groups["test"][1] * size
      del fc
    cache.clear()
    k /= self.num_classes
    if m:
      k_test /= self.num_classes
    stats.seconds = time.perf_counter() - start
    return k, k_test, stats

  def class_coupling(self, params, state, x) -> float:
    """|Theta - K (x) I_C|_F / |K (x) I_C|_F on the examples ``x`` (float32): how far the
    full class-by-class kernel Theta is from the class-averaged one times the identity."""
    full = np.asarray(self._blocks(params, state, jnp.asarray(x, jnp.float32)), np.float64)
    avg = np.einsum("icjc->ij", full) / self.num_classes
    ideal = np.einsum("ij,cd->icjd", avg, np.eye(self.num_classes))
    return float(np.linalg.norm(full - ideal) / np.linalg.norm(ideal))

  def flops(self, stats: KernelStats) -> dict:
    """Analytic FLOPs of one kernel (``zhang.runtime.flops``' Dense and Conv products, x 2 per
    multiply-add). Features, per example: a forward pass F and, per class, a backward pass
    of the layers' input gradients (F less the first layer's) for the factored layers' and
    again for the other leaves' jacobians, which also take their layers' weight gradients.
    Contraction: ``entry_flops`` per entry computed."""
    layers = flops_lib.layers(self.module, self.input_shape, train=False)
    forward = 2 * sum(layer.macs for layer in layers)
    inputs = forward - (2 * layers[0].macs if layers else 0)
    factored = 2 * sum(layer.d_in * layer.d_out for layer in self.dense)
    c = self.num_classes
    per_example = (forward + c * inputs if self.dense else 0) + (
        forward + c * (inputs + forward - factored) if self.generic_params else 0)
    features = stats.feature_examples * per_example
    contraction = stats.contracted_entries * self.entry_flops
    return dict(features=int(features), contraction=int(contraction),
                total=int(features + contraction))


# --------------------------------------------------------------------------- memory

@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes a run's kernels need against a budget; ``max_n`` is the largest ``n`` that fits."""
  n: int
  n_test: int
  block: int  # examples per panel
  panel_bytes: int  # one panel's features
  panels: int  # panels in memory at the peak (all of them when ``hold``)
  hold: bool
  kernel_bytes: int  # the n x n float64 kernel, once
  host_bytes: int  # every float64 matrix at the peak (kernels, eigensolver, dynamics)
  total_bytes: int
  budget_bytes: int
  max_n: int

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.budget_bytes

  def describe(self) -> str:
    return (f"feature panels {self.panels} x {self.panel_bytes / _GB:.3g} GB "
            f"({self.block} examples each{', all held' if self.hold else ''}), kernel "
            f"{self.n} x {self.n} float64 {self.kernel_bytes / _GB:.3g} GB, float64 "
            f"matrices at the peak {self.host_bytes / _GB:.3g} GB; total with overhead "
            f"{self.total_bytes / _GB:.3g} GB of a {self.budget_bytes / _GB:.3g} GB budget")


def plan_memory(n: int, n_test: int, num_classes: int, floats_per_example: int,
                record_points: int, block: int | None = None, budget_bytes: int | None = None,
                dtype: str = "float32") -> MemoryPlan:
  """The kernels' memory: panels of ``block`` examples (default: about ``PANEL_BYTES``
  each) and the host's float64 matrices; every panel held when that fits too.
  ``record_points``: steps at which the dynamics are kept (two schedules). ``max_n``: the
  largest n that fits (with the default block for that n unless ``block`` is given)."""
  if budget_bytes is None:
    budget_bytes = int(_DEFAULT_MEMORY_FRACTION * kernels_lib.available_memory_bytes())
  per_example = np.dtype(dtype).itemsize * floats_per_example

  def panels(n_: int) -> tuple[int, int, int]:
    """(examples per panel, at the largest of train and test; panels; held examples)."""
    b = block or max(1, min(max(n_, n_test), PANEL_BYTES // per_example))
    count, size = panel_layout(n_, b)
    t_count, t_size = panel_layout(n_test, b) if n_test else (0, 0)
    return max(size, t_size), count + t_count, count * size + t_count * t_size

  def host(n_: int) -> int:
    return 8 * (_HOST_SQUARES * n_ * n_ + n_test * n_ + 4 * record_points * n_
                + 4 * n_ * num_classes)

  def total(n_: int, hold: bool) -> int:
    size, _, held = panels(n_)
    # Held: every panel, plus one being built; else the column panel, a row panel and the
    # next one being built.
    return _OVERHEAD_BYTES + (held + size if hold else 3 * size) * per_example + host(n_)

  def need(n_: int) -> int:
    return min(total(n_, True), total(n_, False))

  hold = total(n, True) <= budget_bytes
  lo, hi = 0, max(n, 1)
  while need(hi) <= budget_bytes:
    hi *= 2
  while lo < hi:  # the largest n_ whose need is within the budget
    mid = (lo + hi + 1) // 2
    lo, hi = (mid, hi) if need(mid) <= budget_bytes else (lo, mid - 1)
  size, count, _ = panels(n)
  return MemoryPlan(n, n_test, size, size * per_example, count + 1 if hold else 3, hold,
                    8 * n * n, host(n), total(n, True) if hold else need(n), budget_bytes, lo)


def token_interpolation_flops(ds, n: int, n_test: int, model: str) -> float:
  """FLOPs of ``token_interpolation``'s contractions (the n x (n + n_test) kernel entries),
  from the model's shapes alone: what decides whether it is a CPU's minutes or hours."""
  module = models.get(model).build(ds.num_classes)
  tk = TangentKernel(module, ds.num_classes, ds.train_images.shape[1:], "structured")
  return float(tk.entry_flops) * n * (n + n_test)


def token_interpolation(ds, n: int, n_test: int, model: str, seed: int, ridge: float = 0.0,
                        log=None, singular_ridge: float | None = None) -> dict:
  """Minimum-norm interpolation K a = Y with the class-averaged empirical tangent kernel of
  ``model`` at its initialization from ``seed``, on a token dataset's first ``n`` training
  and ``n_test`` test examples: the kernel regime's test accuracy.

  ``singular_ridge``: where K + ridge I is singular, solve again with a ridge of this times
  K's mean diagonal, then 100, 10^4 and 10^6 times that until one solves (the result's
  ``singular`` is True and ``ridge`` the one used), instead of raising
  ``kernels.SingularKernelError`` at once."""
  log = log or (lambda msg: None)
  spec = models.get(model)
  if ds.inputs != "tokens" or spec.inputs != "tokens":
    raise UsageError(f"`kernel` ntk here is for token datasets and models (modadd with "
                     f"{', '.join(models.names('tokens'))}); for an image run's tangent kernel "
                     f"use `zhang ntk RUN`")
  if not 1 <= n <= len(ds.train_labels) or not 0 <= n_test <= len(ds.test_labels):
    raise UsageError(f"`n_train` {n} / `n_test` {n_test} out of range for {ds.name}: use 1.."
                     f"{len(ds.train_labels)} and 0..{len(ds.test_labels)}")
  start = time.perf_counter()
  module = spec.build(ds.num_classes)
  x, xt = ds.train_images[:n].astype(np.int32), ds.test_images[:n_test].astype(np.int32)
  params = module.init(jax.random.key(seed), x[:1], train=False)["params"]
  tk = TangentKernel(module, ds.num_classes, ds.train_images.shape[1:], "structured")
  plan = plan_memory(n, n_test, ds.num_classes, tk.floats_per_example, record_points=0)
  log(f"memory: {plan.describe()}; work: about {tk.entry_flops * n * (n + n_test) / 1e12:.3g} "
      f"TFLOP of contractions ({tk.entry_flops / 1e6:.3g} MFLOP per kernel entry)")
  if not plan.fits:
    raise UsageError(f"the tangent kernel of {model} on {n} examples needs "
                     f"{plan.total_bytes / 1e9:.1f} GB, over the {plan.budget_bytes / 1e9:.1f} "
                     f"GB budget: use `n_train` {plan.max_n} or less")
  k, kt, _ = tk.matrices(params, {}, x, xt if n_test else None, block=plan.block,
                         hold=plan.hold)
  log(f"kernel: ntk of {model} at initialization (seed {seed}), {n} x {n} in "
      f"{time.perf_counter() - start:.1f}s; solving")
  y = np.zeros((n, ds.num_classes), order="F")
  y[np.arange(n), ds.train_labels[:n]] = 1.0
  sol, ridge, singular = _solve(np.asfortranarray(k), y, ridge, singular_ridge, log)
  train_err = float(np.mean(sol.fitted.argmax(1) != ds.train_labels[:n]))
  predicted = (kt @ sol.coef).argmax(1) if n_test else np.zeros(0, np.int64)
  test_err = float(np.mean(predicted != ds.test_labels[:n_test])) if n_test else None
  return {"dataset": ds.name, "n_train": n, "n_test": n_test, "kernel": "ntk",
          "features": f"{model} tangent", "feature_dim": tk.num_params,
          "model": model, "ridge": ridge, "singular": singular, "seed": seed,
          "test_error": test_err,
          "train_error": train_err, "norm": sol.rkhs_norm, "rkhs_norm": sol.rkhs_norm,
          "condition_lower_bound": sol.cond_bound,
          "seconds": time.perf_counter() - start,
          **kernels_lib.commuted_errors(ds, predicted, n)}


def _solve(k: np.ndarray, y: np.ndarray, ridge: float, singular_ridge: float | None, log):
  """``kernels.solve`` of K + ridge I; where that is singular and ``singular_ridge`` is
  given, again with the growing ridges ``token_interpolation`` names. Returns (solution,
  the ridge used, whether K was singular)."""
  backup = k.copy(order="F") if singular_ridge is not None else None
  try:
    return kernels_lib.solve(k, y, ridge), ridge, False
  except kernels_lib.SingularKernelError:
    if backup is None:
      raise
  scale, base = float(np.mean(np.diagonal(backup))), ridge
  for factor in (1.0, 1e2, 1e4, 1e6):
    ridge = base + factor * singular_ridge * scale
    log(f"the kernel is singular; solving with ridge {ridge:.3g}")
    try:
      return kernels_lib.solve(backup.copy(order="F"), y, ridge), ridge, True
    except kernels_lib.SingularKernelError:
      if factor == 1e6:
        raise
