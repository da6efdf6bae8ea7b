"""The PAC-Bayes bounds probe: its arithmetic against brute force, root finding, Monte Carlo and
closed forms; its optimization of one replica's posterior on a tiny separable two-class
problem (a 2-8-2 MLP on 200 points)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize, stats

from zhang.errors import UsageError
from zhang.probes.bounds import kl, posterior
from zhang.probes.measures import context


def _kl_by_hand(q, p):
  """kl(q || p) in float64 with its two limits written out."""
  terms = 0.0 if q == 0 else q * math.log(q / p)
  return terms + (0.0 if q == 1 else (1 - q) * math.log((1 - q) / (1 - p)))


def _inverse_by_root(q, c):
  """kl^{-1}(q, c) by Brent's method on kl(q || p) = c, p in (q, 1)."""
  return optimize.brentq(lambda p: _kl_by_hand(q, p) - c, q, 1 - 1e-15, xtol=1e-15, rtol=1e-15)


def test_binary_kl_matches_the_definition():
  for q, p in [(0.1, 0.3), (0.0, 0.4), (1.0, 0.6), (0.7, 0.2), (0.5, 0.5)]:
    assert float(kl.binary_kl(q, p)) == pytest.approx(_kl_by_hand(q, p), rel=1e-12, abs=1e-15)
  assert kl.binary_kl(0.3, 1.0) == np.inf and kl.binary_kl(0.3, 0.0) == np.inf
  assert float(kl.binary_kl(jnp.float32(0.1), 0.3)) == pytest.approx(_kl_by_hand(0.1, 0.3),
                                                                      rel=1e-5)


@pytest.mark.parametrize("q,c", [(0.0, 0.1), (0.05, 0.01), (0.3, 0.2), (0.9, 0.05), (0.5, 2.0)])
def test_kl_inverse_matches_a_grid_search(q, c):
  grid = q + 1e-6 * np.arange(int(round((1 - q) / 1e-6)) + 1)
  with np.errstate(divide="ignore"):
    inside = grid[kl.binary_kl(q, np.minimum(grid, 1.0)) <= c]
  got = float(kl.kl_inverse(q, c))
  assert inside.max() <= got <= inside.max() + 1e-6 + 1e-12


def test_kl_inverse_known_values_and_traced():
  for c in (1e-4, 0.05, 0.7, 3.0):
    assert float(kl.kl_inverse(0.0, c)) == pytest.approx(1 - math.exp(-c), abs=1e-9)
    assert float(kl.kl_inverse(0.2, c)) == pytest.approx(_inverse_by_root(0.2, c), abs=1e-9)
  assert float(kl.kl_inverse(0.3, 0.0)) == pytest.approx(0.3, abs=1e-9)
  assert float(kl.kl_inverse(0.3, np.inf)) == 1.0 and np.isnan(kl.kl_inverse(np.nan, 0.1))
  q, c = np.array([0.0, 0.02, 0.4], np.float32), np.array([0.3, 0.01, 0.1], np.float32)
  traced = jax.jit(jax.vmap(kl.kl_inverse))(jnp.asarray(q), jnp.asarray(c))
  assert traced.dtype == jnp.float32
  np.testing.assert_allclose(traced, [_inverse_by_root(a, b) for a, b in zip(q, c)], atol=1e-6)


def test_gaussian_kl_matches_closed_form_and_monte_carlo():
  rng = np.random.default_rng(0)
  mu, w0 = rng.normal(size=50), rng.normal(size=50)
  s, lam = rng.uniform(0.01, 2.0, 50), 0.3
  # The textbook form, per element: log(sigma_p / sigma_q) + (sigma_q^2 + dmu^2) / 2 sigma_p^2
  # - 1/2.
  by_element = sum(math.log(math.sqrt(lam) / math.sqrt(v)) + (v + (m - w)**2) / (2 * lam) - 0.5
                   for m, v, w in zip(mu, s, w0))
  assert float(kl.gaussian_kl(mu, s, w0, lam)) == pytest.approx(by_element, rel=1e-12)
  assert float(kl.gaussian_kl(jnp.asarray(mu, jnp.float32), jnp.asarray(s, jnp.float32),
                              jnp.asarray(w0, jnp.float32), lam)) == pytest.approx(by_element,
                                                                                   rel=1e-5)
  # E_Q[log q(w) - log p(w)] over draws from Q, in 3 dimensions.
  mu, s, w0, lam = mu[:3], s[:3], w0[:3], 0.8
  w = mu + np.sqrt(s) * rng.normal(size=(400_000, 3))
  ratio = np.sum(stats.norm.logpdf(w, mu, np.sqrt(s)) - stats.norm.logpdf(w, w0, math.sqrt(lam)),
                 axis=1)
  standard_error = ratio.std() / math.sqrt(len(ratio))
  assert abs(float(kl.gaussian_kl(mu, s, w0, lam)) - ratio.mean()) < 4 * standard_error


