"""``zhang bound``: Dziugaite and Roy (2017)'s PAC-Bayes bound for every replica of a
two-class run (or of a study's runs), beside its test error, written to OUT/bound.json.

``bound(workdir, out, ...)`` opens the run(s) as ``zhang measures`` does
(``zhang.probes.measures.probe.open_runs``), checks every argument against them before
anything compiles (the settings, a task of more than two classes, a step without a
checkpoint, an OUT that holds another run's bound.json), then per run: the parameters at the
step asked for (``compute.resolve_step``), the run's own evaluation of them, and one compiled
program that optimizes and certifies every replica's posterior (``posterior.bound`` mapped
over the grid with the trainer's ``step.over_grid``) on all of the replica's training
examples as it trained on them (its corrupted labels, its randomized inputs, no
augmentation): the PAC-Bayes bound's n is the number of examples the posterior's error is
defined on (its minibatches and Monte Carlo draws are drawn from them), so it is the run's
n_train. The certified number is then recomputed on the host in float64 from the program's
pieces (``kl.certified``; the program's own is float32). A replica whose optimization
diverged fails the command, naming the learning rates, and
nothing is written; else only OUT is written, through one atomic write.

bound.json: ``{"run": the path given, "settings": {every ``posterior.Settings`` field,
"confidence", "examples", "step", "seed", "dataset", "run", "config_hash", "runs": [...]},
"replicas": [{"replica", "model", "kind", "corruption", "seed", "learning_rate",
"weight_decay", "augmentation", "step", "train_acc", "test_acc", "test_error", "bound",
"mc_error", "mc_error_bound", "kl", "lambda", "prior_index", "objective_trace",
"diverged"}]}``. Every field: docs/bounds.md.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Callable

import jax
import numpy as np

from zhang.errors import UsageError
from zhang.experiment import step as step_lib
from zhang.probes import run as run_lib
from zhang.probes.bounds import kl, posterior
from zhang.probes.measures import compute, context
from zhang.probes.measures import probe as measures_probe
from zhang.runtime import mesh as mesh_lib

JSON = "bound.json"
_COORDINATES = ("kind", "corruption", "seed", "learning_rate", "weight_decay", "augmentation")


def check_two_classes(run: run_lib.Run) -> None:
  """UsageError unless the run is a two-class task: the bound is on a two-class 0-1 error."""
  k = run.dataset.num_classes
  if k != 2:
    raise UsageError(
        f"{run.path} trained {run.config.dataset} with {k} classes, and the bound is on a "
        f"two-class 0-1 error: train with binary=True (e.g. --config.binary=true), which "
        f"makes the first half of the classes one class and the rest the other")


def _check_seed(seed) -> None:
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise UsageError(f"`seed` {seed!r} must be an integer >= 0")


def bound(workdir, out, step=None, settings: posterior.Settings | None = None, seed: int = 0,
          data_dir: str | None = None, log: Callable[[str], None] | None = None) -> dict:
  """bound.json's dict of the run(s) in ``workdir``, written to OUT (None: not written).
  Bad input raises UsageError before anything is compiled or written; a diverged
  optimization raises it after the program ran, and nothing is written."""
  log = log or (lambda msg: print(f"zhang bound: {msg}", file=sys.stderr, flush=True))
  settings = settings or posterior.Settings()
  settings.check()
  _check_seed(seed)
  runs = measures_probe.open_runs(workdir, data_dir, "`zhang bound`")
  for run in runs:
    check_two_classes(run)
  steps = [compute.resolve_step(run, step) for run in runs]
  if out is not None:
    measures_probe.check_out(runs, out, JSON, "bounds")
  entries, sources = [], []
  for run, (measured, read, spec) in zip(runs, steps):
    rows, seconds = run_bounds(run, measured, settings, seed, read)
    entries += rows
    sources.append(dict(model=run.config.model, run=run.path, config_hash=run.config_hash,
                        steps=sorted(set(read)), examples=run.n, **seconds))
    log(f"{run.config.model}: {len(run.replicas)} replicas at step {spec} in "
        f"{seconds['compile_seconds'] + seconds['bound_seconds']:.1f} s (compilation "
        f"{seconds['compile_seconds']:.1f} s, bound {seconds['bound_seconds']:.1f} s)")
  check_diverged(entries, settings, workdir)
  result = dict(run=os.fspath(workdir),
                settings=settings_dict(runs, sources, steps[0][2], settings, seed),
                replicas=entries)
  if out is not None:
    measures_probe.write(result, out, JSON)
  return result


def check_diverged(entries: list[dict], s: posterior.Settings, workdir) -> None:
  """UsageError naming the learning rate when some replica's optimization diverged."""
  bad = [e for e in entries if e["diverged"]]
  if not bad:
    return
  names = ", ".join(f"{e['replica']} ({e['model']}, {e['kind']} {e['corruption']:g}, seed "
                    f"{e['seed']})" for e in bad[:6]) + (
                        f" and {len(bad) - 6} more" if len(bad) > 6 else "")
  raise UsageError(f"the posterior's optimization diverged (a non-finite objective or KL) "
                   f"for replica(s) {names} of {workdir}: lower `learning_rate` (now "
                   f"{s.learning_rate:g}, e.g. {s.learning_rate / 10:g}) or "
                   f"`variance_learning_rate` (now {s.variance_learning_rate:g}, e.g. "
                   f"{s.variance_learning_rate / 10:g}); nothing was written")


