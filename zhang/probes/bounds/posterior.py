"""One replica's PAC-Bayes bound, as Dziugaite and Roy (2017) compute theirs: a diagonal
Gaussian posterior Q = N(mu, diag(s)) centred on the trained parameters is optimized against a
prior P = N(w0, lambda I) centred on the replica's initialization, then certified.

The objective (Dziugaite and Roy's, but for its complexity term) is, for a network w ~ Q
drawn with the reparameterization trick (w = mu + sqrt(s) z, z ~ N(0, I)) on a minibatch of
training examples,

  surrogate(w) + sqrt(B / 2),

the surrogate the logistic loss of the two-class margin logit[y] - logit[other] divided by
log 2 (at least 1 where argmax(logits) != y, so an upper bound of the 0-1 error), and B the
complexity term of the bound this module certifies (``kl.complexity``: (KL(Q || P) + union +
log(2 sqrt(n) / delta)) / n, the union bound's cost from lambda as a real number). By
Pinsker's inequality kl^{-1}(q, B) <= q + sqrt(B / 2): the objective is an upper estimate of
the certified bound, differentiable in (mu, log s, log lambda). Dziugaite and Roy's B_RE is
(KL + 2 log(b log(c / lambda)) + log(pi^2 n / (6 delta))) / (n - 1) (so in their code, which
floors log(c / lambda) at 0.01 and trains with delta = 0.05 though it certifies with 0.025):
the Langford-Seeger form log(n / delta) / (n - 1) where this module uses Maurer's
log(2 sqrt(n) / delta) / n (log(sqrt(n) / 2) = 4.7 nats less at n = 50 000), and their union
cost where ``Settings.union`` picks.

After the optimization lambda is rounded to the grid lambda_j = c exp(-j / b) (nearest in log),
the posterior's training error is estimated from ``Settings.draws`` networks sampled from it,
each on ``Settings.mc_batch`` of the replica's training examples drawn with replacement (or on
all of them), and ``kl.certified`` gives the bound: with probability at least
1 - delta - mc_delta the error of the stochastic network Q is below ``bound``.

Everything is a pure function of one replica (``zhang.probes.measures.context``): lax loops,
the same work for every replica, draws from the replica's key alone; a driver vmaps ``bound``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from zhang.errors import UsageError
from zhang.probes.bounds import kl
from zhang.probes.measures import curvature, flatness


@dataclasses.dataclass(frozen=True)
class Settings:
  """The optimization's and the certificate's settings.

  From Dziugaite and Roy's code (github.com/gkdziugaite/pacbayes-opt) and paper: RMSProp
  (TensorFlow 1's: decay 0.9, eps 1e-10 inside the square root, mean squares starting at 1,
  no momentum), the rate multiplied by ``lr_factor`` 0.1 after part of the steps;
  minibatches of 100; the prior's variance starting at exp(-6) (their log prior standard
  deviation -3); the grid c = 0.1, b = 100; delta = 0.025 and mc_delta = 0.01 (0.965 in all).

  Where this differs, and why:
  - The budget: ``steps`` 5000 (they ran 1000 epochs of 550 steps, 550 000, at a rate of
    0.001 for every variable, dropped after 250 epochs), so the log variances and log lambda
    get their own ``variance_learning_rate`` 0.03, 30 times the mean's ``learning_rate``
    0.001 (theirs), and both drop after half of the steps (``lr_drop``). At their one rate
    for 2000 steps the variances barely move from their start and every bound on binary
    digits is 1.000 (a KL of 200 000 nats at n = 1 438); at these, the true-label bounds are
    0.47 there and 0.27 on 10 000 binary Fashion-MNIST images (docs/results/bounds.md).
  - The posterior's standard deviation starts at ``init_std`` 0.25 |w| (theirs at 2 |w|:
    on this codebase's LeCun-normal weights that is far wider than the prior, and the first
    thousand steps go to shrinking it). A zero weight's is ``std_floor`` 1e-4, not log(0).
  - The optimized variables are mu, log s (s the variance) and log lambda; their code steps
    log standard deviations, half of these, so a rate here moves variances half as far.
  - Minibatches are drawn with replacement from the replica's real examples (theirs: epochs of
    a shuffled training set).
  - ``draws`` 1000 networks, each measured on ``mc_batch`` 1000 training examples drawn with
    replacement (they drew 150 000 networks): each draw's error is still a number in [0, 1]
    whose mean is Q's training error, which is what the Monte Carlo bound needs
    (``mc_error``), and it costs a tenth of every example at n = 10 000. The
    bound adds about sqrt(2 e log(200) / draws) to an error e (0.03 at e = 0.1).
  - ``union`` "uniform" (log ``prior_count`` nats for any j) rather than their "harmonic"
    2 log(j + 1) + log(pi^2 / 6) (``kl.union_cost``): the grid is finite here, the uniform
    cost is no larger wherever j + 1 >= 0.78 sqrt(prior_count) (j >= 42 of 3000, lambda <=
    0.066; at their start exp(-6), j = 370, 8.0 nats against 12.3), and it does not depend on
    lambda, so the objective's pull on lambda is the KL's alone. ``prior_count`` 3000 reaches
    lambda = 9e-15.
  - lambda is rounded to the nearest grid value in log (their code evaluates both neighbours
    and keeps the smaller bound).
  - The certificate is the PAC-Bayes-kl bound in Maurer's form (``kl``) and the objective its
    Pinsker relaxation (the module docstring).
  """
  steps: int = 5000
  batch: int = 100
  learning_rate: float = 1e-3  # the rate of mu
  variance_learning_rate: float = 0.03  # the rate of log s and log lambda
  lr_drop: float = 0.5  # the fraction of ``steps`` after which the rates drop
  lr_factor: float = 0.1
  init_std: float = 0.25  # the posterior's standard deviation starts at init_std |w|
  std_floor: float = 1e-4
  init_prior_variance: float = math.exp(-6.0)
  prior_scale: float = kl.PRIOR_SCALE  # c
  prior_precision: float = kl.PRIOR_PRECISION  # b
  prior_count: int = 3000  # J: lambda_j for j in {0, ..., J - 1}
  union: str = "uniform"
  delta: float = kl.DELTA
  mc_delta: float = kl.MC_DELTA
  draws: int = 1000
  mc_batch: int = 1000  # the examples each drawn network's error is measured on (0: all)
  trace_every: int = 100  # the objective's trace: its mean over every block of this many steps

  def check(self) -> None:
    """Raises UsageError for settings no bound can be computed with."""
    for name in ("steps", "batch", "prior_count", "draws", "trace_every"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        empty = " (the prior variance grid is empty)" if name == "prior_count" else ""
        raise UsageError(f"`{name}` must be an integer >= 1{empty}; got {value!r}")
    if not isinstance(self.mc_batch, int) or isinstance(self.mc_batch, bool) or self.mc_batch < 0:
      raise UsageError(f"`mc_batch` must be an integer >= 0 (0: every training example); got "
                       f"{self.mc_batch!r}")
    for name in ("learning_rate", "variance_learning_rate", "lr_factor", "init_std",
                 "std_floor", "init_prior_variance", "prior_scale", "prior_precision"):
      value = getattr(self, name)
      if not (_number(value) and value > 0):
        raise UsageError(f"`{name}` must be a positive number; got {value!r}")
    for name in ("delta", "mc_delta"):
      value = getattr(self, name)
      if not (_number(value) and 0 < value < 1):
        raise UsageError(f"`{name}` must be a number in (0, 1); got {value!r}")
    if self.delta + self.mc_delta >= 1:
      raise UsageError(f"`delta` + `mc_delta` must be below 1; got {self.delta + self.mc_delta}")
    if not (_number(self.lr_drop) and 0 <= self.lr_drop <= 1):
      raise UsageError(f"`lr_drop` must be a number in [0, 1]; got {self.lr_drop!r}")
    if self.union not in kl.UNION_RULES:
      raise UsageError(f"`union` must be one of {', '.join(kl.UNION_RULES)}; got {self.union!r}")


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def start(rep, s: Settings) -> dict:
  """The posterior's variables at the start (float32): mu the trained parameters, log s from
  the standard deviation init_std |w| (at least std_floor), log lambda."""
  mu = jax.tree.map(lambda p: p.astype(jnp.float32), rep.params)
  log_s = jax.tree.map(lambda w: 2 * jnp.log(jnp.maximum(s.init_std * jnp.abs(w), s.std_floor)),
                       mu)
  return dict(mu=mu, log_s=log_s, log_lam=jnp.float32(math.log(s.init_prior_variance)))


def posterior_kl(post, w0, log_lam):
  """KL(N(mu, diag(s)) || N(w0, lambda I)) summed over the parameters' leaves."""
  leaves = zip(jax.tree.leaves(post["mu"]), jax.tree.leaves(post["log_s"]), jax.tree.leaves(w0))
  return sum(kl.gaussian_kl_log(mu, log_s, w.astype(jnp.float32), log_lam)
             for mu, log_s, w in leaves)


