"""The local learning coefficient (LLC) of every replica of a run: ``zhang llc``.

Singular learning theory measures a trained model's effective dimension by its learning
coefficient lambda: d/2 for a regular model of d parameters, less where the loss landscape
is degenerate. Lau et al. (2023), "Quantifying degeneracy in singular models via the learning
coefficient", estimate it at a trained point w* as lambda-hat = n beta (E_w[L_n(w)] -
L_n(w*)) over the localized tempered posterior exp(-n beta L_n(w) - gamma/2 |w - w*|^2), by
SGLD; ``zhang/probes/llc/sgld.py`` is that estimator (devinterp's, so numbers compare with
it), its defaults and their calibration. Here it runs on a run's checkpoints, rebuilt by
``zhang.probes.run``:

- Every chain of every replica in one jit-compiled program: chains vmapped (or looped, as
  the execution plan runs replicas) inside each replica, replicas on the run's mesh's
  ``replica`` axis, the training set on the device once. Reproducible from ``seed``: replica
  r's chain c draws from (seed, r, c) alone.
- L_n is the mean training cross-entropy on each replica's own training set exactly as the
  run trained on it (its corrupted labels, its shuffled or random pixels or gaussian
  inputs: ``step.grid_inputs`` with ``ReplicaConstants.labels``), without augmentation (the
  evaluation's view). L_n(w*) is taken on the whole training set (devinterp averages a few
  minibatches: the same expectation without their noise), so it equals the run's own
  ``train_loss`` at that step in metrics.jsonl; E_w[L_n(w)] is the mean of the chains'
  minibatch losses after burn-in, as in devinterp.
- Batch norm (inception_small): only ``params`` are sampled; the batch statistics stay at
  w*'s and the model runs in eval mode, so the posterior is over the function the run
  evaluates.
- n beta: ``"n"`` (the default, recommended) is n / log n with n the training-set size, the
  paper's beta = 1 / log n, the temperature at which the theory ties the tempered posterior
  to lambda (as in WBIC); every replica of a run shares n and so one temperature.
  ``"batch"`` is m / log m with m the batch size, devinterp's default: 7.5x smaller on the
  digits run (26 against 198), a hotter and broader posterior with less minibatch-gradient
  noise (which grows as (n beta)^2 against the injected noise) and smaller numbers (the
  random-label replicas' 64 against 261). A number sets n beta itself.

Per replica and checkpoint: lambda-hat (the mean of the chains' estimates), ``llc_std``
(their standard deviation, devinterp's ``llc/std``), ``llc_se`` (= llc_std / sqrt(chains)),
each chain's estimate, L_n(w*) and the draws' mean loss, and the diagnostics: a chain whose
loss is not finite, or whose estimate exceeds the number of parameters (twice the largest
learning coefficient a model can have), has diverged (lower ``step_size``, or raise
``gamma``); a replica whose chains' mean loss in the last quarter of the draws differs from
the quarter before by more than ``sgld.SETTLE_TOL`` of lambda-hat (and more than the
chains' noise) has not settled (more ``burnin``); a negative lambda-hat means the chains
found lower loss than w* (w* is no minimum at the scale gamma allows: raise ``gamma``). Each
is a warning line on stderr; if every chain of every replica diverges, ``UsageError``.

Outputs (only under OUT, never in the run's directory): llc.json (``{"settings",
"replicas"}``), llc_traces.npz (every chain's minibatch losses, burn-in included),
llc_traces.png; ``zhang.analysis.llc`` (re-exported here: ``load``, ``plot``,
``report_lines``) reads, plots and describes llc.json.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import math
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zhang.errors import UsageError
from zhang.experiment import models, randomize
from zhang.experiment import step as step_lib
from zhang.probes import run as run_lib
from zhang.probes.llc.sgld import (  # noqa: F401
  SETTLE_TOL,
  Settings,
  check_settings,
  estimate,
  pair_leaves,
  parse_nbeta,
  resolve_nbeta,
  run_chains,
  sample,
  sgld_step,
)
from zhang.rundir import metrics as metrics_lib
from zhang.runtime import memory as memory_lib
from zhang.runtime import mesh as mesh_lib

JSON, TRACES, TRACE_PLOT = "llc.json", "llc_traces.npz", "llc_traces.png"
SWEEPABLE = ("step_size", "gamma", "nbeta", "chains", "draws", "burnin", "batch_size")


def parse_steps(spec: str, saved: list[int]) -> list[int]:
  """``last``, ``all`` or ``1000,2000`` against the saved steps."""
  spec = (spec or "last").strip()
  if spec == "last":
    return saved[-1:]
  if spec == "all":
    return list(saved)
  try:
    wanted = [int(s) for s in spec.split(",") if s.strip()]
  except ValueError:
    raise UsageError(f"`steps` {spec!r} must be last, all, or a list of saved steps such as "
                     f"1000,2000") from None
  missing = [s for s in wanted if s not in saved]
  if not wanted or missing:
    raise UsageError(f"no checkpoint of step {', '.join(map(str, missing)) or spec} in this "
                     f"run: saved steps are {', '.join(map(str, saved))}")
  return sorted(set(wanted))


class Sampler:
  """A run's compiled SGLD sampler (``program``, one per chain count, length and batch
  size), built once for every checkpoint and setting (``estimate_run``, ``sweep``)."""

  def __init__(self, run: run_lib.Run):
    self.run = run
    self._programs = {}
    self._compiled = {}
    self.compile_seconds = 0.0

  def chain_keys(self, seed: int, chains: int):
    """(padded replicas, chains) keys: replica r's chain c from (seed, r, c), so a replica's
    chains do not depend on the grid's padding or the other replicas."""
    base = jax.random.key(seed)
    rows = np.minimum(np.arange(self.run.padded), len(self.run.replicas) - 1)
    keys = jax.vmap(lambda r: jax.random.split(jax.random.fold_in(base, r), chains))(
        jnp.asarray(rows))
    return jax.random.key_data(keys)

  def program(self, chains: int, num_steps: int, batch_size: int):
    """The jit-compiled sampler: (params, batch_stats, chain keys, eps, gamma, n beta) ->
    (L_n(w*) (R,), loss traces (R, chains, num_steps)). Every chain of every replica in one
    program: chains vmapped (or looped, as the plan runs replicas) inside each replica,
    replicas on the mesh's ``replica`` axis. Compiled on its first call, kept for the
    sampler's life."""
    key = (chains, num_steps, batch_size)
    if key not in self._programs:
      self._programs[key] = _program(self.run, chains, num_steps, batch_size)
    return self._programs[key]

  def sample(self, params, batch_stats, s: Settings):
    """L_n(w*) (R,) and the traces (R, chains, steps) of the real replicas, n beta, and the
    seconds the sampling took. A first call of a (chains, steps, batch) compiles the program
    ahead of it; ``compile_seconds`` adds up the compilations' seconds."""
    run = self.run
    m = s.batch_size or run.config.batch_size
    nbeta = resolve_nbeta(s.nbeta, run.n, m)
    args = (params, batch_stats, self.chain_keys(s.seed, s.chains), np.float32(s.step_size),
            np.float32(s.gamma), np.float32(nbeta))
    key = (s.chains, s.num_steps, m)
    if key not in self._compiled:
      t0 = time.perf_counter()
      self._compiled[key] = self.program(*key).lower(*args).compile()
      self.compile_seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    init_loss, trace = jax.device_get(self._compiled[key](*args))
    seconds = time.perf_counter() - t0
    r = len(run.replicas)
    return np.asarray(init_loss)[:r], np.asarray(trace)[:r], nbeta, seconds


