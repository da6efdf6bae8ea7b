"""The arithmetic of the PAC-Bayes bounds: the binary KL and its upper inverse, the PAC-Bayes-kl
bound, the union bound over the prior's variance, the Monte Carlo estimate's own bound, and the
KL between the diagonal Gaussian posterior and the isotropic Gaussian prior.

Every function takes numpy values or JAX arrays: given numpy (or Python numbers) it computes
in float64 on the host (what a report prints), given a JAX array (traced inside the probe's
program, say) it computes in jnp and the arrays' dtype (float32), where ``kl_inverse`` is then
exact only to float32's rounding (about 1e-7) instead of 2^-``steps``.

The certified bound (``certified``) holds with probability at least 1 - ``delta`` -
``mc_delta`` over the training sample and the Monte Carlo draws together:

1. Monte Carlo (Langford and Caruana 2002, "(Not) bounding the true error"): the posterior's
   training error e(Q) is estimated from ``draws`` networks sampled from it, e_m; with
   probability 1 - ``mc_delta`` over the draws, e(Q) <= kl^{-1}(e_m, log(2 / mc_delta) / m).
2. PAC-Bayes-kl (Langford and Seeger 2001, in Maurer's 2004 form): with probability
   1 - ``delta_j`` over the n training examples, for every posterior Q,
   kl(e(Q) || err(Q)) <= (KL(Q || P_j) + log(2 sqrt(n) / delta_j)) / n.
3. The prior P_j = N(w0, lambda_j I) is one of the grid lambda_j = c exp(-j / b), j in
   {0, ..., count - 1}; a union bound spends delta_j = delta pi_j, pi a distribution over the
   grid, and pays log(1 / pi_j) nats (``union_cost``).

kl^{-1}(q, .) grows with q, so err(Q) <= kl^{-1}(kl^{-1}(e_m, .), (KL + union + log(2 sqrt(n) /
delta)) / n). Dziugaite and Roy use delta = 0.025 and mc_delta = 0.01: 0.965 in all.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Dziugaite and Roy's confidences and variance grid (their code: ``deltaPAC = 0.025``, the
# Monte Carlo bound's 0.01, ``log_prior_std_base = 0.1``, ``log_prior_std_precision = 100``).
DELTA = 0.025
MC_DELTA = 0.01
PRIOR_SCALE = 0.1  # c
PRIOR_PRECISION = 100.0  # b
UNION_RULES = ("uniform", "harmonic")


def _xp(*values):
  """The array module for these values: jnp if any is a JAX array (traced ones too)."""
  return jnp if any(isinstance(v, jax.Array) for v in values) else np


def _float(xp, value):
  return xp.asarray(value, np.float64) if xp is np else xp.asarray(value, jnp.float32)


def binary_kl(q, p):
  """kl(q || p) = q log(q / p) + (1 - q) log((1 - q) / (1 - p)), the KL between Bernoulli(q)
  and Bernoulli(p), with 0 log 0 = 0 (so +inf where p is 0 or 1 and q is not).

  Written as -q log1p((p - q) / q) + (1 - q) log1p((p - q) / (1 - p)): exactly 0 at p = q and
  accurate to rounding relative to itself near it, where the difference of q log q and
  q log p loses everything below 1e-17 and with it the inverse's last digits at small c."""
  xp = _xp(q, p)
  q, p = _float(xp, q), _float(xp, p)
  with np.errstate(divide="ignore", invalid="ignore"):
    low = xp.where(q > 0, -q * xp.log1p((p - q) / xp.where(q > 0, q, 1.0)), 0.0)
    high = xp.where(q < 1, (1 - q) * xp.log1p((p - q) / (1 - p)), 0.0)
  return low + high


def kl_inverse(q, c, steps: int = 40):
  """max {p in [q, 1]: kl(q || p) <= c}, by ``steps`` bisections of [q, 1]: the upper end of
  the last bracket, so never below the exact value and at most 2^-steps above it (40 steps:
  1e-12). c = inf gives 1; NaN in, NaN out."""
  xp = _xp(q, c)
  q, c = _float(xp, q), _float(xp, c)
  q = xp.clip(q, 0.0, 1.0)
  lo, hi = q, xp.ones_like(q + c)
  for _ in range(steps):
    mid = (lo + hi) / 2
    within = binary_kl(q, mid) <= c
    lo, hi = xp.where(within, mid, lo), xp.where(within, hi, mid)
  return xp.where(xp.isnan(q) | xp.isnan(c), xp.nan, hi)


