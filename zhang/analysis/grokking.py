"""Grokking as a measured event: each replica's fit step against its generalize step.

A run that trains on past the fit (``stop_at_fit=False``, ``configs/modadd.py``) records in
summary.json each replica's ``fit_step`` (first evaluation with train accuracy >=
``fit_threshold``) and ``generalize_step`` (first with test accuracy >=
``generalize_threshold``, null if never). Grokking is a generalize step far after the fit;
label noise may delay it or prevent it. Test accuracy is against the true labels (the
corruption changes only the training set's), so a replica that has learned the addition and
memorized its noisy pairs still generalizes; one that stops short of the threshold is read
from its curve: the first evaluation at half test accuracy (``half_step``) and the best.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from zhang.analysis.load import Runs
from zhang.formatting import md_table
from zhang.formatting import pct as _pct


def applies(runs: Runs) -> bool:
  """Whether any run trained past the fit and recorded generalize steps."""
  return any(not r.config.get("stop_at_fit", True) for r in runs.runs)


HALF = 0.5  # test accuracy of the half_step


def _curve_events(metrics: pd.DataFrame) -> dict:
  """(run, replica) -> (first step with test accuracy >= HALF or NaN, best test accuracy)."""
  out = {}
  if metrics.empty or "test_acc" not in metrics:
    return out
  for key, g in metrics.sort_values("step").groupby(["run", "replica"]):
    half = g.step[g.test_acc >= HALF]
    out[key] = (float(half.iloc[0]) if len(half) else np.nan, float(g.test_acc.max()))
  return out


def steps(runs: Runs) -> pd.DataFrame:
  """One row per replica of the runs that trained past the fit: run, model, replica, kind,
  corruption, seed, weight_decay, learning_rate, fit_step, generalize_step (NaN: never),
  half_step (first evaluation with test accuracy >= HALF; NaN: never), best_test_acc,
  steps_run, final_test_acc, final_train_acc, generalize_threshold."""
  if not applies(runs):
    return pd.DataFrame()
  rows = []
  events = _curve_events(runs.metrics)
  for run in runs.runs:
    if run.config.get("stop_at_fit", True):
      continue
    summary = run.summary or {}
    for rep in summary.get("replicas", []):
      half, best = events.get((run.name, rep["replica"]), (np.nan, np.nan))
      rows.append(dict(
          run=run.name, model=run.config["model"], replica=rep["replica"], kind=rep["kind"],
          corruption=rep["corruption"], seed=rep["seed"],
          weight_decay=rep.get("weight_decay", 0.0), learning_rate=rep.get("learning_rate"),
          fit_step=np.nan if rep.get("fit_step") is None else rep["fit_step"],
          generalize_step=(np.nan if rep.get("generalize_step") is None
                           else rep["generalize_step"]),
          half_step=half, best_test_acc=best, steps_run=summary.get("steps_run"),
          final_test_acc=rep.get("final_test_acc"), final_train_acc=rep.get("final_train_acc"),
          generalize_threshold=run.config.get("generalize_threshold", 0.99)))
  return pd.DataFrame(rows)


def summary_table(s: pd.DataFrame) -> pd.DataFrame:
  """Per (model, learning rate, weight decay, corruption): replicas, how many fitted,
  generalized and reached half test accuracy, the mean fit, generalize and half steps (of
  those that got there), the mean delay, and the mean best and final test accuracy."""
  rows = []
  for (model, lr, wd, p), g in s.groupby(["model", "learning_rate", "weight_decay",
                                          "corruption"], sort=True):
    gen = g[g.generalize_step.notna()]
    half = g[g.half_step.notna()]
    rows.append(dict(model=model, learning_rate=lr, weight_decay=wd, corruption=p, n=len(g),
                     n_fitted=int(g.fit_step.notna().sum()), n_generalized=len(gen),
                     fit_step=g.fit_step.mean(), generalize_step=gen.generalize_step.mean()
                     if len(gen) else np.nan,
                     delay=(gen.generalize_step - gen.fit_step).mean() if len(gen) else np.nan,
                     n_half=len(half), half_step=half.half_step.mean() if len(half) else np.nan,
                     best_test_acc=g.best_test_acc.mean(),
                     final_test_acc=g.final_test_acc.mean(), steps_run=g.steps_run.max()))
  return pd.DataFrame(rows)


def _steps(x) -> str:
  return "–" if x is None or not np.isfinite(x) else f"{x:,.0f}"


def _noise_words(clean, noisy: pd.DataFrame) -> list[str]:
  """What each corruption level did to generalization, in words, against the true labels'
  row ``clean`` (None when the run has none)."""
  words = []
  def ratio(x, of):  # against the true labels' step, where both exist
    ok = clean is not None and np.isfinite(clean[of]) and clean[of] > 0
    return f", {x / clean[of]:.1f}x the true labels'" if ok else ""

  for _, r in noisy.iterrows():
    if r.n_generalized == r.n:
      words.append(f"p = {r.corruption:g} generalizes at {_steps(r.generalize_step)}"
                   f"{ratio(r.generalize_step, 'generalize_step')}")
    elif r.n_half:
      words.append(f"p = {r.corruption:g} reaches {100 * HALF:.0f}% test accuracy at "
                   f"{_steps(r.half_step)}{ratio(r.half_step, 'half_step')} "
                   f"({r.n_half}/{r.n} replicas), "
                   f"{r.n_generalized}/{r.n} generalize, best {_pct(r.best_test_acc)}%")
    else:
      words.append(f"p = {r.corruption:g} never reaches {100 * HALF:.0f}% "
                   f"(best {_pct(r.best_test_acc)}%)")
  return words


def report_lines(runs: Runs, s: pd.DataFrame | None = None) -> list[str]:
  """The report's grokking section: the table and, in words, what label noise does.
  ``s``: ``steps(runs)``, where the caller has it already."""
  s = steps(runs) if s is None else s
  if s.empty:
    return []
  t = summary_table(s)
  threshold = s.generalize_threshold.iloc[0]
  rows = [[r.model, f"{r.learning_rate:g}", f"{r.weight_decay:g}", f"{r.corruption:g}",
           f"{r.n_fitted}/{r.n}", _steps(r.fit_step), f"{r.n_generalized}/{r.n}",
           _steps(r.generalize_step), _steps(r.delay), f"{r.n_half}/{r.n}",
           _steps(r.half_step), _pct(r.best_test_acc), _pct(r.final_test_acc)]
          for _, r in t.iterrows()]
  out = ["## Fit and generalization (grokking)", "",
         f"Each replica trained to max_steps past its fit; test accuracy is against the true "
         f"labels. *fit*: first evaluation with train accuracy 1; *generalized*: first with "
         f"test accuracy >= {threshold:g}; *half*: first with test accuracy >= "
         f"{100 * HALF:.0f}%; steps are means over the replicas that got there; *delay*: "
         f"generalize step minus fit step; *best*: the highest test accuracy of any "
         f"evaluation.", "",
         *md_table(["model", "learning rate", "weight decay", "label corruption", "fitted",
                    "fit step", "generalized", "generalize step", "delay", "half",
                    "half step", "best test acc (%)", "final test acc (%)"], rows), ""]
  words = []
  for (model, lr, wd), g in t.groupby(["model", "learning_rate", "weight_decay"]):
    clean = g[g.corruption == 0]
    head = f"- {model}, lr {lr:g}, weight decay {wd:g}: "
    c = None if clean.empty else clean.iloc[0]
    if c is None:
      text = head + "no true-label replicas to compare with"
    elif not c.n_generalized:
      text = (head + f"true labels did not generalize within {_steps(g.steps_run.max())} "
              f"steps")
    else:
      text = (head + f"true labels fit at {_steps(c.fit_step)} and generalize at "
              f"{_steps(c.generalize_step)}")
    noise = _noise_words(c, g[g.corruption > 0])
    words.append(text + ("; " + "; ".join(noise) if noise else "") + ".")
  return out + words + [""]