def _logits(run: run_lib.Run):
  """One replica's eval-mode logits of (params, batch statistics, inputs)."""
  return lambda w, batch_stats, x: run.apply(step_lib.TrainState(w, batch_stats, ()), x,
                                             train=False)[0]


# Every replica's training inputs are made once when they take at most this (``_table``).
TABLE_BYTES = 256 * 2 ** 20


def _table_fits(run: run_lib.Run) -> bool:
  """Whether ``_table`` is made: the run's inputs are images (not token ids) and every
  replica's training set of them takes at most TABLE_BYTES."""
  size = run.padded * run.n * math.prod(run.input_shape) * 4
  return not run.settings.tokens and size <= TABLE_BYTES


def _table(run: run_lib.Run):
  """Every replica's whole training set as its steps see it (R, n, *input): scaled,
  randomized and whitened (``step.grid_inputs``), in eval batches, traced into the sampler.
  A chain's input is a pure function of (replica, example), and 1,300 steps of 4 chains make
  each digits example's about 470 times over: made once, a step gathers its rows (the digits
  sampler's step 1.1-1.2x faster)."""
  s, reps, d, n = run.settings, run.reps, run.data, run.n
  eb = min(run.config.eval_batch_size, n)

  def batch(b):
    idx = jnp.minimum(b * eb + jnp.arange(eb), n - 1)
    return step_lib.grid_inputs(s, reps, d, d.train_images[idx], idx, randomize.TRAIN)

  x = jnp.moveaxis(jax.lax.map(batch, jnp.arange(-(-n // eb))), 0, 1)  # (R, batches, eb, ...)
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :n]


def _inputs(run: run_lib.Run, table, idx):
  """Every replica's inputs of its examples ``idx`` (R, k): rows of ``table`` (``_table``),
  or made from the images when there is none."""
  if table is not None:
    return jax.vmap(lambda t, i: jnp.take(t, i, axis=0))(table, idx)
  return step_lib.grid_inputs(run.settings, run.reps, run.data,
                              jnp.take(run.data.train_images, idx, axis=0), idx,
                              randomize.TRAIN)


def _full_loss(run: run_lib.Run):
  """(params, batch_stats, table or None) -> every replica's mean training cross-entropy on
  its whole training set (its labels, its randomized inputs), in eval batches: L_n(w*)."""
  s, reps, d, n = run.settings, run.reps, run.data, run.n
  eb = min(run.config.eval_batch_size, n)
  grid_logits = step_lib.over_grid(run.plan, run.mesh, _logits(run))

  def full_loss(params, batch_stats, table):
    def batch(b):
      pos = b * eb + jnp.arange(eb)
      idx = jnp.minimum(pos, n - 1)
      if table is None:
        x = step_lib.grid_inputs(s, reps, d, d.train_images[idx], idx, randomize.TRAIN)
      else:
        x = table[:, idx]
      out = grid_logits(params, batch_stats, x)
      ce = optax.softmax_cross_entropy_with_integer_labels(out, reps.labels[:, idx])
      return jnp.sum(ce * (pos < n), axis=-1)
    return jnp.sum(jax.lax.map(batch, jnp.arange(-(-n // eb))), axis=0) / n

  return full_loss


def _program(run: run_lib.Run, chains: int, num_steps: int, batch_size: int):
  """``Sampler.program``'s jit-compiled function. Each chain's position is its parameters
  held in pairs (``sgld.pair_leaves``): the update of each is then one pass with the noise
  made in it, a hash for every two parameters (``sgld.sgld_step``)."""
  plan, reps, logits = run.plan, run.reps, _logits(run)

  def replica_step(w, w_star, batch_stats, x, y, key_data, step_size, gamma, nbeta, like):
    def loss_fn(params, batch):
      return optax.softmax_cross_entropy_with_integer_labels(
          logits(params, batch_stats, batch[0]), batch[1]).mean()
    one = lambda w, x, y, k: sgld_step(loss_fn, w, w_star, jax.random.wrap_key_data(k),
                                       (x, y), step_size, gamma, nbeta, like)
    return plan.over_replicas(one, w, x, y, key_data)

  full_loss = _full_loss(run)
  replicated = mesh_lib.replicated(run.mesh)

  @functools.partial(jax.jit, out_shardings=(replicated, replicated),
                     compiler_options=plan.compiler_options() or None)
  def chains_of_grid(params, batch_stats, key_data, step_size, gamma, nbeta):
    like = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape[1:], p.dtype), params)
    grid_step = step_lib.over_grid(plan, run.mesh, functools.partial(replica_step, like=like),
                                   replicated=(1, 2, 3))

    table = _table(run) if _table_fits(run) else None

    def step_fn(w, indices, step_keys):
      r = indices.shape[0]
      flat = indices.reshape(r, -1)  # each replica's chains' examples, one batch
      x = _inputs(run, table, flat)
      x = x.reshape(r, chains, batch_size, *x.shape[2:])
      y = jnp.take_along_axis(reps.labels, flat, axis=1).reshape(r, chains, batch_size)
      return grid_step(w, w_star, batch_stats, x, y, jax.random.key_data(step_keys),
                       step_size, gamma, nbeta)

    w_star = jax.vmap(pair_leaves)(params)  # leaves (R, leaf size / 2)
    w0 = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], chains,
                                                              *x.shape[1:])), w_star)
    keys = jax.random.wrap_key_data(key_data)
    init_loss = full_loss(params, batch_stats, table)
    _, trace = run_chains(step_fn, w0, keys, run.n, batch_size, num_steps)
    return init_loss, trace

  return chains_of_grid


def _warn(message: str) -> None:
  print(f"zhang llc: warning: {message}", file=sys.stderr, flush=True)


def _entries(run: run_lib.Run, step: int, init_loss, trace, nbeta, s: Settings,
             num_params: int) -> list[dict]:
  out = []
  for r, rep in enumerate(run.replicas):
    est = estimate(trace[r], init_loss[r], nbeta, s.burnin, num_params)
    out.append(dict(replica=rep.index, kind=rep.kind, corruption=rep.corruption, seed=rep.seed,
                    step=step, **{k: est.pop(k) for k in ("llc", "llc_std", "llc_se")},
                    num_params=num_params, learning_rate=rep.learning_rate,
                    weight_decay=rep.weight_decay, augmentation=rep.augmentation,
                    label_noise=float(run.label_noise[r]), **est))
  return out


def diagnose(entries: list[dict], s: Settings, warn: Callable[[str], None] = _warn) -> None:
  """Warning lines for diverged, unsettled or negative estimates, naming the setting to
  change (in backticks); UsageError when every chain of every entry diverged."""
  if entries and all(e["diverged_chains"] == s.chains for e in entries):
    raise UsageError(f"every chain diverged (loss not finite or exploding) at `step_size` "
                     f"{s.step_size:g}, `gamma` {s.gamma:g}: lower `step_size` (e.g. "
                     f"{s.step_size / 10:g})")
  for e in entries:
    name = (f"replica {e['replica']} ({e['kind']}, corruption {e['corruption']:g}, seed "
            f"{e['seed']}) at step {e['step']}")
    if e["diverged_chains"]:
      warn(f"{name}: {e['diverged_chains']} of {s.chains} chains diverged (loss not finite "
           f"or exploding): lower `step_size` (now {s.step_size:g}) or raise `gamma` (now "
           f"{s.gamma:g})")
    if e["settled"] is False:
      warn(f"{name}: the chains have not settled (lambda-hat moved by {e['drift']:+.3g} "
           f"between the last two quarters of the draws, of {e['llc']:.3g}): raise `burnin` "
           f"(now {s.burnin})")
    if e["llc"] is not None and e["llc"] < 0:
      warn(f"{name}: lambda-hat {e['llc']:.3g} < 0, the chains found lower loss than w*: "
           f"raise `gamma` (now {s.gamma:g}), or estimate a later checkpoint")


def settings_dict(run: run_lib.Run, s: Settings, steps: list[int], nbeta: float) -> dict:
  """llc.json's ``settings``: the sampler's settings and the run's provenance (``run``, its
  path; ``config_hash``, as its checkpoints record it)."""
  m = s.batch_size or run.config.batch_size
  return dict(run=run.path, model=run.config.model,
              dataset=run.config.dataset, n=run.n, steps=list(steps),
              step_size=s.step_size, gamma=s.gamma,
              nbeta_rule=s.nbeta if isinstance(s.nbeta, str) else "number", nbeta=nbeta,
              chains=s.chains, draws=s.draws, burnin=s.burnin, batch_size=m, seed=s.seed,
              sampler="sgld", loss="mean training cross-entropy",
              init_loss="L_n(w*) on the whole training set, eval mode",
              expectation="minibatch losses along each chain after burn-in",
              batch_norm="batch statistics fixed at w*, eval mode"
              if run.has_batch_norm else None,
              compute_dtype=run.config.compute_dtype, plan=str(run.plan),
              mesh=[run.mesh.shape["replica"], run.mesh.shape["data"]],
              config_hash=run.config_hash)


def _check_out(run: run_lib.Run, out) -> None:
  path = metrics_lib.workdir_path(run.path)
  out = metrics_lib.workdir_path(out)
  if out == path or path in out.parents:
    raise UsageError(f"`out` {out} is inside the run's directory {path}: choose a folder "
                     f"outside it (the run's files are never written)")


def _open(workdir, settings: list[Settings], steps: str, data_dir, out):
  """The run and the checkpoints of ``steps``, every setting checked against it; UsageError
  before anything is compiled or written."""
  for s in settings:
    s.check()
  run = run_lib.open(workdir, data_dir)
  run.check_plain_outputs("`zhang llc`")
  chosen = parse_steps(steps, run.steps)
  if out is not None:
    _check_out(run, out)
  for s in settings:
    check_settings(s, run.n)
    check_memory(run, s)
  return run, chosen


def check_memory(run: run_lib.Run, s: Settings) -> None:
  """Refuses, in one line, chains that cannot fit on a device (``zhang.runtime.memory``):
  each chain holds a position, its gradient and its noise, and its share of its replica's
  inputs (``_table``) where they are made once."""
  copies = run.padded // run.mesh.shape["replica"] * s.chains
  params = models.param_count(run.config.model, run.input_shape, run.dataset.num_classes)
  table = run.n * math.prod(run.input_shape) * 4 // s.chains if _table_fits(run) else 0
  estimate = memory_lib.need(run.module, run.input_shape, params, copies=copies,
                             live=copies if run.plan.replicas == "vmap" else s.chains,
                             batch=s.batch_size or run.config.batch_size, slots=1,
                             per_example=table)
  memory_lib.check(estimate, f"{len(run.replicas):,} replicas x {s.chains:,} chains of "
                   f"{run.config.model}", "lower `chains` or `batch_size`, or use more devices")


def _num_params(params) -> int:
  return sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(params))


