"""SGLD chains of a localized tempered posterior, and the lambda-hat of their losses.

The estimator core of ``zhang llc`` (``zhang/probes/llc/estimate.py`` runs it on a run's
replicas), with the loss function a parameter, so the same code that samples networks samples
models whose learning coefficient is known (``tests/test_llc.py``). It samples

    p(w) ~ exp(-n beta L_n(w) - gamma/2 |w - w*|^2)

by devinterp's SGLD step, w <- w - eps/2 (n beta grad L_m(w) + gamma (w - w*)) + N(0, eps)
(L_m the mean loss of a minibatch of m examples, drawn without replacement within an epoch,
a fresh order each epoch and chain), and estimates lambda-hat = n beta (E_w[L_n(w)] -
L_n(w*)) with E_w[L_n(w)] the mean of the minibatch losses after burn-in (Lau et al. 2023;
devinterp's ``LLCEstimator``), per chain, then averaged over chains.

Why not blackjax: its ``sgld`` takes the same step but returns only the new position, so the
minibatch loss the estimator averages would cost a second forward pass per step (a third of
a step); here it comes out of the gradient's own forward pass. Its step-size convention (eps
grad log p + sqrt(2 eps) noise) also differs from devinterp's by a factor 2, and the step is
a few lines (``sgld_step``).

The defaults (``Settings``) and their calibration. The estimate approaches lambda when the
directions of w* that count have n beta h >> gamma (h their curvature; for a quadratic loss
lambda-hat = 1/2 sum n beta h / (n beta h + gamma) exactly, so gamma suppresses the flatter
ones), the step is small against the curvature (eps n beta h << 1, else the discretization
inflates the posterior) and the minibatch gradient noise is small against the injected
noise (eps (n beta)^2 h / m << 1). The flattest directions relax in about 2 / (eps gamma)
steps, which the burn-in must cover. Measured (``tests/test_llc.py``'s models, n = 1000,
n beta = n / log n = 145, batch 128, n beta h = 1000, gamma = 100, where the exact tempered
expectation is 4.54 for the regression's d/2 = 5 and 0.45 for the product's 1/2):

  eps     regression (d = 10)           f(x) = a b x at a = 1 (16 chains)
  1e-5    4.52 (16 chains, 13k steps)   0.44 (13k steps): the exact expectation
  1e-4    4.78-5.02 (8 seeds)           0.47-0.50 (4 seeds)
  3e-4    5.63                          0.54
  1e-3    8.78                          0.85

so eps = 1e-4 with gamma = 100 recovers both truths within 15% (its upward discretization
bias and gamma's downward one nearly cancel at this n beta h), and 300 burn-in steps (1.5
relaxation times) and 1000 draws settle every chain there and on the digits run. On the
digits run (MLP 1x512, n beta 198) lambda-hat of the random-label replicas is 236, 261, 300
at eps = 3e-5, 1e-4, 3e-4 (gamma 100) and 45, 48, 58 at gamma = 1000. The order of the
label-corruption levels is the same at all six settings, but the random-pixel and gaussian
replicas sit between p = 0.4 and 0.6 at gamma = 100 and below p = 0.2 at gamma = 1000
(``zhang llc --sweep`` prints such a grid): compare replicas at one setting, and say which.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from zhang.errors import UsageError
from zhang.experiment import randomize

NBETA_RULES = ("n", "batch")
SETTLE_TOL = 0.1  # the last quarter's mean against the quarter before, in lambda-hat units


@dataclasses.dataclass(frozen=True)
class Settings:
  """The sampler's settings (module docstring: what each does, and the calibration)."""
  step_size: float = 1e-4  # eps
  gamma: float = 100.0  # localization strength
  nbeta: str | float = "n"  # "n": n / log n, "batch": m / log m, or a number
  chains: int = 4
  draws: int = 1000  # steps whose minibatch losses enter the estimate
  burnin: int = 300  # steps before them
  batch_size: int | None = None  # m; None: the run's batch size (128 outside a run)
  seed: int = 0

  def check(self) -> None:
    """Raises UsageError for a setting no chain can run with."""
    for name in ("step_size", "gamma"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(f"`{name}` must be a positive number; got {value}")
    for name, low in (("chains", 1), ("draws", 1), ("burnin", 0)):
      value = getattr(self, name)
      if not isinstance(value, int) or value < low:
        raise UsageError(f"`{name}` must be an integer >= {low}; got {value}")
    if self.batch_size is not None and (not isinstance(self.batch_size, int)
                                        or self.batch_size < 1):
      raise UsageError(f"`batch_size` must be a positive integer; got {self.batch_size}")
    parse_nbeta(self.nbeta)

  @property
  def num_steps(self) -> int:
    return self.burnin + self.draws


def parse_nbeta(value) -> str | float:
  """``"n"``, ``"batch"`` or a positive number (also as a string)."""
  if isinstance(value, str) and value in NBETA_RULES:
    return value
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = math.nan
  if not (math.isfinite(number) and number > 0):
    raise UsageError(f"`nbeta` must be n (n / log n, n the training-set size), batch "
                     f"(m / log m, m the batch size) or a positive number; got {value!r}")
  return number


def resolve_nbeta(nbeta, num_data: int, batch_size: int) -> float:
  """n beta as a number: n / log n, m / log m, or the number given."""
  nbeta = parse_nbeta(nbeta)
  if nbeta == "n":
    return num_data / math.log(num_data)
  if nbeta == "batch":
    return batch_size / math.log(batch_size)
  return float(nbeta)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # Threefry-2x32's, alternating by 4 rounds


def _threefry(k0, k1, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011) of the counter pairs (x0, x1) under
  the key (k0, k1): the hash behind JAX's default keys, written out as plain elementwise
  operations (JAX lowers its own as a loop on CPU, each pass a trip through memory)."""
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
    x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def normal_pairs(key, h: int):
  """2h independent standard normals of ``key`` as a complex64 vector of length ``h`` (the
  real and imaginary parts), each pair from one Threefry-2x32 hash.

  Pair j hashes the counters (j, j + h) under ``key`` (the hash behind JAX's default keys,
  ``_threefry``) and turns its two words into two normals by the Box-Muller transform:
  radius sqrt(-2 ln u) from the first word's top 24 bits (u in (0, 1]), and a direction
  uniform on the circle from the second's, an angle phi in [0, pi/4) from its top 24 bits
  (``_sin_cos``) and three low bits choosing one of the circle's eight symmetric copies of
  (cos phi, sin phi): a swap and two signs. Both normals come out of one element of the
  result, so a fusion that consumes it (the SGLD update, ``sgld_step``) hashes each pair
  once; ``jax.random.normal`` hashes once per normal and spends an inverse error function
  on each, about three times the cost of this on the CPU (``benchmarks/llc.py``, ``noise_share``).
  Keys of another implementation get ``jax.random.normal``."""
  data = jax.random.key_data(key)
  if data.shape != (2,):
    z = jax.random.normal(key, (2, h), jnp.float32)
    return jax.lax.complex(z[0], z[1])
  j = jnp.arange(h, dtype=jnp.uint32)
  a, b = _threefry(data[0], data[1], j, j + np.uint32(h))
  u = ((a >> 8) + np.uint32(1)).astype(jnp.float32) * np.float32(2.0 ** -24)
  r = jnp.sqrt(-2.0 * jnp.log(u))
  sin, cos = _sin_cos((b >> 8).astype(jnp.float32) * np.float32(math.pi / 4 * 2.0 ** -24))
  swap = (b & np.uint32(1)) != 0
  x = _flip_sign(jnp.where(swap, sin, cos), (b & np.uint32(2)) << np.uint32(30))
  y = _flip_sign(jnp.where(swap, cos, sin), (b & np.uint32(4)) << np.uint32(29))
  return jax.lax.complex(r * x, r * y)


# Taylor coefficients, highest degree first: on [0, pi/4] the first term left out is below
# 2e-9, so float32 rounding (1e-7) is the error.
_SIN = tuple((-1) ** (k // 2) / math.factorial(k) for k in (9, 7, 5, 3, 1))
_COS = tuple((-1) ** (k // 2) / math.factorial(k) for k in (10, 8, 6, 4, 2, 0))


def _sin_cos(phi):
  """(sin phi, cos phi) for phi in [0, pi/4], as polynomials XLA keeps in the fusion
  (``jnp.sin`` and ``jnp.cos`` cost several times as much on the CPU)."""
  p2 = phi * phi
  sin = cos = jnp.float32(0.0)
  for c in _SIN:
    sin = sin * p2 + np.float32(c)
  for c in _COS:
    cos = cos * p2 + np.float32(c)
  return sin * phi, cos


def _flip_sign(x, sign_bit):
  """x with its sign bit XORed with ``sign_bit`` (0 or 1 << 31)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32) ^ sign_bit
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def to_pairs(flat):
  """(..., n) float32 -> (..., ceil(n / 2)) complex64: element j is flat[2j] + i flat[2j + 1]
  (a 0 pads odd n), so that ``normal_pairs`` makes both of its normals. Neighbours pair up,
  so the pairs lie in memory as the parameters do and ``from_pairs`` is a plain copy."""
  if flat.shape[-1] % 2:
    flat = jnp.concatenate([flat, jnp.zeros_like(flat[..., :1])], axis=-1)
  return jax.lax.complex(flat[..., 0::2], flat[..., 1::2])