def test_certified_bound_by_hand():
  mc_error, draws, divergence, n, count = 0.03, 150_000, 5000.0, 55_000, 3000
  train = _inverse_by_root(mc_error, math.log(2 / 0.01) / draws)
  rhs = (divergence + math.log(count) + math.log(2 * math.sqrt(n) / 0.025)) / n
  expected = _inverse_by_root(train, rhs)
  got_train, got = kl.certified(mc_error, draws, divergence, n, 0.025, 0.01,
                                kl.union_cost(17, count, "uniform"))
  assert float(got_train) == pytest.approx(train, abs=1e-9)
  assert float(got) == pytest.approx(expected, abs=1e-9)
  assert 0.03 < float(got_train) < float(got) < 1
  assert float(kl.union_cost(370, count, "harmonic")) == pytest.approx(
      math.log(math.pi**2 / 6) + 2 * math.log(371), rel=1e-12)
  # The grid: lambda_j = 0.1 exp(-j / 100), rounded in log, clipped to the set.
  lam = kl.prior_variance(np.arange(count))
  assert lam[0] == 0.1 and lam[370] == pytest.approx(0.1 * math.exp(-3.7), rel=1e-12)
  np.testing.assert_array_equal(kl.prior_index(lam * np.exp(0.0049), count), np.arange(count))
  assert kl.prior_index(1.0, count) == 0 and kl.prior_index(1e-30, count) == count - 1


def test_settings_check():
  posterior.Settings().check()
  bad = [dict(delta=0.0), dict(delta=1.0), dict(mc_delta=-0.1), dict(prior_count=0),
         dict(steps=0), dict(draws=0), dict(batch=-1), dict(trace_every=0),
         dict(learning_rate=0.0), dict(variance_learning_rate=-1.0), dict(mc_batch=-1),
         dict(union="other"), dict(delta=0.6, mc_delta=0.5)]
  for kwargs in bad:
    with pytest.raises(UsageError) as error:
      posterior.Settings(**kwargs).check()
    assert "\n" not in str(error.value) and next(iter(kwargs)) in str(error.value)


def test_surrogate_is_the_scaled_logistic_loss_and_bounds_the_error():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(64, 2)).astype(np.float32) * 3
  y = rng.integers(0, 2, 64).astype(np.int32)
  margin = logits[np.arange(64), y] - logits[np.arange(64), 1 - y]
  by_hand = np.mean(np.log1p(np.exp(-margin.astype(np.float64)))) / math.log(2)
  got = float(posterior.surrogate(jnp.asarray(logits), jnp.asarray(y)))
  assert got == pytest.approx(by_hand, rel=1e-5)
  assert got >= np.mean(np.argmax(logits, axis=1) != y)


# The tiny problem: two Gaussian blobs at +-(1.5, 1.5) (separable), 200 real examples, padded
# with 56 rows of garbage to 4 chunks of 64.
N, M, CHUNK = 200, 256, 64


def _mlp(p, x):
  return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


MODEL = context.Model(logits=lambda p, bs, x: _mlp(p, x), module=None, layers=(), chunk=CHUNK)


@jax.jit
def _train(init, x, y):
  """100 Adam steps on the real examples' cross-entropy: zero training error."""
  opt = optax.adam(0.05)

  def step(_, carry):
    p, state = carry
    loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_mlp(p, x), y))
    updates, state = opt.update(jax.grad(loss)(p), state)
    return optax.apply_updates(p, updates), state

  return jax.lax.fori_loop(0, 100, step, (init, opt.init(init)))[0]


@functools.cache
def _replica(seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, M).astype(np.int32)
  x = (rng.normal(size=(M, 2)) * 0.5 + np.where(y[:, None] == 1, 1.5, -1.5)).astype(np.float32)
  x[N:] = rng.normal(size=(M - N, 2)) * 5
  valid = (np.arange(M) < N).astype(np.float32)
  init = dict(w1=rng.normal(size=(2, 8)), b1=np.zeros(8), w2=rng.normal(size=(8, 2)) * 0.5,
              b2=np.zeros(2))
  init = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), init)
  params = _train(init, x[:N], y[:N])
  assert np.all(np.argmax(_mlp(params, x[:N]), axis=1) == y[:N])
  return context.Replica(params, init, {}, jnp.asarray(x), jnp.asarray(y), jnp.asarray(valid),
                         jax.random.key(seed))


