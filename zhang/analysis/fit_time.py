"""Time to fit the training set, recomputed from the curves, and slowdown vs true labels.

A replica that never reached the threshold is *censored*: all we know is that its time to fit
exceeds the last evaluated step. Censored replicas stay in every table with `censored=True`
and their time set to that lower bound, so a mean over them is a lower bound too.
Fit times are only as fine as the evaluation interval (`eval_every`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from zhang.analysis.load import SETUP_COLUMNS
from zhang.errors import UsageError

_ID = ["run", "replica", "dataset", "model", *SETUP_COLUMNS, "kind", "corruption", "seed",
       "condition", "status"]
# Default grouping of `summarize`: one group per setup (a hyper-parameter combination) and
# randomization; the setup columns besides `setup` are carried, not split on.
SUMMARY_BY = ("dataset", *SETUP_COLUMNS, "kind", "corruption")


def time_to_fit(metrics: pd.DataFrame, threshold: float | None = 1.0,
                loss_below: float | None = None, metric: str = "train_acc") -> pd.DataFrame:
  """First evaluation at which each replica fits its training set.

  Args:
    metrics: `Runs.metrics`.
    threshold: fitted when `metric >= threshold` (1.0 = 100% train accuracy, 0.999 = 99.9%).
    loss_below: if given, fitted when `train_loss <= loss_below` instead.
    metric: the accuracy column `threshold` applies to.

  Returns:
    One row per replica: identity columns (with the run's `status` when `metrics` has it),
    `fit_step`, `fit_epoch` (NaN when censored), `censored`, `steps_run`, `epochs_run` (last
    evaluation), and `time_step`/`time_epoch`: the fit time, or the lower bound
    `steps_run`/`epochs_run` when censored.
  """
  if loss_below is not None:
    hit = metrics["train_loss"] <= loss_below
    criterion = f"train_loss <= {loss_below:g}"
  else:
    if threshold is None or not 0 < threshold <= 1:
      raise UsageError(f"fit threshold must be in (0, 1], got {threshold}")
    # Accuracies are fractions of a finite set; the tolerance absorbs float32 rounding.
    hit = metrics[metric] >= threshold - 1e-6
    criterion = f"{metric} >= {threshold:g}"
  m = metrics.assign(_hit=hit.fillna(False).astype(bool))  # NaN (diverged) never fits
  ids = [c for c in _ID if c in m.columns]
  last = m.sort_values("step").groupby(["run", "replica"]).last()
  out = last[[c for c in ids if c not in ("run", "replica")]].copy()
  out["steps_run"] = last["step"].astype(int)
  out["epochs_run"] = last["epoch"].astype(float)
  first = m[m._hit].sort_values("step").groupby(["run", "replica"]).first()
  out["fit_step"] = first["step"].reindex(out.index)
  out["fit_epoch"] = first["epoch"].reindex(out.index)
  out["censored"] = out["fit_step"].isna()
  out["time_step"] = out["fit_step"].fillna(out["steps_run"])
  out["time_epoch"] = out["fit_epoch"].fillna(out["epochs_run"])
  out["criterion"] = criterion
  return out.reset_index()


def _is_baseline(fits: pd.DataFrame) -> pd.Series:
  return (fits["kind"] == "labels") & (fits["corruption"] == 0)


def slowdown(fits: pd.DataFrame) -> pd.DataFrame:
  """Time to fit of each replica relative to the true-label replicas of the same setup.

  A setup includes the hyper-parameter combination (learning rate, weight decay,
  augmentation), so each combination is compared with its own true-label replicas. The
  baseline for a replica with seed s is the mean fit step of the true-label replicas of its
  setup with seed s (`paired=True`), or of all of them when none has seed s. A censored
  replica gets a lower bound (`slowdown_censored=True`); a censored baseline makes the ratio
  undefined (NaN, `baseline_censored=True`).

  Returns:
    `fits` with `baseline_step`, `paired`, `baseline_censored`, `slowdown`,
    `slowdown_censored` added.
  """
  out = []
  for _, group in fits.groupby("setup", sort=False):
    base = group[_is_baseline(group)]
    group = group.copy()
    if base.empty:
      group["baseline_step"] = np.nan
      group["paired"] = False
      group["baseline_censored"] = False
    else:
      by_seed = base.groupby("seed").agg(step=("time_step", "mean"), cens=("censored", "any"))
      all_step, all_cens = base["time_step"].mean(), bool(base["censored"].any())
      paired = group["seed"].isin(by_seed.index)
      group["paired"] = paired
      group["baseline_step"] = np.where(
          paired, group["seed"].map(by_seed["step"]), all_step)
      group["baseline_censored"] = np.where(
          paired, group["seed"].map(by_seed["cens"]).fillna(False), all_cens).astype(bool)
    ratio = group["time_step"] / group["baseline_step"]
    group["slowdown"] = ratio.where(~group["baseline_censored"])
    group["slowdown_censored"] = group["censored"] & group["slowdown"].notna()
    out.append(group)
  if out:
    return pd.concat(out, ignore_index=True)
  return fits.assign(baseline_step=np.nan, paired=False, baseline_censored=False,
                     slowdown=np.nan, slowdown_censored=False)


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean; NaN for fewer than two values."""
  values = np.asarray(values, dtype=float)
  if len(values) < 2:
    return np.nan, np.nan
  rng = np.random.default_rng(seed)
  means = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(axis=1)
  alpha = (1 - level) / 2
  return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(table: pd.DataFrame, value: str, censored: str | None = None,
              by: tuple[str, ...] = SUMMARY_BY, n_boot: int = 2000,
              level: float = 0.95) -> pd.DataFrame:
  """Mean of `value` across seeds per group, with a bootstrap interval.

  When `censored` names a boolean column and a group has censored rows, their values are
  lower bounds: the mean and the low end of the interval are lower bounds
  (`lower_bound=True`) and the high end is +inf. An empty `table` gives an empty frame with
  the same columns. Columns of `by` that `table` lacks are skipped.
  """
  by = tuple(c for c in by if c in table.columns)
  columns = [*by, "n", "n_censored", "mean", "std", "ci_lo", "ci_hi", "lower_bound"]
  rows = []
  # dropna=False: a run without a recorded learning rate (NaN) still forms its group.
  for key, group in table.groupby(list(by), sort=True, dropna=False):
    vals = group[value].dropna().to_numpy(float)
    n_cens = int(group[censored].sum()) if censored else 0
    lo, hi = bootstrap_mean_ci(vals, n_boot=n_boot, level=level)
    if n_cens:
      hi = np.inf
    rows.append(dict(zip(by, key), n=len(vals), n_censored=n_cens,
                     mean=vals.mean() if len(vals) else np.nan,
                     std=vals.std(ddof=1) if len(vals) > 1 else np.nan,
                     ci_lo=lo, ci_hi=hi, lower_bound=n_cens > 0))
  return pd.DataFrame(rows, columns=columns)


def non_monotonic(summary: pd.DataFrame, min_ratio: float = 1.1) -> pd.DataFrame:
  """Pairs p_i < p_j whose mean time at p_i exceeds that at p_j by at least `min_ratio`.

  A censored p_i still counts (its mean is a lower bound, so the ratio is too); a censored
  p_j does not (its ratio would be an upper bound). Expects one row per corruption, as from
  `summarize(..., by=(..., 'corruption'))` restricted to one setup.
  """
  s = summary.sort_values("corruption").reset_index(drop=True)
  rows = []
  for i in range(len(s)):
    for j in range(i + 1, len(s)):
      if s.lower_bound[j] or not s["mean"][j] > 0:
        continue
      ratio = s["mean"][i] / s["mean"][j]
      if ratio >= min_ratio:
        rows.append(dict(p_low=s.corruption[i], p_high=s.corruption[j], ratio=ratio,
                         lower_bound=bool(s.lower_bound[i])))
  return pd.DataFrame(rows, columns=["p_low", "p_high", "ratio", "lower_bound"])
