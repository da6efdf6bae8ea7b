"""Flatness of one replica's minimum: how far its parameters can move, at random or at worst,
before its training accuracy drops by ``Settings.accuracy_drop`` (Jiang et al. 2020,
"Fantastic generalization measures and where to find them": their worst-case sharpness and
PAC-Bayesian flatness measures, and the searches their appendix describes).

- ``pacbayes_flatness`` = 1/sigma^2: sigma the largest standard deviation of isotropic noise,
  w + u with u ~ N(0, sigma^2 I), under which the expected training accuracy stays within
  ``accuracy_drop`` of the unperturbed accuracy.
- ``pacbayes_mag_flatness`` = 1/sigma'^2: the same with magnitude-aware noise, u_i ~
  N(0, sigma'^2 w_i^2 + eps^2).
- ``sharpness`` = 1/alpha^2: alpha the largest box half-width such that the training accuracy
  after projected gradient ascent on the training cross-entropy within |u_i| <= alpha stays
  within ``accuracy_drop``: the worst case in the box, as far as a few ascent steps find it.

Accuracy is the mean over the replica's real examples of argmax(logits) == label, with batch
norm on its running statistics; only ``params`` are perturbed, never batch statistics.

Each quantity is found by bisection with a fixed number of steps (a ``lax.fori_loop`` whose
bounds are the replica's own), so every replica does the same work and the grid maps over
them. The midpoint is geometric, sqrt(lo hi): sigma and alpha of different networks span
orders of magnitude, and a geometric search gives every one the same relative resolution,
(hi/lo)^(2^-steps), where an arithmetic one from 0 resolves the small ones coarsely. The
draws at every candidate value are the same standard normals scaled (common random numbers,
from the replica's key): the estimated accuracy is then one fixed random function of sigma,
and the bisection finds where it crosses the target without new draws' noise at each step.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from zhang.errors import UsageError
from zhang.probes.measures import curvature


@dataclasses.dataclass(frozen=True)
class Settings:
  """The searches' settings, and the curvature group's counts.

  From Jiang et al. 2020: the accuracy drop 0.1 and the magnitude-aware eps = 1e-3. From the
  reimplementation of their PAC-Bayes search by Dziugaite et al. 2020 ("In search of robust
  measures of generalization", code adapted from Jiang et al.'s): 10 Monte Carlo draws per
  candidate sigma, 15 bisection steps, upper end 2 for sigma and sigma'. That code stops
  early once the drop is within 0.01 of the target; here every search runs all its steps.

  Our choices, where their numbers were not found: the geometric midpoint and the lower ends
  (1e-6 for sigma and sigma'; 1e-8 for alpha, whose worst case is far smaller than a random
  one); the ascent, 5 sign-gradient steps of 2.5 alpha / 5 each (Madry et al. 2018's PGD rule:
  the path reaches any corner of the box) from a uniform start in the box, on the full
  training set; 12 bisection steps for alpha (0.5% resolution over its range), each costing
  5 gradients and an accuracy. On the digits MLP (mlp_1x512, 1438 examples, true and random
  labels) 5 ascent steps give an alpha 3% above 20 steps' and 10 steps' 2%: the same order of
  replicas for half the cost of 10. For curvature (Jiang et al. have no Hessian measures): 20
  power iterations come within 1.5% of 150's top eigenvalue there, and 20 Hutchinson samples
  have a relative standard error of 3-5%. What the draws leave: one digits network under 8
  keys gives sigma within 3%, sigma' 4% and alpha 8% of their mean, where the true-label
  and random-label networks differ 2.5- to 6-fold (sigma 0.14 against 0.055, alpha 0.011 against
  0.0044, sigma' 1.25 against 0.20).

  A value at an end of its range means the range did not bracket it.
  """
  accuracy_drop: float = 0.1
  draws: int = 10
  search_steps: int = 15
  sigma_range: tuple = (1e-6, 2.0)
  magnitude_eps: float = 1e-3
  alpha_range: tuple = (1e-8, 2.0)
  alpha_steps: int = 12
  ascent_steps: int = 5
  ascent_reach: float = 2.5  # the ascent's total path in units of alpha
  power_iterations: int = 20  # the curvature group's (``curvature``)
  trace_samples: int = 20

  def check(self) -> None:
    """Raises UsageError for a setting no search can run with."""
    for name in ("draws", "search_steps", "alpha_steps", "ascent_steps", "power_iterations",
                 "trace_samples"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"`{name}` must be an integer >= 1; got {value!r}")
    for name in ("accuracy_drop", "magnitude_eps", "ascent_reach"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(f"`{name}` must be a positive number; got {value!r}")
    for name in ("sigma_range", "alpha_range"):
      value = getattr(self, name)
      if not (isinstance(value, (tuple, list)) and len(value) == 2
              and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
              and 0 < value[0] < value[1]):
        raise UsageError(f"`{name}` must be two numbers 0 < lo < hi; got {value!r}")


def accuracy(model, rep, params):
  """The training accuracy at ``params``: argmax(logits) == label over the real examples."""
  def chunk(x, y, valid):
    hit = jnp.argmax(model.logits(params, rep.batch_stats, x), axis=-1) == y
    return jnp.sum(valid.astype(jnp.float32) * hit)

  return curvature.sum_over_chunks(chunk, model, rep) / curvature.num_valid(rep)


def _shifted(params, u):
  return jax.tree.map(lambda p, d: p + d.astype(p.dtype), params, u)


def perturbed_accuracy(model, rep, std, key):
  """One Monte Carlo draw: the accuracy at params + std * z, z ~ N(0, I) from ``key``.
  ``std`` is a pytree like ``params`` whose leaves broadcast against them (scalars too)."""
  z = curvature.normal_like(key, rep.params)
  return accuracy(model, rep, _shifted(rep.params, jax.tree.map(jnp.multiply, std, z)))


def expected_accuracy(model, rep, std, key, draws: int):
  """The mean of ``perturbed_accuracy`` over ``draws`` draws (keys ``fold_in(key, k)``)."""
  body = lambda k, total: total + perturbed_accuracy(model, rep, std,
                                                     jax.random.fold_in(key, k))
  return jax.lax.fori_loop(0, draws, body, jnp.float32(0.0)) / draws


def noise_std(params, sigma, magnitude, eps: float):
  """The noise's standard deviation for every parameter w_i: sqrt(sigma^2 (m w_i^2 + 1 - m)
  + m eps^2), so sigma at m = ``magnitude`` = 0 (isotropic) and sqrt(sigma^2 w_i^2 + eps^2)
  at m = 1 (magnitude-aware); m may be traced, which lets ``search`` run both as one."""
  m = jnp.asarray(magnitude, jnp.float32)
  return jax.tree.map(
      lambda p: jnp.sqrt(sigma**2 * (m * p.astype(jnp.float32)**2 + 1 - m) + m * eps**2),
      params)


def ascent_step(model, rep, u, alpha, step):
  """One projected sign-gradient ascent step of the training cross-entropy at params + u,
  back into the box |u_i| <= alpha."""
  grad = curvature.loss_grad(model, rep, _shifted(rep.params, u))
  return jax.tree.map(
      lambda d, g: jnp.clip(d + step * jnp.sign(g).astype(d.dtype), -alpha, alpha), u, grad)


def worst_accuracy(model, rep, alpha, key, s: Settings):
  """The accuracy at params + u after ``s.ascent_steps`` ascent steps from a uniform u in the
  box |u_i| <= alpha (the uniform numbers from ``key``)."""
  size = sum(p.size for p in jax.tree.leaves(rep.params))
  start = jax.random.uniform(key, (size,), jnp.float32, -1.0, 1.0)
  u = curvature.split_like(alpha * start, rep.params)
  step = s.ascent_reach * alpha / s.ascent_steps
  u = jax.lax.fori_loop(0, s.ascent_steps,
                        lambda _, u: ascent_step(model, rep, u, alpha, step), u)
  return accuracy(model, rep, _shifted(rep.params, u))


def bisect(ok, lo: float, hi: float, steps: int):
  """The largest value in [lo, hi] where ``ok`` (true below a threshold, false above) holds,
  by ``steps`` geometric bisections; returns the geometric middle of the last bracket."""
  def body(_, bracket):
    lo, hi = bracket
    mid = jnp.sqrt(lo * hi)
    good = ok(mid)
    return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

  lo, hi = jax.lax.fori_loop(0, steps, body, (jnp.float32(lo), jnp.float32(hi)))
  return jnp.sqrt(lo * hi)


def pacbayes_sigma(model, rep, s: Settings, base, magnitude=False):
  """sigma (isotropic noise) or, with ``magnitude`` (a bool, or 0/1 traced), sigma'
  (magnitude-aware noise) of one replica, ``base`` its unperturbed accuracy."""
  m = jnp.asarray(magnitude, jnp.float32)
  key = jax.random.fold_in(curvature.stream(rep.key, "pacbayes"), m.astype(jnp.uint32))
  within = lambda v: base - expected_accuracy(
      model, rep, noise_std(rep.params, v, m, s.magnitude_eps), key, s.draws) <= s.accuracy_drop
  return bisect(within, *s.sigma_range, s.search_steps)


def sharpness_alpha(model, rep, s: Settings, base):
  """alpha of one replica, ``base`` its unperturbed accuracy."""
  key = curvature.stream(rep.key, "sharpness")
  within = lambda v: base - worst_accuracy(model, rep, v, key, s) <= s.accuracy_drop
  return bisect(within, *s.alpha_range, s.alpha_steps)


def search(model, rep, s: Settings) -> dict:
  """sigma, sigma' (``sigma_mag``) and alpha of one replica (float32 scalars)."""
  base = accuracy(model, rep, rep.params)
  # Both PAC-Bayes searches as one (batched) loop: half the sequential steps and one program.
  sigma, sigma_mag = jax.vmap(lambda m: pacbayes_sigma(model, rep, s, base, m))(
      jnp.array([0.0, 1.0]))
  return dict(sigma=sigma, sigma_mag=sigma_mag, alpha=sharpness_alpha(model, rep, s, base))


def measures(model, rep, s: Settings) -> tuple[dict, dict]:
  """(measures, search) of one replica: pacbayes_flatness, pacbayes_mag_flatness and
  sharpness, complexity-oriented (the sharper the minimum, the larger), and the raw sigma,
  sigma' and alpha they come from (``search``)."""
  found = search(model, rep, s)
  return dict(pacbayes_flatness=1.0 / found["sigma"]**2,
              pacbayes_mag_flatness=1.0 / found["sigma_mag"]**2,
              sharpness=1.0 / found["alpha"]**2), found
