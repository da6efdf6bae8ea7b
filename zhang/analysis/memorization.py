"""When each training example is fitted: ``fit_times.npz`` of a run, clean against noisy.

``fit_times.npz`` (written by ``zhang train``) holds, per replica and training example, the
first evaluation step from which the example stayed classified as its (possibly corrupted)
label through the last evaluation (-1: not at the last), and whether the corruption changed
its label. Arpit et al. (2017) found that networks fit the clean examples (patterns) before
the corrupted ones (noise); these tables and the plot show whether ours do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from etils import epath

from zhang.analysis.load import Runs, condition_order
from zhang.errors import UsageError
from zhang.formatting import md_table as _table
from zhang.formatting import pct as _pct

FILE = "fit_times.npz"
LAST_SHARE = 0.1  # "fitted last": the latest-fitted 10% of a replica's fitted examples


def load(run_path: str | epath.Path) -> dict[str, np.ndarray] | None:
  """``{"fit_step": (R, n) int32, "noisy": (R, n) bool, "step": int}`` of a run, or None
  for a run written before per-example fit times were recorded."""
  path = epath.Path(run_path) / FILE
  if not path.exists():
    return None
  import io
  try:
    with np.load(io.BytesIO(path.read_bytes())) as f:
      return {"fit_step": f["fit_step"], "noisy": f["noisy"], "step": int(f["step"])}
  except (OSError, ValueError, KeyError) as e:
    raise UsageError(f"{path} is damaged ({type(e).__name__}); rerun the same zhang train "
                     f"command to rewrite it from the checkpoint") from None


def _loaded(runs: Runs):
  """(run, its fit times) for every run that has them."""
  for run in runs.runs:
    ft = load(run.path)
    if ft is not None:
      yield run, ft


def has_fit_times(runs: Runs) -> bool:
  return any((epath.Path(r.path) / FILE).exists() for r in runs.runs)


def per_replica(runs: Runs) -> pd.DataFrame:
  """One row per replica of every run with fit times: its identity (run, model, setup,
  condition, kind, corruption, seed), `n_clean`, `n_noisy`, the share of each fitted
  (`clean_fitted`, `noisy_fitted`), their median fit steps among the fitted
  (`clean_median_step`, `noisy_median_step`), and `noisy_share_last`: the share of noisy
  examples among the latest-fitted `LAST_SHARE` of its fitted examples (against `label_noise`,
  their share overall: above it, noise is fitted last)."""
  rows = []
  keep = ["run", "model", "setup", "condition", "kind", "corruption", "seed", "replica"]
  table = runs.replicas
  for run, ft in _loaded(runs):
    for _, rep in table[table.run == run.name].iterrows():
      i = int(rep.replica)
      fit, noisy = ft["fit_step"][i], ft["noisy"][i]
      fitted = fit >= 0
      row = {k: rep[k] for k in keep}
      row.update(n_clean=int((~noisy).sum()), n_noisy=int(noisy.sum()),
                 label_noise=float(noisy.mean()), last_step=ft["step"])
      for name, mask in (("clean", ~noisy), ("noisy", noisy)):
        sel = fit[mask & fitted]
        row[f"{name}_fitted"] = float(fitted[mask].mean()) if mask.any() else np.nan
        row[f"{name}_median_step"] = float(np.median(sel)) if len(sel) else np.nan
      row["noisy_share_last"] = _noisy_share_last(fit, noisy)
      rows.append(row)
  out = pd.DataFrame(rows)
  if out.empty:
    return out
  order = [condition_order(k, p) for k, p in zip(out.kind, out.corruption)]
  return out.assign(_o=order).sort_values(["setup", "_o", "seed"]).drop(
      columns="_o").reset_index(drop=True)


def _noisy_share_last(fit: np.ndarray, noisy: np.ndarray) -> float:
  fitted = np.flatnonzero(fit >= 0)
  if len(fitted) == 0 or not noisy.any():
    return np.nan
  k = max(1, int(round(LAST_SHARE * len(fitted))))
  last = fitted[np.argsort(fit[fitted], kind="stable")[-k:]]
  return float(noisy[last].mean())


def last_fitted_examples(runs: Runs, top: int = 10) -> pd.DataFrame:
  """The training examples that true-label replicas fit last: per setup, the `top` example
  indices with the latest median fit step across seeds (never fitted counts as after the
  last evaluation), with their median step and how many seeds had not fitted them."""
  rows = []
  table = runs.replicas
  for run, ft in _loaded(runs):
    t = table[(table.run == run.name) & (table.kind == "labels") & (table.corruption == 0)]
    for setup, g in t.groupby("setup"):
      fit = ft["fit_step"][g.replica.astype(int).to_numpy()].astype(np.float64)
      never = fit < 0
      fit[never] = ft["step"] + 1  # after the last evaluation
      median = np.median(fit, axis=0)
      for idx in np.argsort(-median, kind="stable")[:top]:
        rows.append(dict(setup=setup, example=int(idx), median_fit_step=float(median[idx]),
                         seeds=len(g), not_fitted=int(never[:, idx].sum()),
                         last_step=ft["step"]))
  return pd.DataFrame(rows, columns=["setup", "example", "median_fit_step", "seeds",
                                     "not_fitted", "last_step"])


def curves(runs: Runs) -> pd.DataFrame:
  """Share of clean and of noisy examples fitted (stably, through the last evaluation) by
  each evaluation step, per run and label-corruption replica: run, setup, corruption,
  replica, seed, step, clean, noisy (NaN without such examples)."""
  rows = []
  table = runs.replicas
  for run, ft in _loaded(runs):
    steps = np.unique(run.metrics.step)
    for _, rep in table[(table.run == run.name) & (table.kind == "labels")].iterrows():
      i = int(rep.replica)
      fit, noisy = ft["fit_step"][i], ft["noisy"][i]
      for s in steps:
        by = (fit >= 0) & (fit <= s)
        rows.append(dict(run=run.name, setup=rep.setup, corruption=rep.corruption,
                         replica=i, seed=rep.seed, step=int(s),
                         clean=float(by[~noisy].mean()) if (~noisy).any() else np.nan,
                         noisy=float(by[noisy].mean()) if noisy.any() else np.nan))
  return pd.DataFrame(rows)


def _steps(x) -> str:
  return "–" if x is None or not np.isfinite(x) else f"{x:,.0f}"


def report_lines(runs: Runs) -> list[str]:
  """The report's section on per-example fit times (empty without fit_times.npz)."""
  t = per_replica(runs)
  if t.empty:
    return []
  labels = t[t.kind == "labels"]
  rows = []
  for (setup, condition), g in labels.groupby(["setup", "condition"], sort=False):
    rows.append([setup, condition, len(g), _pct(g.label_noise.mean()),
                 _pct(g.clean_fitted.mean()), _steps(g.clean_median_step.mean()),
                 _pct(g.noisy_fitted.mean()), _steps(g.noisy_median_step.mean()),
                 _pct(g.noisy_share_last.mean())])
  out = ["## When each example is fitted", "",
         "From `fit_times.npz`: for each training example, the first evaluation from which "
         "it stayed classified as its (possibly corrupted) label through the last one. "
         "Means over seeds of each replica's share fitted and median fit step, for the "
         "examples whose label the corruption kept (clean) and changed (noisy). *noisy among "
         f"last {100 * LAST_SHARE:.0f}%*: the share of noisy examples among the latest-fitted "
         f"{100 * LAST_SHARE:.0f}% of the fitted ones; above the label noise, the noise is "
         "fitted last (Arpit et al. 2017: patterns before noise).", "",
         *_table(["setup", "labels", "replicas", "label noise (%)", "clean fitted (%)",
                  "clean median step", "noisy fitted (%)", "noisy median step",
                  f"noisy among last {100 * LAST_SHARE:.0f}% (%)"], rows), ""]
  mixed = labels[(labels.corruption > 0) & (labels.corruption < 1)
                 & labels.noisy_median_step.notna() & labels.clean_median_step.notna()]
  if len(mixed):
    later = int((mixed.noisy_median_step > mixed.clean_median_step).sum())
    out += [f"In {later} of {len(mixed)} partly corrupted replicas the noisy examples' median "
            f"fit step is later than the clean ones'; the noisy share of the last-fitted "
            f"examples is {_pct(mixed.noisy_share_last.mean())}% against a label noise of "
            f"{_pct(mixed.label_noise.mean())}%.", ""]
  last = last_fitted_examples(runs)
  if len(last):
    out += ["Fitted last with true labels (training-set indices, latest median fit step "
            "across seeds; *not fitted*: seeds that had not fitted it at the last evaluation):",
            ""]
    rows = [[x.setup, x.example, _steps(x.median_fit_step) if x.median_fit_step <= x.last_step
             else "not fitted", f"{x.not_fitted}/{x.seeds}"] for _, x in last.iterrows()]
    out += _table(["setup", "example", "median fit step", "not fitted"], rows) + [""]
  return out