def sample(post, key, like):
  """A network drawn from the posterior, mu + sqrt(s) z, in ``like``'s dtypes."""
  z = curvature.normal_like(key, post["mu"])
  return jax.tree.map(lambda mu, log_s, z, p: (mu + jnp.exp(log_s / 2) * z).astype(p.dtype),
                      post["mu"], post["log_s"], z, like)


def surrogate(logits, y):
  """The mean over a batch of log(1 + exp(-margin)) / log 2, margin = logit[y] - logit[1 - y]
  of two-class logits (B, 2): 1 at margin 0, so an upper bound of the 0-1 error."""
  logits = logits.astype(jnp.float32)
  mine = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  other = jnp.take_along_axis(logits, 1 - y[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.softplus(other - mine)) / math.log(2)


def real_first(rep):
  """The indices of the replica's examples, its real ones first (a stable sort: in order)."""
  return jnp.argsort(rep.valid <= 0)


def minibatch(rep, order, key, size: int):
  """``size`` of the replica's real examples, uniformly with replacement: (x, y); ``order``
  is ``real_first(rep)``, sorted once outside the optimization's loop."""
  count = jnp.maximum(jnp.sum(rep.valid > 0), 1)
  index = order[jax.random.randint(key, (size,), 0, count)]
  return rep.x[index], rep.y[index]


def _union(log_lam, s: Settings):
  """The union bound's cost at lambda as a real number (j = b log(c / lambda))."""
  j = s.prior_precision * (math.log(s.prior_scale) - log_lam)
  return kl.union_cost(j, s.prior_count, s.union)


def objective(model, rep, order, post, key, s: Settings):
  """surrogate(w) on a minibatch + sqrt(B / 2), w ~ Q (the module docstring); ``order`` is
  ``real_first(rep)``."""
  batch_key, noise_key = jax.random.split(key)
  x, y = minibatch(rep, order, batch_key, s.batch)
  w = sample(post, noise_key, rep.params)
  risk = surrogate(model.logits(w, rep.batch_stats, x), y)
  divergence = posterior_kl(post, rep.init_params, post["log_lam"])
  b = kl.complexity(divergence, curvature.num_valid(rep), s.delta, _union(post["log_lam"], s))
  return risk + jnp.sqrt(b / 2)


def schedule(s: Settings):
  """The learning rate: ``learning_rate``, times ``lr_factor`` after ``lr_drop`` of the steps."""
  return optax.piecewise_constant_schedule(
      s.learning_rate, {int(round(s.lr_drop * s.steps)): s.lr_factor})


def optimizer(s: Settings):
  """TensorFlow 1's RMSProp, as Dziugaite and Roy ran it (``Settings``), at
  ``learning_rate`` for mu and ``variance_learning_rate`` for log s and log lambda."""
  def rmsprop(rate):
    sched = schedule(dataclasses.replace(s, learning_rate=rate))
    return optax.rmsprop(sched, decay=0.9, eps=1e-10, initial_scale=1.0, eps_in_sqrt=True)

  def labels(post):
    return dict(mu=jax.tree.map(lambda _: "mu", post["mu"]),
                log_s=jax.tree.map(lambda _: "var", post["log_s"]), log_lam="var")
  return optax.multi_transform(
      {"mu": rmsprop(s.learning_rate), "var": rmsprop(s.variance_learning_rate)}, labels)


def optimize(model, rep, s: Settings):
  """(the posterior after ``s.steps`` steps, the objective's trace): trace[t] is the mean
  objective over steps t k .. (t + 1) k - 1, k = ``s.trace_every``."""
  opt = optimizer(s)
  key = curvature.stream(rep.key, "pacbayes_bound")
  k = s.trace_every
  order = real_first(rep)
  grad = jax.value_and_grad(lambda post, key: objective(model, rep, order, post, key, s))

  def body(i, carry):
    post, state, trace = carry
    value, g = grad(post, jax.random.fold_in(key, i))
    updates, state = opt.update(g, state, post)
    block = i // k
    size = jnp.minimum(k, s.steps - block * k).astype(jnp.float32)
    return optax.apply_updates(post, updates), state, trace.at[block].add(value / size)

  post = start(rep, s)
  trace = jnp.zeros((-(-s.steps // k),), jnp.float32)
  post, _, trace = jax.lax.fori_loop(0, s.steps, body, (post, opt.init(post), trace))
  return post, trace


def batch_error(model, rep, order, w, key, size: int):
  """The 0-1 error of ``w`` on ``size`` of the replica's real examples drawn uniformly with
  replacement (``minibatch``): ``flatness.accuracy`` on them, padded to chunks of at most the
  model's chunk."""
  x, y = minibatch(rep, order, key, size)
  c = min(model.chunk, size)
  pad = -size % c
  batch = rep._replace(x=jnp.concatenate([x, x[:pad]]), y=jnp.concatenate([y, y[:pad]]),
                       valid=(jnp.arange(size + pad) < size).astype(jnp.float32))
  return 1.0 - flatness.accuracy(model._replace(chunk=c), batch, w)


def mc_error(model, rep, post, key, draws: int, size: int = 0):
  """The mean training 0-1 error (argmax(logits) != y) of ``draws`` networks sampled from the
  posterior (keys ``fold_in(key, k)``), each on every real example (``size`` 0) or on
  ``size`` of them drawn uniformly with replacement: either way each draw's error is a number
  in [0, 1] whose mean is the posterior's training error, which is all the Monte Carlo bound
  asks of it (``kl.sample_convergence_bound``)."""
  order = real_first(rep)

  def body(k, total):
    draw_key, batch_key = jax.random.split(jax.random.fold_in(key, k))
    w = sample(post, draw_key, rep.params)
    if size:
      return total + batch_error(model, rep, order, w, batch_key, size)
    return total + (1.0 - flatness.accuracy(model, rep, w))

  total = jax.lax.fori_loop(0, draws, body, jnp.float32(0.0))
  return jnp.clip(total / draws, 0.0, 1.0)


def bound(model, rep, s: Settings) -> dict:
  """One replica's certified bound and its pieces (float32 scalars, ``trace`` a vector):
  bound, mc_error, mc_error_bound, kl, lambda (on the grid), trace and diverged (a
  non-finite objective at some step, or a non-finite KL after the last; the bound is then
  NaN)."""
  post, trace = optimize(model, rep, s)
  j = kl.prior_index(jnp.exp(post["log_lam"]), s.prior_count, s.prior_scale, s.prior_precision)
  log_lam = math.log(s.prior_scale) - j / s.prior_precision
  divergence = posterior_kl(post, rep.init_params, log_lam)
  error = mc_error(model, rep, post, curvature.stream(rep.key, "pacbayes_bound/mc"), s.draws,
                   s.mc_batch)
  train, certified = kl.certified(error, s.draws, divergence, curvature.num_valid(rep),
                                  s.delta, s.mc_delta, kl.union_cost(j, s.prior_count, s.union))
  diverged = ~(jnp.all(jnp.isfinite(trace)) & jnp.isfinite(divergence))
  return dict(bound=jnp.where(diverged, jnp.nan, certified), mc_error=error,
              mc_error_bound=train, kl=divergence, **{"lambda": jnp.exp(log_lam)}, trace=trace,
              diverged=diverged)
