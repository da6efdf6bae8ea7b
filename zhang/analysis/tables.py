"""Tidy summary tables: learning curves, test error and confidence per corruption, Table 1."""

from __future__ import annotations

import numpy as np
import pandas as pd

from zhang.analysis import fit_time, paper
from zhang.analysis.load import (
  HPARAMS,
  SETUP_COLUMNS,
  Runs,
  condition_name,
  condition_order,
  setup_sort_columns,
)

# Figure 1a's curves, in the paper's legend order.
FIG1A_CONDITIONS = ("true labels", "shuffled pixels", "random pixels", "gaussian",
                    "random labels")


def learning_curves(metrics: pd.DataFrame, y: str = "train_loss",
                    conditions: tuple[str, ...] | None = None) -> pd.DataFrame:
  """Mean, min and max of `y` across seeds per (setup, condition, step)."""
  m = metrics if conditions is None else metrics[metrics["condition"].isin(conditions)]
  setup = [c for c in SETUP_COLUMNS if c in m.columns]
  out = m.groupby(["dataset", *setup, "kind", "corruption", "condition", "step"],
                  as_index=False, dropna=False).agg(epoch=("epoch", "mean"), mean=(y, "mean"),
                                      lo=(y, "min"), hi=(y, "max"), n=(y, "size"))
  return out.assign(metric=y)


def per_corruption(replicas: pd.DataFrame, value: str, n_boot: int = 2000) -> pd.DataFrame:
  """Mean of a per-replica column across seeds, label corruption only, with intervals."""
  labels = replicas[replicas["kind"] == "labels"].copy()
  if value == "test_error":
    labels["test_error"] = 1 - labels["final_test_acc"]
  return fit_time.summarize(labels, value, by=("dataset", *SETUP_COLUMNS, "corruption"),
                            n_boot=n_boot)


def fit_summary(slowdowns: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
  """Per (setup, condition): fit epochs and slowdown, means with intervals and censoring.

  A setup is one hyper-parameter combination; its `learning_rate`, `weight_decay`,
  `augmentation` and `hparams` columns are carried.
  """
  by = tuple(c for c in fit_time.SUMMARY_BY if c in slowdowns.columns)
  ep = fit_time.summarize(slowdowns, "time_epoch", "censored", by=by, n_boot=n_boot)
  sd = fit_time.summarize(slowdowns, "slowdown", "slowdown_censored", by=by, n_boot=n_boot)
  out = sort_conditions(ep.merge(sd, on=list(by), suffixes=("_epoch", "_slowdown")))
  return out.drop(columns=["n_slowdown", "n_censored_slowdown"]).rename(
      columns={"n_epoch": "n", "n_censored_epoch": "n_censored"})


def table1(runs: Runs, fits: pd.DataFrame | None = None) -> pd.DataFrame:
  """Table-1-style rows: one per (setup, condition), averaged over seeds, beside the paper.

  A setup is one hyper-parameter combination, so a grid over learning rates and weight
  decays gives one row per combination and condition. Columns: model, dataset, setup,
  base_setup, hparams, learning_rate, weight_decay, augmentation, parameters, regularizers,
  condition, n, train_acc, test_acc (means over seeds), n_fitted, status, paper_train_acc,
  paper_test_acc (NaN where the paper has no matching experiment).
  """
  configs = {r.name: r.config for r in runs.runs}
  rows = []
  r = runs.replicas
  for (setup, kind, p), g in r.groupby(["setup", "kind", "corruption"], sort=True):
    first = g.iloc[0]
    row = dict(model=first.model, dataset=first.dataset, setup=setup,
               base_setup=first.base_setup, hparams=first.hparams,
               **{h: first[h] for h in HPARAMS},
               parameters=first.num_params, regularizers=first.regularizers,
               condition=first.condition, kind=kind, corruption=p, n=len(g),
               train_acc=g.final_train_acc.mean(), test_acc=g.final_test_acc.mean(),
               test_acc_std=g.final_test_acc.std(ddof=1) if len(g) > 1 else np.nan,
               status=", ".join(sorted(g.status.unique())))
    match = paper.table1_match(first.model, first.dataset, first.condition,
                               {**configs[first.run], **{h: first[h] for h in HPARAMS}})
    row["paper_train_acc"] = match["train_acc"] if match else np.nan
    row["paper_test_acc"] = match["test_acc"] if match else np.nan
    if fits is not None:
      f = fits[(fits.setup == setup) & (fits.kind == kind) & (fits.corruption == p)]
      row["n_fitted"] = int((~f.censored).sum())
    rows.append(row)
  out = pd.DataFrame(rows)
  return sort_conditions(out)


def sort_conditions(table: pd.DataFrame) -> pd.DataFrame:
  """Sorts by setup (hyper-parameters numerically), then true labels, corruption, random
  labels, pixel randomizations."""
  key = [condition_order(k, p) for k, p in zip(table.kind, table.corruption)]
  return table.assign(_o=key).sort_values([*setup_sort_columns(table), "_o"]).drop(
      columns="_o").reset_index(drop=True)


def compare(fit_summary: pd.DataFrame, value: str = "slowdown", digits: int = 2
            ) -> pd.DataFrame:
  """Setups side by side: one row per condition, one column per setup.

  Cells read `mean [lo, hi]`, with `≥` where censored replicas make the mean a lower bound.
  `value` is `slowdown` or `epoch` (columns of `fit_summary`).
  """
  s = sort_conditions(fit_summary)
  cells = []
  for _, r in s.iterrows():
    mean, lo, hi = r[f"mean_{value}"], r[f"ci_lo_{value}"], r[f"ci_hi_{value}"]
    text = "–" if not np.isfinite(mean) else (
        ("≥ " if r[f"lower_bound_{value}"] else "") + f"{mean:.{digits}f}")
    if np.isfinite(mean) and np.isfinite(lo):
      text += f" [{lo:.{digits}f}, " + (f"{hi:.{digits}f}]" if np.isfinite(hi) else "∞]")
    cells.append(text)
  s = s.assign(cell=cells, condition=[condition_name(k, p) for k, p in zip(s.kind,
                                                                            s.corruption)])
  order = list(dict.fromkeys(s.condition))
  setups = list(dict.fromkeys(s.sort_values(setup_sort_columns(s), kind="stable").setup))
  out = s.pivot(index="condition", columns="setup", values="cell").reindex(
      index=order, columns=setups)
  out.columns.name = f"{value} (mean [95% CI])"
  return out