def estimate_run(workdir, out, settings: Settings | None = None, steps: str = "last",
                 data_dir: str | None = None, plots: bool = True,
                 log: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] = _warn) -> dict:
  """lambda-hat of every replica of a run at each checkpoint of ``steps``; writes
  OUT/llc.json (``{"settings", "replicas"}``), OUT/llc_traces.npz and the trace plot, and
  returns llc.json's dict. Only OUT is written. Bad input raises UsageError before
  anything is compiled. ``log`` (default stderr) gets progress, ``warn`` the diagnosis."""
  log = log or (lambda msg: print(f"zhang llc: {msg}", file=sys.stderr, flush=True))
  start = time.perf_counter()
  settings = settings or Settings()
  run, chosen = _open(workdir, [settings], steps, data_dir, out)
  if out is not None:  # the traces (float32), before the sampling, not after it
    metrics_lib.check_free_space(metrics_lib.workdir_path(out), 4 * len(chosen) * len(
        run.replicas) * settings.chains * settings.num_steps, "writing llc_traces.npz")
  sampler = Sampler(run)
  entries, traces, nbeta, timings, sampling = [], [], None, [], 0.0
  for i, step in enumerate(chosen):
    state = run.state(step)
    num_params = _num_params(state.params)
    init_loss, trace, nbeta, seconds = sampler.sample(state.params, state.batch_stats,
                                                      settings)
    rate = len(run.replicas) * settings.chains * settings.num_steps / seconds
    sampling += seconds
    timings.append(f"step {step}: {len(run.replicas)} replicas x {settings.chains} chains "
                   f"x {settings.num_steps} SGLD steps in {seconds:.1f} s ({rate:,.0f} "
                   f"replica-chain-steps/s)")
    if len(chosen) > 1:  # progress through the checkpoints, as they finish
      elapsed = time.perf_counter() - start
      left = elapsed / (i + 1) * (len(chosen) - i - 1)
      log(f"checkpoint {i + 1}/{len(chosen)}, " + timings[-1]
          + (f"; about {_minutes(left)} left" if left else ""))
    entries += _entries(run, step, init_loss, trace, nbeta, settings, num_params)
    traces.append(trace)
  diagnose(entries, settings, warn)
  if len(chosen) == 1:  # after the diagnosis: an error stays the only line
    log(timings[0])
  other = time.perf_counter() - start - sampling - sampler.compile_seconds
  log(f"sampling {sampling:.1f} s; start-up {sampler.compile_seconds + other:.1f} s "
      f"(compilation {sampler.compile_seconds:.1f} s, opening the run, its data and "
      f"checkpoints {other:.1f} s)")
  result = dict(settings=settings_dict(run, settings, chosen, nbeta), replicas=entries)
  if out is not None:
    write(result, np.concatenate(traces), out, plots=plots)
  return result


