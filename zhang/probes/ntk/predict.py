"""``compute(workdir)``: a finished run's empirical NTK at initialization, the kernel regime's
predicted time to fit and slowdown beside the measured ones, and kernel interpolation's test
accuracy beside the network's; ``write`` puts them in ntk.json with its figures.

One kernel per seed and input randomization (``request.kernel_key``), shared by the
replicas that differ only in their labels or hyper-parameters; for each replica, its labels'
projections on the kernel's eigenvectors and the dynamics of ``zhang.probes.ntk.dynamics`` under
two schedules (the run's, and its learning rate never decayed) and two fit criteria (the
residual fraction, and the linearized network's train accuracy). ntk.json's fields are
listed in ``zhang.analysis.ntk``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import jax
import numpy as np

from zhang.analysis.ntk import CRITERIA, NTK_JSON, SCHEDULES
from zhang.experiment import step as step_lib
from zhang.probes import run as run_lib
from zhang.probes.kernels import interpolation as kernels_lib
from zhang.probes.ntk import dynamics as dyn
from zhang.probes.ntk import empirical as ntk
from zhang.probes.ntk.request import (
  INIT_LOSS_RTOL,
  Request,
  Setup,
  check_init,
  kernel_key,
  prepare,
)
from zhang.rundir import metrics as metrics_lib

CURVE_POINTS = 80  # recorded steps kept per residual curve in ntk.json (log-spaced)


def _log(msg: str) -> None:
  print(f"[zhang ntk] {msg}", file=sys.stderr, flush=True)


def compute(workdir, request: Request | None = None, out=None,
            log: Callable[[str], None] = _log) -> dict:
  """ntk.json's contents for the finished run in ``workdir``. Bad input raises UsageError
  before anything is compiled (``out`` is only checked: ``write`` writes), except a
  rebuilt initialization that does not reproduce the run's step 0, which needs the network
  run once."""
  start = time.perf_counter()
  s = prepare(workdir, request, out)
  run, config, ds = s.run, s.run.config, s.dataset
  if out is not None:  # ntk.json (curves of every replica) and its figures, before the kernels
    metrics_lib.check_free_space(metrics_lib.workdir_path(out), (1 << 22) + len(
        run.replicas) * CURVE_POINTS * 4096, "writing ntk.json and its figures")
  log(f"{run.path}: {config.model} on {config.dataset}, {len(run.replicas)} replicas, "
      f"kernels on the first {s.n} of {len(ds.train_labels)} training examples "
      f"({s.n_test} test; {s.kernel.method}); memory: {s.memory.describe()}")
  for what, skipped in (("weight decay", any(r.weight_decay > 0 for r in run.replicas)),
                        ("augmentation", any(r.augmentation != "none" for r in run.replicas))):
    if skipped:
      log(f"{what}: some replicas train with it; the kernel regime here leaves it out")
  groups: dict[tuple, list] = {}
  for r in run.replicas:
    groups.setdefault(kernel_key(r), []).append(r)
  curve_index = np.union1d([0], np.round(np.geomspace(
      1, max(len(s.record_steps) - 1, 1), CURVE_POINTS)).astype(int))
  notes = check_init(run)  # every initialization checked before any kernel
  init = run.state(0)
  rows, totals = {}, dict(seconds=0.0, flops=0)
  for g, members in enumerate(groups.values()):
    rows.update(_group(s, init, g, len(groups), members, curve_index, totals, log))
  result = _assemble(s, rows, s.record_steps[curve_index], notes)
  # Where the time went, on this machine (not a setting: it does not change the numbers).
  result["settings"]["timing"] = dict(kernel_seconds=round(totals["seconds"], 3),
                                      kernel_flops=totals["flops"],
                                      seconds=round(time.perf_counter() - start, 3))
  return result


def _group(s: Setup, init, g: int, count: int, members, curve_index, totals: dict,
           log) -> dict[int, dict]:
  """One kernel (at ``init``, every replica's initialization) and the predictions of the
  replicas that share it."""
  run, config, ds, req = s.run, s.run.config, s.dataset, s.request
  n, n_test, num_classes = s.n, s.n_test, ds.num_classes
  first = members[0]
  params, state = run.variables(init, first)
  x_train = run.inputs(first, run_lib.TRAIN)
  x_test = run.inputs(first, run_lib.TEST)
  f_train = run.logits(params, state, x_train)
  if run.settings.center:  # alpha (f(w) - f(w_0)) starts at zero; its kernel alpha^2 K at
    f_train = np.zeros_like(f_train)  # the rate / alpha^2 moves it as f's kernel does f
  tk = s.kernel
  k, k_test, stats = tk.matrices(params, state, x_train[:n],
                                 x_test[:n_test] if n_test else None,
                                 block=s.memory.block, hold=s.memory.hold, dtype=req.dtype)
  flop = tk.flops(stats)
  coupling = tk.class_coupling(params, state, x_train[:min(n, ntk.COUPLING_EXAMPLES)])
  totals["seconds"] += stats.seconds
  totals["flops"] += flop["total"]
  t0 = time.perf_counter()
  lam, vec = dyn.eigen(k)
  labels = np.stack([run.labels[r.index][:n] for r in members])
  kernel_acc, cond = [None] * len(members), None
  if n_test:
    try:
      pred, cond = dyn.interpolate(k, k_test, labels, num_classes)
      kernel_acc = [float(np.mean(p == ds.test_labels[:n_test])) for p in pred]
    except kernels_lib.SingularKernelError as e:
      log(f"kernel {g + 1}: no interpolant ({str(e).split(':')[0]})")
  del k, k_test
  log(f"kernel {g + 1}/{count}: seed {first.seed}, {_inputs_name(first)} (replicas "
      f"{', '.join(str(r.index) for r in members)}): {n} x {n}"
      f"{f' and {n_test} test' if n_test else ''} in {stats.seconds:.1f} s, "
      f"{flop['total'] / 1e9:.3g} GFLOP "
      f"({flop['total'] / max(stats.seconds, 1e-9) / 1e9:.0f} "
      f"GFLOP/s); eigenvalues {lam[0]:.3g} .. {lam[-1]:.3g}; eigendecomposition and "
      f"interpolation {time.perf_counter() - t0:.1f} s")

  a = dyn.curvature(lam, n, num_classes, req.loss)
  for rate in sorted({float(r.learning_rate) for r in members}):
    if not dyn.stable(a, rate, config.momentum):
      log(f"kernel {g + 1}: at learning rate {rate:g} the linearized network diverges "
          f"(the rate times the top mode's curvature {a[-1]:.3g} is "
          f"{rate * a[-1]:.3g} >= 2 (1 + momentum)): its predictions are undefined")
  changes = np.arange(0, s.record_steps[-1] + 1, config.lr_decay_every)
  common = dict(kernel_class_coupling=coupling, kernel_eigenvalue_min=float(lam[0]),
                kernel_eigenvalue_max=float(lam[-1]), kernel_condition_lower_bound=cond,
                kernel_seconds=round(stats.seconds, 3), kernel_flops=flop["total"])
  responses, rows = {}, {}
  with np.errstate(over="ignore", invalid="ignore"):  # a diverging linearization: inf, None
    for r, lab, acc in zip(members, labels, kernel_acc):
      rows[r.index] = _replica(s, g, r, lab, acc, a, vec, f_train, responses, changes,
                               curve_index, common)
  return rows


def _replica(s: Setup, g: int, r, lab, acc, a, vec, f_train, responses: dict, changes,
             curve_index, common: dict) -> dict:
  """One replica's predictions from its kernel's eigenmodes (``responses`` caches the
  modes' response per learning rate and schedule)."""
  config, req, n, num_classes = s.run.config, s.request, s.n, s.dataset.num_classes
  rate = float(r.learning_rate)
  for schedule in SCHEDULES:
    if (rate, schedule) not in responses:
      responses[rate, schedule] = dyn.mode_response(
          a, _schedule(config, rate, schedule), config.momentum, s.record_steps,
          changes if schedule == "run" else ())
  e0 = dyn.initial_residual(lab, f_train[:n], num_classes, req.loss)
  proj = vec.T @ e0
  energy = np.sum(proj ** 2, axis=1)
  target = dyn.targets(lab, num_classes, req.loss)
  row = dict(kernel=g, **common, kernel_test_acc=acc,
             energy_top_classes=dyn.energy_top(energy, num_classes),
             stable=dyn.stable(a, rate, config.momentum))
  for schedule in SCHEDULES:
    psi = responses[rate, schedule]
    curve = dyn.residual_curve(psi, energy)
    fit_acc = dyn.accuracy_fit_step(vec, proj, psi, target, lab, s.record_steps,
                                    config.fit_threshold)
    row[f"predicted_fit_step_{schedule}_residual"] = dyn.first_step(
        curve, s.record_steps, req.threshold)
    row[f"predicted_fit_step_{schedule}_accuracy"] = fit_acc
    row[f"residual_at_accuracy_fit_{schedule}"] = (
        None if fit_acc is None else float(curve[fit_acc // config.eval_every]))
    row[f"predicted_residual_final_{schedule}"] = float(curve[-1])
    row[f"predicted_residual_{schedule}"] = [float(v) for v in curve[curve_index]]
  return row


def _schedule(config, rate: float, schedule: str):
  """A replica's learning rate at given steps: the run's staircase decay of its rate
  (``step.learning_rate_at``, the function training uses), or the rate never decayed."""
  if schedule == "constant_lr":
    return lambda steps: np.full(np.shape(steps), rate)
  return lambda steps: np.asarray(step_lib.learning_rate_at(
      np.asarray(steps), rate, config.lr_decay, config.lr_decay_every), np.float64)


def _inputs_name(r) -> str:
  """A kernel's inputs in words: the kind, and the corruption level for a pixel kind whose
  randomization it seeds."""
  return r.kind + (f" (corruption {r.corruption:g})"
                   if r.kind != "labels" and r.corruption else "")


# --------------------------------------------------------------------------- slowdowns

def _setup_key(r) -> tuple:
  return (r.learning_rate, r.weight_decay, r.augmentation, r.output_scale, r.dropout)


def _is_baseline(r) -> bool:
  return r.kind == "labels" and r.corruption == 0


def slowdowns(replicas, steps: dict[int, int | None],
              bound: int | None = None) -> dict[int, tuple]:
  """Per replica (slowdown, lower bound): its fit step over the fit step of the true-label
  replica of its seed and hyper-parameters (their mean over seeds when its seed has none,
  as ``zhang.analysis.slowdown``). A replica that never fitted has no slowdown, and
  ``bound / baseline`` as its lower bound (``bound``: the last step it could have fitted
  at); a baseline that never fitted leaves both None."""
  out = {}
  for r in replicas:
    base = [b for b in replicas if _is_baseline(b) and _setup_key(b) == _setup_key(r)]
    paired = [b for b in base if b.seed == r.seed] or base
    values = [steps[b.index] for b in paired]
    if not values or any(v is None for v in values):
      out[r.index] = (None, None)
      continue
    baseline = float(np.mean(values))
    mine = steps[r.index]
    if mine is None:
      out[r.index] = (None, None if bound is None else bound / baseline)
    else:
      out[r.index] = (mine / baseline, None)
  return out


# --------------------------------------------------------------------------- ntk.json

def _assemble(s: Setup, rows: dict, curve_steps, notes: list[str]) -> dict:
  run, req = s.run, s.request
  horizon = int(s.record_steps[-1])
  summary = {r["replica"]: r for r in run.summary["replicas"]}
  measured = {r.index: summary[r.index].get("fit_step") for r in run.replicas}
  measured_slow = slowdowns(run.replicas, measured, run.summary.get("steps_run"))
  predicted = {
      f"{schedule}_{crit}": slowdowns(
          run.replicas,
          {i: row[f"predicted_fit_step_{schedule}_{crit}"] for i, row in rows.items()},
          horizon)
      for schedule in SCHEDULES for crit in CRITERIA}
  primary = f"run_{req.criterion}"
  replicas = []
  for r in run.replicas:
    row, summ = rows[r.index], summary[r.index]
    out = dict(replica=r.index, kind=r.kind, corruption=r.corruption, seed=r.seed,
               learning_rate=r.learning_rate, weight_decay=r.weight_decay,
               augmentation=r.augmentation, output_scale=r.output_scale, dropout=r.dropout,
               label_noise=float(run.label_noise[r.index]),
               predicted_fit_step=row[f"predicted_fit_step_{primary}"],
               predicted_slowdown=predicted[primary][r.index][0],
               predicted_slowdown_at_least=predicted[primary][r.index][1],
               measured_fit_step=measured[r.index],
               measured_slowdown=measured_slow[r.index][0],
               measured_slowdown_at_least=measured_slow[r.index][1],
               kernel_test_acc=row["kernel_test_acc"],
               network_test_acc=summ.get("final_test_acc"),
               network_train_acc=summ.get("final_train_acc"))
    for name, values in predicted.items():
      out[f"predicted_slowdown_{name}"] = values[r.index][0]
      out[f"predicted_slowdown_{name}_at_least"] = values[r.index][1]
    out.update({k: v for k, v in row.items() if k != "kernel_test_acc"})
    replicas.append(out)
  return dict(settings=_settings(s, horizon, curve_steps, notes), replicas=replicas)


def _settings(s: Setup, horizon: int, curve_steps, notes: list[str]) -> dict:
  run, config, req = s.run, s.run.config, s.request
  cross_entropy = req.loss == "cross_entropy"
  return dict(
      run=run.path, model=config.model, dataset=config.dataset,
      config_hash=run.config_hash,
      n=s.n, n_test=s.n_test, n_train_run=len(s.dataset.train_labels),
      num_classes=s.dataset.num_classes, num_params=s.kernel.num_params,
      kernel=("class-averaged tangent kernel of the logits at initialization, K[i, j] = "
              "(1/C) sum_c <d f_c(x_i)/dw, d f_c(x_j)/dw> over every parameter; the full "
              "(n C x n C) kernel taken as K (x) I_C (kernel_class_coupling: "
              "|Theta - K (x) I_C| / |K (x) I_C| on the first "
              f"{min(s.n, ntk.COUPLING_EXAMPLES)} examples); inputs as the run evaluates "
              "them (randomized and whitened, not augmented); batch norm in evaluation "
              "mode"),
      kernel_method=s.kernel.method,
      kernel_dtype=f"{req.dtype} features and products, accumulated in float64",
      eigen_dtype="float64",
      loss=req.loss,
      target=("C y - 1 against the logits' class-centred part (the cross-entropy expanded "
              "at zero logits: curvature (I - 11^T/C)/C)" if cross_entropy else
              "one-hot y against the logits (1/2 |f - y|^2)"),
      curvature="lambda / (n C)" if cross_entropy else "lambda / n",
      initial_outputs="included: E_0 = target - the initialized network's outputs",
      labels_centred=("over classes (the cross-entropy's target), not over examples"
                      if cross_entropy else "no"),
      dynamics=("the network linearized at initialization, full batch (the minibatch "
                "mean's expectation), SGD momentum in TensorFlow's form solved per "
                "eigenmode exactly (slow modes: gradient descent at lr / (1 - momentum)); "
                "no minibatch noise, no weight decay, the cross-entropy's curvature fixed "
                "at its zero-logit value"),
      learning_rate=config.learning_rate, momentum=config.momentum,
      lr_decay=config.lr_decay, lr_decay_every=config.lr_decay_every,
      schedules={"run": "each replica's rate with the run's staircase decay "
                        "(zhang.experiment.step.learning_rate_at)",
                 "constant_lr": "each replica's rate, never decayed"},
      criterion=req.criterion, threshold=req.threshold,
      criteria={"residual": f"|E(k)|^2 / |E_0|^2 <= threshold ({req.threshold:g})",
                "accuracy": "the linearized network's train accuracy >= the run's "
                            f"fit_threshold ({config.fit_threshold:g})"},
      fit_threshold=config.fit_threshold, horizon=horizon, record_every=config.eval_every,
      curve_steps=[int(v) for v in curve_steps],
      block=s.memory.block, panels_held=s.memory.hold, memory_bytes=s.memory.total_bytes,
      memory_budget_bytes=s.memory.budget_bytes,
      init_check=("every replica's rebuilt initialization reproduces its step-0 train loss "
                  f"(within {INIT_LOSS_RTOL:g} relative), train and test accuracy in "
                  "metrics.jsonl" + (f"; not checked: {'; '.join(notes)}" if notes else "")),
      measured=("summary.json's fit_step (the first evaluation with train accuracy >= "
                "fit_threshold) over that of the true-label replica of the same seed and "
                "hyper-parameters"),
      backend=jax.default_backend())


def write(result: dict, out) -> list[str]:
  """Writes ``out/ntk.json`` and the figures (``zhang.analysis.ntk_plots.plot``); returns
  the paths written."""
  from zhang.analysis import ntk_plots  # matplotlib only when figures are drawn
  path = metrics_lib.workdir_path(out)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise metrics_lib.disk_error(path, e) from None
  metrics_lib.write_json(path / NTK_JSON, result)
  return [os.fspath(path / NTK_JSON)] + ntk_plots.plot(result, os.fspath(path))