# Weights of order 1 that moved a distance 4.5 from their initialization: the grid's top c = 1
# (not 0.1) and prior and posterior scales to match, a constant rate (KL 18 against 61 with
# the drop after 75 steps).
SETTINGS = posterior.Settings(steps=300, batch=50, learning_rate=0.02,
                              variance_learning_rate=0.02, lr_drop=1.0, init_std=0.5,
                              prior_scale=1.0, init_prior_variance=1.0, draws=50,
                              trace_every=50)
_bound = jax.jit(posterior.bound, static_argnums=(0, 2))


def test_mc_error_counts_the_real_examples_of_each_draw():
  rep = _replica(0)
  post = posterior.start(rep, posterior.Settings(init_std=2.0))  # noise 2 |w|: draws err
  key = jax.random.key(5)
  got = jax.jit(lambda post: posterior.mc_error(MODEL, rep, post, key, 6))(post)
  errors = []
  for k in range(6):
    draw_key, _ = jax.random.split(jax.random.fold_in(key, k))
    w = posterior.sample(post, draw_key, rep.params)
    errors.append(np.mean(np.argmax(_mlp(w, rep.x[:N]), axis=1) != rep.y[:N]))
  assert 0 < np.mean(errors) and float(got) == pytest.approx(np.mean(errors), abs=1e-6)


def test_mc_error_on_minibatches_counts_each_draws_own_examples():
  """With ``mc_batch`` each draw's error is on its own examples, drawn with replacement from
  the real ones (never the padding): the brute-force mean over the same draws and indices."""
  rep = _replica(0)
  post = posterior.start(rep, posterior.Settings(init_std=2.0))
  key, size = jax.random.key(7), CHUNK + 37  # a padded last chunk
  got = jax.jit(lambda post: posterior.mc_error(MODEL, rep, post, key, 6, size))(post)
  order = np.argsort(np.asarray(rep.valid) <= 0, kind="stable")
  errors = []
  for k in range(6):
    draw_key, batch_key = jax.random.split(jax.random.fold_in(key, k))
    w = posterior.sample(post, draw_key, rep.params)
    index = order[np.asarray(jax.random.randint(batch_key, (size,), 0, N))]
    assert index.max() < N
    errors.append(np.mean(np.argmax(_mlp(w, rep.x[index]), axis=1) != rep.y[index]))
  assert 0 < np.mean(errors) and float(got) == pytest.approx(np.mean(errors), abs=1e-6)


def test_optimization_lowers_the_objective_and_certifies_a_bound():
  rep = _replica(0)
  got = jax.tree.map(np.asarray, _bound(MODEL, rep, SETTINGS))
  trace = got["trace"]
  assert trace.shape == (6,) and not got["diverged"]
  assert np.mean(trace[-2:]) < 0.9 * trace[0]
  assert 0 <= got["mc_error"] < got["mc_error_bound"] < got["bound"] < 0.5
  j = kl.prior_index(float(got["lambda"]), SETTINGS.prior_count, SETTINGS.prior_scale)
  assert float(got["lambda"]) == pytest.approx(float(kl.prior_variance(j, 1.0)), rel=1e-5)
  train, bound = kl.certified(float(got["mc_error"]), SETTINGS.draws, float(got["kl"]), N,
                              SETTINGS.delta, SETTINGS.mc_delta,
                              kl.union_cost(j, SETTINGS.prior_count, SETTINGS.union))
  assert float(got["mc_error_bound"]) == pytest.approx(train, abs=1e-5)
  assert float(got["bound"]) == pytest.approx(bound, abs=1e-5)


@pytest.mark.slow
def test_vmap_over_replicas_equals_each_alone():
  reps = [_replica(0), _replica(1)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *reps)
  together = jax.jit(jax.vmap(lambda r: posterior.bound(MODEL, r, SETTINGS)))(stacked)
  for r, rep in enumerate(reps):
    alone = _bound(MODEL, rep, SETTINGS)
    for name, value in alone.items():
      np.testing.assert_allclose(together[name][r], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_diverging_learning_rate_is_reported():
  rep = _replica(0)
  s = posterior.Settings(steps=20, batch=50, learning_rate=1e4, variance_learning_rate=1e4,
                         draws=2, trace_every=5)
  got = _bound(MODEL, rep, s)
  assert bool(got["diverged"]) and np.isnan(float(got["bound"]))
  assert not np.all(np.isfinite(np.asarray(got["trace"])))