def _minutes(seconds: float) -> str:
  return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def write(result: dict, traces: np.ndarray, out, plots: bool = True) -> list:
  """OUT/llc.json, OUT/llc_traces.npz (``traces`` (entries, chains, steps), burn-in
  included, in llc.json's order) and, with ``plots``, the trace plot."""
  out = metrics_lib.workdir_path(out)
  out.mkdir(parents=True, exist_ok=True)
  entries = result["replicas"]
  buf = io.BytesIO()
  np.savez_compressed(buf, traces=traces.astype(np.float32),
                      init_loss=np.asarray([e["init_loss"] for e in entries], np.float32),
                      replica=np.asarray([e["replica"] for e in entries], np.int32),
                      step=np.asarray([e["step"] for e in entries], np.int64),
                      burnin=np.asarray(result["settings"]["burnin"]))
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise metrics_lib.disk_error(out, e) from None
  metrics_lib.write_json(out / JSON, result)
  metrics_lib.write_bytes(out / TRACES, buf.getvalue())
  written = [out / JSON, out / TRACES]
  if plots:
    from zhang.analysis import llc as llc_report
    written.append(llc_report.plot_traces(result, traces, out))
  return written


def parse_sweep(specs: list[str]) -> dict[str, list]:
  """``step_size=1e-5,1e-4,gamma=100,1000`` (or one ``NAME=V,V`` per --sweep) -> {name:
  values}: a token with ``=`` starts a setting, the tokens after it are more values."""
  grid, name = {}, None
  for token in ",".join(specs).split(","):
    token = token.strip()
    if not token:
      continue
    if "=" in token:
      name, _, token = token.partition("=")
      name = name.strip()
      if name not in SWEEPABLE:
        raise UsageError(f"`sweep`: unknown setting {name!r}: sweepable are "
                         f"{', '.join(SWEEPABLE)} (e.g. `sweep` step_size=1e-5,1e-4)")
      if name in grid:
        raise UsageError(f"`sweep`: {name} is given twice")
      grid[name] = []
    elif name is None:
      raise UsageError(f"`sweep`: {token!r} has no setting: write NAME=V1,V2,...")
    grid[name].append(_sweep_value(name, token.strip()))
  if not grid:
    raise UsageError("`sweep` needs NAME=V1,V2,... e.g. step_size=1e-5,1e-4,gamma=100,1000")
  return grid


