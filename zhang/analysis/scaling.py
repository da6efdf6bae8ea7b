"""Scaling laws of time to fit against label corruption p, with censored replicas.

Forms (t0 = fitted time on true labels, b = growth rate):
  linear:       t(p) = t0 * (1 + b p)       slowdown at p = 1 is 1 + b
  exponential:  t(p) = t0 * exp(b p)        slowdown at p = 1 is exp(b)

Noise is multiplicative (Gaussian in log t with constant sigma), the natural model for times
that vary by factors. A replica that never fitted contributes the probability that its time
exceeds the steps it ran (a Tobit likelihood), so censored replicas pull the fit up instead of
being dropped. Both forms have three parameters and the same likelihood, so AIC compares them.
Intervals are percentile bootstraps over replicas. (Nelder-Mead, not L-BFGS-B: three
parameters, and L-BFGS-B's BLAS threads made it 10x slower on a 2-core machine.)

Only finished replicas enter a fit: fitted ones, and censored ones of complete runs. A replica
still training in a run in progress is left out: its bound is not final. A law needs fitted
replicas at MIN_LEVELS corruption levels, and Fig. 1b draws it only where R² >= MIN_R2.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import optimize, special

from zhang.analysis.load import SETUP_COLUMNS, setup_sort_columns

FORMS = {
    "linear": ("t0 * (1 + b*p)", lambda p, t0, b: t0 * (1 + b * p), lambda b: 1 + b,
               (-0.999, 1e4)),
    "exponential": ("t0 * exp(b*p)", lambda p, t0, b: t0 * np.exp(b * p), np.exp,
                    (-30.0, 30.0)),
}
# Every row of `fit_scaling`, fitted or not, has these columns (NaN where undefined).
COLUMNS = ("dataset", *SETUP_COLUMNS, "time", "form", "formula", "n", "n_censored", "t0",
           "t0_lo", "t0_hi", "b", "b_lo", "b_hi", "slowdown_p1", "slowdown_p1_lo",
           "slowdown_p1_hi", "sigma", "loglik", "aic", "delta_aic", "r2", "rmse", "n_boot",
           "reason")
# Three parameters pass exactly through two levels' means, whatever the shape: a law is
# fitted only when fitted replicas cover at least three corruption levels.
MIN_LEVELS = 3
# R² (of the law against the mean fitted time at each level) below which Fig. 1b does not draw
# a law. R² compares the law with a flat line at the overall mean: below 0 the law is worse than
# that line, and below 0.5 the misfit is larger than the trend it explains, so its curve would
# show a shape the points do not have (both forms score R² < 0 on the digits MLP shape, which
# peaks at p = 0.2).
MIN_R2 = 0.5
_LOG_SIGMA_BOUNDS = (np.log(1e-4), np.log(100.0))
_HALF_LOG_2PI = 0.5 * np.log(2 * np.pi)


@dataclasses.dataclass
class _Fit:
  t0: float
  b: float
  sigma: float
  loglik: float


def _nll(theta, form, p, log_t, cens):
  log_t0, b, log_sigma = theta
  mean = FORMS[form][1](p, np.exp(log_t0), b)
  if np.any(mean <= 0):
    return 1e12
  z = (log_t - np.log(mean)) / np.exp(log_sigma)
  obs = z[~cens]
  ll = -0.5 * np.sum(obs * obs) - len(obs) * (log_sigma + _HALF_LOG_2PI)
  if cens.any():
    ll += np.sum(special.log_ndtr(-z[cens]))  # log P(T > bound)
  return -float(ll)


def _initial(form, p, t, cens):
  """Least squares on the fitted replicas, as a starting point."""
  obs = ~cens if (~cens).sum() >= 2 and len(np.unique(p[~cens])) >= 2 else np.ones_like(cens)
  if form == "linear":
    slope, icpt = np.polyfit(p[obs], t[obs], 1)
    t0 = max(icpt, 1e-3 * t.max())
    b = float(np.clip(slope / t0, -0.99, 1e3))
    resid = np.log(t[obs]) - np.log(np.maximum(t0 * (1 + b * p[obs]), 1e-12))
  else:
    b, log_t0 = np.polyfit(p[obs], np.log(t[obs]), 1)
    t0 = np.exp(log_t0)
    resid = np.log(t[obs]) - (log_t0 + b * p[obs])
  sigma = max(float(np.std(resid)), 1e-3)
  return np.array([np.log(t0), float(b), np.log(sigma)])


def _unfittable(p, cens) -> str | None:
  """Why no law can be fitted to these replicas, or None if one can."""
  if len(p) == 0:
    return "no label-corruption replica"
  if len(np.unique(p)) < 2:
    return f"only one corruption level (p = {np.unique(p)[0]:g})"
  if not (~cens).any():
    return "no replica has fitted yet: all are censored"
  return None


def _fit_one(form, p, t, cens, start=None, tol=1e-7) -> _Fit | None:
  if _unfittable(p, cens) is not None:
    return None
  x0 = _initial(form, p, t, cens) if start is None else start
  log_t = np.log(t)
  bounds = [(log_t.min() - 10, log_t.max() + 10), FORMS[form][3], _LOG_SIGMA_BOUNDS]
  x0 = np.array([np.clip(v, lo, hi) for v, (lo, hi) in zip(x0, bounds)])
  with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
    res = optimize.minimize(_nll, x0, args=(form, p, log_t, cens), method="Nelder-Mead",
                            bounds=bounds, options=dict(xatol=tol, fatol=tol, maxiter=4000))
  log_t0, b, log_sigma = res.x
  return _Fit(t0=float(np.exp(log_t0)), b=float(b), sigma=float(np.exp(log_sigma)),
              loglik=-float(res.fun))


def fit_form(p, t, censored, form: str, n_boot: int = 200, level: float = 0.95,
             seed: int = 0) -> dict:
  """Fits one form to times `t` at corruptions `p`; `censored` marks lower bounds.

  Returns a dict with every column of `COLUMNS` but dataset, the setup columns, time and
  delta_aic: NaN parameters and a `reason` when no law can be fitted, `reason=None` otherwise.
  """
  p, t = np.asarray(p, float), np.asarray(t, float)
  cens = np.asarray(censored, bool)
  formula, f, slowdown_at_1, _ = FORMS[form]
  row = dict(form=form, formula=f"t(p) = {formula}", n=len(p), n_censored=int(cens.sum()))
  row |= {c: np.nan for c in COLUMNS if c not in row and c not in (
      "dataset", *SETUP_COLUMNS, "time", "delta_aic", "reason")}
  row["n_boot"] = 0
  row["reason"] = _unfittable(p, cens)
  levels = np.unique(p[~cens])
  if row["reason"] is None and len(levels) < MIN_LEVELS:
    row["reason"] = (f"fitted replicas at only {len(levels)} corruption levels (p = "
                     f"{', '.join(f'{x:g}' for x in levels)}); a law needs {MIN_LEVELS}")
  if row["reason"] is not None:
    return row
  fit = _fit_one(form, p, t, cens)
  pred = f(p, fit.t0, fit.b)
  obs = ~cens
  # R² on the mean fitted time per corruption level, weighted by replicas: scatter between
  # seeds, which no law of p can explain, does not count against the law.
  levels, idx, counts = np.unique(p[obs], return_inverse=True, return_counts=True)
  means = np.bincount(idx, weights=t[obs]) / counts
  ss_tot = np.sum(counts * (means - t[obs].mean()) ** 2)
  ss_res = np.sum(counts * (means - f(levels, fit.t0, fit.b)) ** 2)
  r2 = 1 - ss_res / ss_tot if ss_tot > 0 else np.nan
  row |= dict(t0=fit.t0, b=fit.b, slowdown_p1=float(slowdown_at_1(fit.b)), sigma=fit.sigma,
              loglik=fit.loglik, aic=6 - 2 * fit.loglik, r2=float(r2),
              rmse=float(np.sqrt(np.mean((t[obs] - pred[obs]) ** 2))))
  rng = np.random.default_rng(seed)
  start = np.array([np.log(fit.t0), fit.b, np.log(max(fit.sigma, 1e-3))])
  boots = []
  for _ in range(n_boot):
    idx = rng.integers(0, len(p), len(p))
    bf = _fit_one(form, p[idx], t[idx], cens[idx], start=start.copy(), tol=1e-4)
    if bf is not None:
      boots.append((bf.t0, bf.b, slowdown_at_1(bf.b)))
  row["n_boot"] = len(boots)
  alpha = (1 - level) / 2
  for i, name in enumerate(("t0", "b", "slowdown_p1")):
    if len(boots) >= 10:
      vals = np.array(boots)[:, i]
      row[f"{name}_lo"], row[f"{name}_hi"] = np.quantile(vals, [alpha, 1 - alpha])
    else:
      row[f"{name}_lo"] = row[f"{name}_hi"] = np.nan
  return row


def finished(fits: pd.DataFrame) -> pd.Series:
  """Replicas whose time to fit is final: fitted, or censored in a complete run."""
  if "status" not in fits:
    return pd.Series(True, index=fits.index)
  return ~fits["censored"] | (fits["status"] == "complete")


def fit_scaling(fits: pd.DataFrame, time: str = "time_epoch",
                forms: tuple[str, ...] = ("linear", "exponential"), n_boot: int = 200,
                seed: int = 0) -> pd.DataFrame:
  """Fits each form per setup (one hyper-parameter combination) to the finished
  label-corruption replicas of `fits` (see `finished`).

  Args:
    fits: from `fit_time.time_to_fit` (censored replicas have their lower bound in `time`).
    time: `time_epoch` or `time_step`.

  Returns:
    One row per (setup, form) with the columns of `COLUMNS`, whether or not a law could be
    fitted: parameters with bootstrap intervals (`t0`, `b`, `slowdown_p1`, each with
    `_lo`/`_hi`), `sigma`, `loglik`, `aic`, `rmse` on the fitted replicas, `r2` on their
    mean per corruption level (weighted by replicas),
    `delta_aic` (to the best form of the setup; 0 for the best), and `reason`: None when
    fitted, else why not (the numbers are then NaN). No label-corruption replica at all gives
    an empty frame with these columns.
  """
  rows = []
  labels = fits[fits["kind"] == "labels"]
  for (dataset, _), group in labels.groupby(["dataset", "setup"], sort=True):
    ids = {c: group[c].iloc[0] if c in group else np.nan for c in SETUP_COLUMNS}
    done = group[finished(group)]
    for form in forms:
      row = fit_form(done["corruption"], done[time], done["censored"], form,
                     n_boot=n_boot, seed=seed)
      if done.empty:  # every replica is still training
        row["reason"] = _unfittable(group["corruption"].to_numpy(float),
                                    group["censored"].to_numpy(bool))
      elif row["reason"] is not None and len(done) < len(group):
        row["reason"] += f"; {len(group) - len(done)} replicas still training are left out"
      rows.append(dict(dataset=dataset, **ids, time=time) | row)
  out = pd.DataFrame(rows, columns=list(COLUMNS))
  if out.empty:
    return out
  for c in COLUMNS:
    if c not in ("dataset", *SETUP_COLUMNS, "time", "form", "formula", "reason"):
      out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
  out["delta_aic"] = out["aic"] - out.groupby("setup")["aic"].transform("min")
  # Hyper-parameters in numeric order; stable, so the forms keep their order.
  return out.sort_values(["dataset", *setup_sort_columns(out)], kind="stable",
                         ignore_index=True)


def verdict(scaling: pd.DataFrame, setup: str) -> str:
  """One sentence on which form fits `setup` better, and how well."""
  rows = scaling[scaling["setup"] == setup]
  s = rows[rows["aic"].notna()].sort_values("aic")
  if s.empty:
    reasons = rows["reason"].dropna().unique() if "reason" in rows else []
    why = "; ".join(reasons) if len(reasons) else "too few corruption levels"
    return f"{setup}: no scaling law could be fitted ({why})."
  best = s.iloc[0]
  msg = f"{setup}: the {best.form} form fits better"
  if len(s) > 1:
    gap = s.iloc[1].aic - best.aic
    if gap < 2:
      msg = (f"{setup}: the data do not distinguish the forms (AIC differs by {gap:.1f} < 2; "
             f"{best.form} is marginally lower)")
    else:
      msg += f" (AIC lower by {gap:.1f})"
  r2 = s["r2"].max()
  if np.isfinite(r2) and r2 < MIN_R2:
    msg += f"; neither describes the data well (best R² = {r2:.2f})"
  elif np.isfinite(best.r2):
    msg += f"; R² = {best.r2:.2f}"
  return msg + "."


def not_drawn(scaling: pd.DataFrame, setup: str) -> str | None:
  """Why Fig. 1b draws no law for `setup`, or None when it draws the form with lower AIC:
  that needs a fitted law with R² >= MIN_R2."""
  rows = scaling[scaling["setup"] == setup]
  s = rows[rows["aic"].notna()].sort_values("aic")
  if s.empty:
    reasons = rows["reason"].dropna().unique() if "reason" in rows else []
    return f"no law was fitted: {'; '.join(reasons) or 'no label-corruption replica'}"
  best = s.iloc[0]
  if not np.isfinite(best.r2):
    return (f"the {best.form} law's R² is undefined (the fitted replicas take the same "
            f"time at every corruption level)")
  if best.r2 < MIN_R2:
    return (f"the {best.form} law does not describe these points (R² = {best.r2:.2f} < "
            f"{MIN_R2:g})")
  return None