def prior_variance(j, scale: float = PRIOR_SCALE, precision: float = PRIOR_PRECISION):
  """lambda_j = c exp(-j / b), the grid of the prior's variance."""
  xp = _xp(j)
  return scale * xp.exp(-_float(xp, j) / precision)


def prior_index(lam, count: int, scale: float = PRIOR_SCALE,
                precision: float = PRIOR_PRECISION):
  """The j in {0, ..., count - 1} whose lambda_j is nearest ``lam`` in log (as a float)."""
  xp = _xp(lam)
  j = xp.round(precision * (math.log(scale) - xp.log(_float(xp, lam))))
  return xp.clip(j, 0, count - 1)


def union_cost(j, count: int, rule: str = "uniform"):
  """log(1 / pi_j), the nats the union bound over the variance grid pays for prior j.

  - ``uniform``: pi_j = 1 / count, log(count) for every j.
  - ``harmonic``: Dziugaite and Roy's pi_j = 6 / (pi^2 j^2), shifted to j + 1 so that j = 0
    (lambda = c) is in the set: log(pi^2 / 6) + 2 log(j + 1). Their objective writes it
    2 log(b log(c / lambda)) + log(pi^2 / 6); it does not depend on ``count``.

  ``j`` may be a real number (the objective's continuous relaxation); it is taken >= 0.
  """
  xp = _xp(j)
  j = xp.maximum(_float(xp, j), 0.0)
  if rule == "uniform":
    return xp.zeros_like(j) + math.log(count)
  if rule == "harmonic":
    return math.log(math.pi**2 / 6) + 2 * xp.log1p(j)
  raise ValueError(f"unknown union rule {rule!r}; one of {UNION_RULES}")


def complexity(kl, n, delta: float = DELTA, union=0.0):
  """(KL + union + log(2 sqrt(n) / delta)) / n: the right side of the PAC-Bayes-kl bound."""
  xp = _xp(kl, n, union)
  n = _float(xp, n)
  return (_float(xp, kl) + union + xp.log(2 * xp.sqrt(n) / delta)) / n


def pac_bayes_kl_bound(train_error, kl, n, delta: float = DELTA, union=0.0):
  """The PAC-Bayes-kl bound on the posterior's error: kl^{-1}(train_error, ``complexity``),
  with probability 1 - delta (``union`` the union bound's nats, 0 for a single prior)."""
  return kl_inverse(train_error, complexity(kl, n, delta, union))


def sample_convergence_bound(mc_error, draws, mc_delta: float = MC_DELTA):
  """Langford and Caruana's bound on the posterior's training error from its mean over
  ``draws`` sampled networks: kl^{-1}(mc_error, log(2 / mc_delta) / draws), with probability
  1 - mc_delta over the draws."""
  xp = _xp(mc_error, draws)
  return kl_inverse(mc_error, math.log(2 / mc_delta) / _float(xp, draws))


def certified(mc_error, draws, kl, n, delta: float = DELTA, mc_delta: float = MC_DELTA,
              union=0.0):
  """(the bound on the training error, the bound on the error): the sample-convergence bound,
  then the PAC-Bayes-kl bound at it; with probability 1 - delta - mc_delta in all."""
  train = sample_convergence_bound(mc_error, draws, mc_delta)
  return train, pac_bayes_kl_bound(train, kl, n, delta, union)


def gaussian_kl_log(mu, log_s, w0, log_lam):
  """KL(N(mu, diag(exp(log_s))) || N(w0, exp(log_lam) I)) over all elements, from the
  variances' logarithms (no exp-then-log round trip for tiny variances):
  1/2 sum_i [s_i / lambda + (mu_i - w0_i)^2 / lambda - 1 + log lambda - log s_i]."""
  xp = _xp(mu, log_s, w0, log_lam)
  mu, log_s, w0, log_lam = (_float(xp, a) for a in (mu, log_s, w0, log_lam))
  inv_lam = xp.exp(-log_lam)
  terms = xp.exp(log_s - log_lam) + (mu - w0)**2 * inv_lam - 1 + log_lam - log_s
  return 0.5 * xp.sum(terms)


def gaussian_kl(mu, s, w0, lam):
  """KL(N(mu, diag(s)) || N(w0, lam I)), s the posterior's variances, lam the prior's."""
  xp = _xp(mu, s, w0, lam)
  return gaussian_kl_log(mu, xp.log(_float(xp, s)), w0, xp.log(_float(xp, lam)))
