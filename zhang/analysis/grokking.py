"""Grokking as a measured event: each replica's fit step against its generalize step.

A run that trains on past the fit (``stop_at_fit=False``, ``configs/modadd.py``) records in
summary.json each replica's ``fit_step`` (first evaluation with train accuracy >=
``fit_threshold``) and ``generalize_step`` (first with test accuracy >=
``generalize_threshold``, null if never). Grokking is a generalize step far after the fit;
label noise may delay it or prevent it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from zhang.analysis.load import Runs


def applies(runs: Runs) -> bool:
  """Whether any run trained past the fit and recorded generalize steps."""
  return any(not r.config.get("stop_at_fit", True) for r in runs.runs)


def steps(runs: Runs) -> pd.DataFrame:
  """One row per replica of the runs that trained past the fit: run, model, replica, kind,
  corruption, seed, weight_decay, learning_rate, fit_step, generalize_step (NaN: never),
  steps_run, final_test_acc, generalize_threshold."""
  rows = []
  for run in runs.runs:
    if run.config.get("stop_at_fit", True):
      continue
    summary = run.summary or {}
    for rep in summary.get("replicas", []):
      rows.append(dict(
          run=run.name, model=run.config["model"], replica=rep["replica"], kind=rep["kind"],
          corruption=rep["corruption"], seed=rep["seed"],
          weight_decay=rep.get("weight_decay", 0.0), learning_rate=rep.get("learning_rate"),
          fit_step=np.nan if rep.get("fit_step") is None else rep["fit_step"],
          generalize_step=(np.nan if rep.get("generalize_step") is None
                           else rep["generalize_step"]),
          steps_run=summary.get("steps_run"), final_test_acc=rep.get("final_test_acc"),
          generalize_threshold=run.config.get("generalize_threshold", 0.99)))
  return pd.DataFrame(rows)


def summary_table(s: pd.DataFrame) -> pd.DataFrame:
  """Per (model, learning rate, weight decay, corruption): replicas, how many fitted and
  generalized, the mean fit and generalize steps (of those that did) and the mean delay."""
  rows = []
  for (model, lr, wd, p), g in s.groupby(["model", "learning_rate", "weight_decay",
                                          "corruption"], sort=True):
    gen = g[g.generalize_step.notna()]
    rows.append(dict(model=model, learning_rate=lr, weight_decay=wd, corruption=p, n=len(g),
                     n_fitted=int(g.fit_step.notna().sum()), n_generalized=len(gen),
                     fit_step=g.fit_step.mean(), generalize_step=gen.generalize_step.mean()
                     if len(gen) else np.nan,
                     delay=(gen.generalize_step - gen.fit_step).mean() if len(gen) else np.nan,
                     final_test_acc=g.final_test_acc.mean(), steps_run=g.steps_run.max()))
  return pd.DataFrame(rows)


def _steps(x) -> str:
  return "–" if x is None or not np.isfinite(x) else f"{x:,.0f}"


def report_lines(runs: Runs) -> list[str]:
  """The report's grokking section: the table and, in words, what label noise does."""
  s = steps(runs)
  if s.empty:
    return []
  t = summary_table(s)
  threshold = s.generalize_threshold.iloc[0]
  rows = [[r.model, f"{r.learning_rate:g}", f"{r.weight_decay:g}", f"{r.corruption:g}",
           f"{r.n_fitted}/{r.n}",
           _steps(r.fit_step), f"{r.n_generalized}/{r.n}", _steps(r.generalize_step),
           _steps(r.delay), f"{100 * r.final_test_acc:.1f}"] for _, r in t.iterrows()]
  out = ["## Fit and generalization (grokking)", "",
         f"Each replica trained to max_steps past its fit. *fit*: first evaluation with train "
         f"accuracy 1; *generalized*: first with test accuracy >= {threshold:g}; steps are "
         f"means over the replicas that got there; *delay*: generalize step minus fit step.", "",
         "| model | learning rate | weight decay | label corruption | fitted | fit step | "
         "generalized | generalize step | delay | final test acc (%) |", "|" + "---|" * 10,
         *("| " + " | ".join(r) + " |" for r in rows), ""]
  words = []
  for (model, lr, wd), g in t.groupby(["model", "learning_rate", "weight_decay"]):
    clean = g[g.corruption == 0]
    noisy = g[(g.corruption > 0) & (g.n_generalized > 0)]
    never = g[(g.corruption > 0) & (g.n_generalized == 0)]
    if clean.empty or not clean.n_generalized.iloc[0]:
      words.append(f"{model}, lr {lr:g}, weight decay {wd:g}: true labels did not generalize within "
                   f"{_steps(g.steps_run.max())} steps.")
      continue
    text = (f"{model}, lr {lr:g}, weight decay {wd:g}: true labels generalize at step "
            f"{_steps(clean.generalize_step.iloc[0])}")
    if len(noisy):
      text += "; with label corruption " + ", ".join(
          f"p = {r.corruption:g} at {_steps(r.generalize_step)} "
          f"({r.generalize_step / clean.generalize_step.iloc[0]:.1f}x)"
          for _, r in noisy.iterrows())
    if len(never):
      text += ("; never (within the run) at p = "
               + ", ".join(f"{p:g}" for p in never.corruption))
    words.append(text + ".")
  return out + [" ".join(words), ""]