def from_pairs(pairs, n: int):
  """``to_pairs``' inverse: (..., h) complex64 -> (..., n) float32."""
  flat = jnp.stack([jnp.real(pairs), jnp.imag(pairs)], axis=-1)
  return flat.reshape(*pairs.shape[:-1], 2 * pairs.shape[-1])[..., :n]


def pair_leaves(tree):
  """A chain's position: each leaf of a parameter tree flattened to float32 and held in
  pairs (``to_pairs``, complex64 (ceil(size / 2),)). Leaf by leaf rather than one vector
  for the whole model: the step then reads each gradient and writes each leaf where the
  model has them, with no copy of every parameter into one vector and back."""
  return jax.tree.map(lambda x: to_pairs(jnp.ravel(x).astype(jnp.float32)), tree)


def unpair_leaves(pairs, like):
  """``pair_leaves``' inverse: leaves of the shapes and dtypes of ``like``'s."""
  return jax.tree.map(lambda p, x: from_pairs(p, math.prod(x.shape)).reshape(x.shape).astype(
      x.dtype), pairs, like)


def sgld_step(loss_fn: Callable, w, w_star, key, batch, step_size, gamma, nbeta, like):
  """One SGLD step of one chain: returns (new w, the minibatch loss at w).

  ``w`` and ``w_star`` are a chain's position and its centre in pairs (``pair_leaves`` of a
  tree shaped as ``like``), ``loss_fn(params, batch)`` the mean loss of the minibatch. The
  step is devinterp's, w - eps/2 (n beta grad + gamma (w - w*)) + sqrt(eps) N(0, 1): for
  each leaf one pass over its pairs, the noise (``normal_pairs``, of the key folded with the
  leaf's index) made where it is added, each hash once for two parameters.
  """
  loss, grads = jax.value_and_grad(loss_fn)(unpair_leaves(w, like), batch)
  leaves, treedef = jax.tree.flatten(w)
  new = []
  for i, (x, x_star, g) in enumerate(zip(leaves, jax.tree.leaves(w_star),
                                         jax.tree.leaves(grads))):
    noise = normal_pairs(jax.random.fold_in(key, i), x.shape[-1])
    gp = to_pairs(jnp.ravel(g).astype(jnp.float32))
    # Real and imaginary parts apart: a real scalar times a complex number would be a
    # complex product (four multiplications, not two).
    parts = [p - (0.5 * step_size) * (nbeta * q + gamma * (p - p_star)) + jnp.sqrt(step_size) * z
             for p, p_star, q, z in ((part(x), part(x_star), part(gp), part(noise))
                                     for part in (jnp.real, jnp.imag))]
    new.append(jax.lax.complex(*parts))
  return jax.tree.unflatten(treedef, new), loss