def _sweep_value(name: str, text: str):
  try:
    if name == "nbeta":
      return parse_nbeta(text)
    if name in ("chains", "draws", "burnin", "batch_size"):
      return int(text)
    return float(text)
  except ValueError:
    raise UsageError(f"`sweep`: {name}={text!r} is not a valid value") from None


def sweep(workdir, grid: dict[str, list], settings: Settings | None = None,
          steps: str = "last", data_dir: str | None = None, out=None,
          log: Callable[[str], None] | None = None) -> dict:
  """lambda-hat of every replica for each combination of ``grid``'s settings (the others
  from ``settings``); returns ``{"settings", "combinations": [{"settings", "replicas"}]}``
  and writes it to OUT/llc_sweep.json when ``out`` is given. One compilation serves every
  combination of step size, gamma and n beta. ``log`` (default stderr) gets a line as each
  combination finishes."""
  log = log or (lambda msg: print(f"zhang llc: {msg}", file=sys.stderr, flush=True))
  settings = settings or Settings()
  combos = [dataclasses.replace(settings, **dict(zip(grid, values)))
            for values in itertools.product(*grid.values())]
  run, chosen = _open(workdir, [settings, *combos], steps, data_dir, out)
  sampler = Sampler(run)
  loaded = {step: run.state(step) for step in chosen}
  results = []
  start = time.perf_counter()
  for i, c in enumerate(combos):
    entries = []
    for step, state in loaded.items():
      init_loss, trace, nbeta, _ = sampler.sample(state.params, state.batch_stats, c)
      entries += _entries(run, step, init_loss, trace, nbeta, c, _num_params(state.params))
    results.append(dict(settings=settings_dict(run, c, chosen, nbeta), replicas=entries))
    elapsed = time.perf_counter() - start
    left = elapsed / (i + 1) * (len(combos) - i - 1)
    log(f"combination {i + 1}/{len(combos)} done, {_minutes(elapsed)} so far"
        + (f", about {_minutes(left)} left" if left else ""))
  nbeta = resolve_nbeta(settings.nbeta, run.n, settings.batch_size or run.config.batch_size)
  result = dict(settings=settings_dict(run, settings, chosen, nbeta), swept=list(grid),
                combinations=results)
  if out is not None:
    out = metrics_lib.workdir_path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_lib.write_json(out / "llc_sweep.json", result)
  return result


from zhang.analysis.llc import load, plot, plot_traces, report_lines, sweep_lines  # noqa: E402,F401