def settings_dict(runs, sources, spec: str, s: posterior.Settings, seed: int) -> dict:
  """bound.json's ``settings``: every setting of the posterior and the certificate, and the
  runs it came from (``run`` and ``config_hash`` of a single run, for
  ``zhang.analysis.provenance``)."""
  out = dict(dataclasses.asdict(s), confidence=round(1 - s.delta - s.mc_delta, 12),
             examples=runs[0].n, step=spec, seed=seed, dataset=runs[0].config.dataset,
             runs=sources)
  if len(runs) == 1:
    out.update(run=runs[0].path, config_hash=runs[0].config_hash)
  else:
    out.update(run=os.path.dirname(runs[0].path.rstrip("/")), config_hash=None)
  return out


# ------------------------------------------------------------------- the program

def _one_replica(model: context.Model, s: posterior.Settings, params, init_params,
                 batch_stats, x, y, key_data, valid) -> dict:
  rep = context.Replica(params, init_params, batch_stats, x, y, valid,
                        jax.random.wrap_key_data(key_data))
  return posterior.bound(model, rep, s)


def program(run: run_lib.Run, s: posterior.Settings, chunk: int) -> Callable:
  """The jit-compiled bound of every replica: (params, init params, batch stats, x, y,
  keys, valid) -> ``posterior.bound``'s dict of (R, ...) arrays."""
  one = functools.partial(_one_replica, compute.model_of(run, chunk), s)
  grid = step_lib.over_grid(run.plan, run.mesh, one, replicated=(1,))  # valid: shared
  return jax.jit(grid, out_shardings=mesh_lib.replicated(run.mesh))


def certify(got: dict, n: int, s: posterior.Settings) -> dict:
  """The certificate on the host in float64 from the program's pieces (its Monte Carlo
  error, KL and lambda): prior_index, lambda (the grid's), mc_error_bound and bound (NaN
  where the optimization diverged)."""
  j = kl.prior_index(np.asarray(got["lambda"], np.float64), s.prior_count, s.prior_scale,
                     s.prior_precision)
  union = kl.union_cost(j, s.prior_count, s.union)
  train, certified = kl.certified(np.asarray(got["mc_error"], np.float64), s.draws,
                                  np.asarray(got["kl"], np.float64), n, s.delta, s.mc_delta,
                                  union)
  diverged = np.asarray(got["diverged"], bool)
  return dict(prior_index=j, lam=kl.prior_variance(j, s.prior_scale, s.prior_precision),
              mc_error_bound=train, bound=np.where(diverged, np.nan, certified))


def run_bounds(run: run_lib.Run, measured: list[int], s: posterior.Settings, seed: int,
               read: list[int]) -> tuple[list[dict], dict]:
  """One run's replicas' rows of bound.json, and the seconds its program took to compile
  and to run."""
  state = run.state_at(read)
  evals = run.evaluate_state(state, measured)
  chunk = min(run.config.eval_batch_size, run.n)
  x, y, valid = compute.examples(run, run.n, chunk)  # every training example: n = n_train
  args = (state.params, run.state(0).params, state.batch_stats, x, y,
          compute.replica_keys(run, seed), valid)
  t0 = time.perf_counter()
  compiled = program(run, s, chunk).lower(*args).compile()
  t1 = time.perf_counter()
  got = {k: np.asarray(v)[:len(run.replicas)]
         for k, v in jax.device_get(compiled(*args)).items()}
  seconds = dict(compile_seconds=t1 - t0, bound_seconds=time.perf_counter() - t1)
  host = certify(got, run.n, s)
  rows = []
  for i, (r, ev) in enumerate(zip(run.replicas, evals)):
    test_acc = ev.get("test_acc")
    rows.append(dict(
        replica=r.index, model=run.config.model, **{k: getattr(r, k) for k in _COORDINATES},
        step=measured[i], train_acc=ev.get("train_acc"), test_acc=test_acc,
        test_error=None if test_acc is None else 1.0 - test_acc,
        bound=_number(host["bound"][i]), mc_error=_number(got["mc_error"][i]),
        mc_error_bound=_number(host["mc_error_bound"][i]), kl=_number(got["kl"][i]),
        **{"lambda": _number(host["lam"][i])}, prior_index=_index(host["prior_index"][i]),
        objective_trace=[_number(v) for v in got["trace"][i]],
        diverged=bool(got["diverged"][i])))
  return rows, seconds


def _number(x) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None


def _index(j) -> int | None:
  return int(j) if np.isfinite(j) else None