def run_chains(step_fn: Callable, w0, keys, num_data: int, batch_size: int, num_steps: int):
  """``num_steps`` steps of chains with keys ``keys`` (any leading shape S, e.g. (replicas,
  chains)). ``step_fn(w, indices, step_keys)`` steps every chain: ``indices`` (*S, m) are
  each chain's minibatch (an epoch's order, fresh each epoch), ``step_keys`` (*S) its noise
  keys; it returns (w, losses (*S)). Returns (w, the loss trace (*S, num_steps))."""
  shape = keys.shape
  flat = keys.reshape(-1)
  order_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(flat)
  noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(flat)
  per_epoch = num_data // batch_size

  def orders(epoch):  # one-operand sorts (``randomize.example_permutation``), not pairs
    return jax.vmap(lambda k: randomize.example_permutation(jax.random.fold_in(k, epoch),
                                                            num_data))(order_keys).reshape(
                                                                *shape, num_data)

  def body(carry, t):
    w, order = carry
    pos = t % per_epoch
    # The step is shared by every chain, so this stays a real branch.
    order = jax.lax.cond(pos == 0, lambda: orders(t // per_epoch), lambda: order)
    indices = jax.lax.dynamic_slice_in_dim(order, pos * batch_size, batch_size, axis=-1)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(noise_keys).reshape(shape)
    w, loss = step_fn(w, indices, step_keys)
    return (w, order), loss

  order0 = jnp.zeros((*shape, num_data), jnp.int32)
  (w, _), trace = jax.lax.scan(body, (w0, order0), jnp.arange(num_steps))
  return w, jnp.moveaxis(trace, 0, -1)


def estimate(trace, init_loss: float, nbeta: float, burnin: int, num_params: int) -> dict:
  """lambda-hat and the diagnostics of one model's chains, from its loss trace (chains,
  steps) and L_n(w*), as plain numbers."""
  trace = np.asarray(trace, np.float64)
  draws = trace[:, burnin:]
  with np.errstate(invalid="ignore", over="ignore"):
    per_chain = nbeta * (draws.mean(axis=1) - init_loss)
  diverged = ~np.isfinite(trace).all(axis=1) | ~(np.abs(per_chain) <= num_params)
  good = per_chain[~diverged]
  out = dict(llc=None, llc_std=None, llc_se=None, llc_per_chain=per_chain.tolist(),
             init_loss=float(init_loss), mean_loss=None, diverged_chains=int(diverged.sum()),
             settled=None, drift=None)
  if not len(good):
    return out
  llc = float(good.mean())
  std = float(good.std(ddof=1)) if len(good) > 1 else None
  out.update(llc=llc, llc_std=std, llc_se=None if std is None else std / math.sqrt(len(good)),
             mean_loss=float(draws[~diverged].mean()))
  quarter = draws.shape[1] // 4
  if quarter >= 2:
    kept = draws[~diverged]
    change = nbeta * (kept[:, -quarter:].mean(1) - kept[:, -2 * quarter:-quarter].mean(1))
    if len(change) > 1:
      noise = change.std(ddof=1) / math.sqrt(len(change))
    else:  # one chain: the minibatch losses' own spread, as if independent
      noise = nbeta * kept[0, -2 * quarter:].std() * math.sqrt(2.0 / quarter)
    drift = float(change.mean())
    out.update(drift=drift, settled=bool(abs(drift) <= max(SETTLE_TOL * max(abs(llc), 1.0),
                                                           3.0 * noise)))
  return out


def sample(loss_fn: Callable, w_star, num_data: int, settings: Settings = Settings(),
           init_loss: float | None = None) -> dict:
  """lambda-hat of one model by the core ``zhang.probes.llc.estimate`` runs on a grid:
  ``loss_fn(w, indices)`` is the mean loss of the examples ``indices`` (int32 (m,)) of
  ``num_data``; ``init_loss`` defaults to the loss of all of them at ``w_star``. Returns
  ``estimate``'s dict with the trace (chains, steps), n beta and the parameter count."""
  m = settings.batch_size or 128
  check_settings(dataclasses.replace(settings, batch_size=m), num_data)
  nbeta = resolve_nbeta(settings.nbeta, num_data, m)
  if init_loss is None:
    init_loss = float(jax.jit(loss_fn)(w_star, jnp.arange(num_data)))
  chain_keys = jax.random.split(jax.random.key(settings.seed), settings.chains)
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
                      w_star)

  @jax.jit
  def chains(w_star, keys, step_size, gamma, nbeta):
    def step_fn(w, indices, step_keys):
      one = lambda w, i, k: sgld_step(loss_fn, w, w_star, k, i, step_size, gamma, nbeta, like)
      return jax.vmap(one)(w, indices, step_keys)
    w0 = jax.tree.map(lambda x: jnp.broadcast_to(x, (settings.chains, *x.shape)), w_star)
    return run_chains(step_fn, w0, keys, num_data, m, settings.num_steps)[1]

  trace = np.asarray(chains(pair_leaves(w_star), chain_keys, settings.step_size,
                            settings.gamma, nbeta))
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(w_star))
  return dict(estimate(trace, init_loss, nbeta, settings.burnin, num_params), trace=trace,
              nbeta=nbeta, num_params=num_params)


def check_settings(s: Settings, n: int | None = None) -> None:
  """``Settings.check``, and a batch no larger than the ``n`` training examples."""
  s.check()
  if n is not None and s.batch_size is not None and s.batch_size > n:
    raise UsageError(f"`batch_size` {s.batch_size} is more than the {n} training examples")

