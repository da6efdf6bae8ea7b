"""The flatness and curvature measures against independent computations on tiny models: the
dense Hessian of a small MLP, and linear classifiers whose accuracy under Gaussian noise has a
closed form and whose worst case in a box is a known corner."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import optimize, stats

from zhang.errors import UsageError
from zhang.experiment import models
from zhang.probes.measures import context, curvature, flatness


def _mlp_replica(seed, n=13, chunk=4, padding=7):
  """A 4-5-3 MLP at initialization on n random examples, padded with garbage rows."""
  module = models.MLP(1, 3, width=5)
  rng = np.random.default_rng(seed)
  m = -(-(n + padding) // chunk) * chunk
  x = rng.normal(size=(m, 4)).astype(np.float32)
  y = rng.integers(0, 3, m).astype(np.int32)
  valid = (np.arange(m) < n).astype(np.float32)
  params = module.init(jax.random.key(seed), x[:1], train=False)["params"]
  model = context.Model(logits=lambda p, bs, x: module.apply({"params": p}, x, train=False),
                        module=module, layers=(), chunk=chunk)
  rep = context.Replica(params, params, {}, jnp.asarray(x), jnp.asarray(y), jnp.asarray(valid),
                        jax.random.key(seed))
  return model, rep, n


def _dense_hessian(model, rep, n):
  """The Hessian of the mean cross-entropy of the n real examples, one matrix (no chunks)."""
  flat, unravel = ravel_pytree(rep.params)

  def loss(w):
    logits = model.logits(unravel(w), {}, rep.x[:n])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(n), rep.y[:n]])

  h = np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64)
  return (h + h.T) / 2


def test_hessian_top_and_trace_match_the_dense_hessian():
  model, rep, n = _mlp_replica(0)
  h = _dense_hessian(model, rep, n)
  eig = np.linalg.eigvalsh(h)
  order = np.argsort(-np.abs(eig))
  top, second = eig[order[0]], eig[order[1]]
  iters, samples = 100, 4000
  # Power iteration's Rayleigh quotient converges as (l2/l1)^(2k); Hutchinson's estimate has
  # variance 2 (|H|_F^2 - sum_i H_ii^2) / samples.
  power_error = abs(top) * (abs(second) / abs(top))**(2 * iters)
  trace_sd = math.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h)**2)) / samples)
  assert power_error < 1e-6 and 4 * trace_sd < 0.1 * abs(np.trace(h))
  v = curvature.normal_like(jax.random.key(1), rep.params)
  s = flatness.Settings(power_iterations=iters, trace_samples=samples)
  got, hv = jax.jit(lambda rep: (curvature.measures(model, rep, s),
                                 curvature.hvp(model, rep, v)))(rep)
  assert float(got["hessian_top"]) == pytest.approx(top, rel=1e-4, abs=power_error)
  assert abs(float(got["hessian_trace"]) - np.trace(h)) < 4 * trace_sd
  np.testing.assert_allclose(ravel_pytree(hv)[0], h @ np.asarray(ravel_pytree(v)[0]),
                             rtol=1e-4, atol=1e-6)


def _linear_replica(x, y, valid, w, b, shift, chunk, seed=0):
  """Two-class logits x W + b + shift, ``shift`` a batch statistic (never perturbed)."""
  model = context.Model(logits=lambda p, bs, x: x @ p["w"] + p["b"] + bs["shift"],
                        module=None, layers=(), chunk=chunk)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  rep = context.Replica(dict(w=f32(w), b=f32(b)), None, dict(shift=f32(shift)), f32(x),
                        jnp.asarray(y, jnp.int32), f32(valid), jax.random.key(seed))
  return model, rep


def _noise_case(seed=3, n=300, d=16, chunk=64):
  rng = np.random.default_rng(seed)
  m = -(-(n + 20) // chunk) * chunk
  x = rng.normal(size=(m, d))
  w, b, shift = rng.normal(size=(d, 2)) * 0.7, rng.normal(size=2) * 0.3, np.array([0.2, -0.1])
  y = np.argmax(x @ w + b + shift, axis=1)
  flip = rng.random(m) < 0.08
  y[flip] = 1 - y[flip]
  valid = (np.arange(m) < n).astype(np.float32)
  y[n:] = rng.integers(0, 2, m - n)
  return x, y, valid, w, b, shift, n


def _closed_form_sigma(x, y, w, b, shift, s: flatness.Settings, magnitude: bool):
  """sigma (or sigma') where the expected accuracy of the two-class linear model is
  ``s.accuracy_drop`` below its unperturbed accuracy, and how closely ``s.draws`` Monte Carlo
  draws per candidate can find it."""
  sign = np.where(y == 1, 1.0, -1.0)
  margin = sign * ((x @ w + b + shift) @ np.array([-1.0, 1.0]))
  # The noise's standard deviation per parameter at sigma (W, b).
  if magnitude:
    std = lambda v: (np.sqrt(v**2 * w**2 + s.magnitude_eps**2),
                     np.sqrt(v**2 * b**2 + s.magnitude_eps**2))
  else:
    std = lambda v: (np.full_like(w, v), np.full_like(b, v))

  def expected(v):  # the logit difference of example i moves by N(0, sum of its variances)
    sw, sb = std(v)
    var = x**2 @ (sw**2).sum(1) + (sb**2).sum()
    return stats.norm.cdf(margin / np.sqrt(var)).mean()

  base = np.mean(margin > 0)
  sigma = optimize.brentq(lambda v: expected(v) - (base - s.accuracy_drop), 1e-4, 2.0)
  # The spread of one draw's accuracy at sigma (the draws share one perturbation, so the
  # examples are correlated), by simulation; the search's error is that over sqrt(draws),
  # through the slope of the expected accuracy, plus the bisection's resolution.
  rng = np.random.default_rng(0)
  sw, sb = std(sigma)
  uw = rng.normal(size=(20000, *w.shape)) * sw
  ub = rng.normal(size=(20000, 2)) * sb
  moved = margin + sign * (np.einsum("nd,kd->kn", x, uw[..., 1] - uw[..., 0])
                           + (ub[:, 1] - ub[:, 0])[:, None])
  draw_sd = (moved > 0).mean(1).std()
  slope = (expected(sigma * 1.01) - expected(sigma * 0.99)) / (0.02 * sigma)
  resolution = sigma * ((s.sigma_range[1] / s.sigma_range[0])**(2.0**-s.search_steps) - 1)
  return sigma, 4 * draw_sd / math.sqrt(s.draws) / abs(slope) + resolution


def test_pacbayes_sigmas_solve_the_closed_form():
  x, y, valid, w, b, shift, n = _noise_case()
  s = flatness.Settings(draws=1000, magnitude_eps=0.05)
  model, rep = _linear_replica(x, y, valid, w, b, shift, chunk=64)
  got = jax.jit(lambda rep: flatness.search(model, rep, s))(rep)
  for name, magnitude in (("sigma", False), ("sigma_mag", True)):
    sigma, tolerance = _closed_form_sigma(x[:n], y[:n], w, b, shift, s, magnitude)
    assert tolerance < 0.06 * sigma
    assert abs(float(got[name]) - sigma) < tolerance, name


def test_sharpness_alpha_is_the_worst_corner():
  # All labels 1 and x >= 0: every example's logit difference x.(w1 - w0) + b1 - b0 falls
  # fastest at one corner of the box, u_w1 = u_b1 = -alpha, u_w0 = u_b0 = +alpha, by
  # 2 alpha (|x|_1 + 1). Example i is lost from alpha = t_i = margin_i / (2 (|x_i|_1 + 1)),
  # so the accuracy drops by more than 0.1 of 95 examples from the 10th smallest t_i on.
  rng = np.random.default_rng(5)
  n, m, d = 95, 100, 3
  x = rng.uniform(0.0, 1.0, size=(m, d))
  w = np.stack([np.zeros(d), rng.uniform(0.5, 1.5, d)], axis=1)
  b = np.array([0.0, 0.3])
  y = np.ones(m, np.int32)
  y[n:] = 0  # padding that would pull the ascent the other way if it counted
  valid = (np.arange(m) < n).astype(np.float32)
  model, rep = _linear_replica(x, y, valid, w, b, np.zeros(2), chunk=20)
  t = np.sort((x[:n] @ (w[:, 1] - w[:, 0]) + b[1] - b[0]) / (2 * (x[:n].sum(1) + 1)))
  s = flatness.Settings()
  got = jax.jit(lambda rep: flatness.sharpness_alpha(model, rep, s, jnp.float32(1.0)))(rep)
  half_bracket = 0.5 * math.log(s.alpha_range[1] / s.alpha_range[0]) * 2.0**-s.alpha_steps
  assert abs(math.log(float(got) / t[9])) <= half_bracket + 1e-5


def test_vmap_over_replicas_equals_each_alone():
  s = flatness.Settings(draws=3, search_steps=6, alpha_steps=5, ascent_steps=3,
                        power_iterations=5, trace_samples=5)
  reps = []
  for seed in (1, 2):
    x, y, valid, w, b, shift, _ = _noise_case(seed=seed, n=100, d=4, chunk=32)
    model, rep = _linear_replica(x, y, valid, w, b, shift, chunk=32, seed=seed)
    reps.append(rep)
  one = lambda rep: (*flatness.measures(model, rep, s), curvature.measures(model, rep, s))
  both = jax.jit(jax.vmap(one))(jax.tree.map(lambda *v: jnp.stack(v), *reps))
  alone = jax.jit(one)
  for r, rep in enumerate(reps):
    for got, want in zip(both, alone(rep)):
      assert set(got) == set(want)
      for name in want:
        np.testing.assert_allclose(got[name][r], want[name], rtol=1e-5, err_msg=name)


def test_settings_check():
  flatness.Settings().check()
  for bad in (dict(draws=0), dict(search_steps=2.5), dict(sigma_range=(0.0, 2.0)),
              dict(alpha_range=(1.0, 0.5)), dict(accuracy_drop=-0.1), dict(trace_samples=True)):
    with pytest.raises(UsageError):
      flatness.Settings(**bad).check()
