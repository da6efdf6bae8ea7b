"""Section 3 of the paper from a run's files: regularizers on and off, and early stopping.

- `effects`: for each model and regularizer (weight decay, an augmentation, dropout, batch
  norm), the test accuracy of replicas with it and of their twins without it (same seed,
  labels and other regularizers), the difference, and the paper's difference where it has
  one (Table 2's for ImageNet, else Table 1's).
- `random_label_fits`: whether random labels are still fitted with each regularizer on.
- `early_stopping`: per replica, the best test accuracy any evaluation saw and its step,
  against the test accuracy when the replica fitted and at the end.
- `table1_markdown`: `table1.md`, all of it beside the paper's numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from zhang.analysis import paper
from zhang.analysis.load import Runs, condition_order
from zhang.formatting import md_table as _table
from zhang.formatting import pct

# A batch-norm model and its twin without: batch norm is a regularizer of the pair.
BATCH_NORM_PAIRS = {"inception_small": "inception_small_nobn"}
_KEY = ("kind", "corruption", "seed", "learning_rate")


# The explicit regularizers a replica sets, and their values when off. Runs from before
# dropout read it as 0.0 (load.py), so their pairs are as before.
AXES = {"weight_decay": 0.0, "augmentation": "none", "dropout": 0.0}


def _regularizer_name(axis: str, value) -> str:
  if axis == "weight_decay":
    return f"weight decay {value:g}"
  if axis == "augmentation":
    return f"augmentation {value}"
  if axis == "dropout":
    return f"dropout {value:g}"
  return "batch norm"


def _others(axis: str, row, dropout: bool = False) -> str:
  """The other regularizers the twins share, in words; dropout only where the model's
  replicas have any (`dropout`)."""
  parts = []
  if axis != "augmentation":
    parts.append("no augmentation" if row.augmentation == "none"
                 else f"augmentation {row.augmentation}")
  if axis != "weight_decay":
    parts.append("no weight decay" if row.weight_decay == 0
                 else f"weight decay {row.weight_decay:g}")
  if axis != "dropout" and dropout:
    parts.append("no dropout" if row.dropout == 0 else f"dropout {row.dropout:g}")
  return ", ".join(parts)


def _paper_diff(model: str, dataset: str, condition: str, on: dict, off: dict,
                off_model: str | None = None):
  """The paper's (on, off) top-1 test accuracies for twins differing in one regularizer:
  its Table 2 pairs for ImageNet, else its Table 1 (CIFAR-10) pairs, which compare the
  effect, not the accuracy."""
  if paper.is_imagenet(dataset):
    a = paper.table2_match(model, dataset, condition, on)
    b = paper.table2_match(off_model or model, dataset, condition, off)
  else:
    a = paper.table1_match(model, "cifar10", condition, on)
    b = paper.table1_match(off_model or model, "cifar10", condition, off)
  if a is None or b is None:
    return np.nan, np.nan
  return a.get("test_acc", np.nan), b.get("test_acc", np.nan)


def effects(runs: Runs) -> pd.DataFrame:
  """Test accuracy with each regularizer on and off, twin replicas paired by seed.

  One row per (model, regularizer, the other regularizers, labels): `model`, `regularizer`,
  `with` (what the twins share), `condition`, `n` (pairs), `test_on`, `test_off`, `diff`
  (mean of paired differences), `diff_min`, `diff_max`, `train_on`, `train_off`,
  `paper_on`, `paper_off`, `paper_diff` (NaN where the paper has no such pair).
  """
  r = runs.replicas
  rows = []
  for axis in AXES:
    for (model, dataset), g in r.groupby(["model", "dataset"]):
      rows += _axis_rows(axis, model, dataset, g)
  for bn, nobn in BATCH_NORM_PAIRS.items():
    rows += _batch_norm_rows(bn, nobn, r[r.model == bn], r[r.model == nobn])
  columns = ["model", "regularizer", "with", "condition", "kind", "corruption", "n",
             "test_on", "test_off", "diff", "diff_min", "diff_max", "train_on", "train_off",
             "paper_on", "paper_off", "paper_diff"]
  out = pd.DataFrame(rows, columns=columns)
  if out.empty:
    return out
  order = [condition_order(k, p) for k, p in zip(out.kind, out.corruption)]
  return out.assign(_o=order).sort_values(["model", "regularizer", "_o", "with"]).drop(
      columns="_o").reset_index(drop=True)


def _axis_rows(axis: str, model: str, dataset: str, g: pd.DataFrame) -> list[dict]:
  """`effects`' rows of one model for one regularizer axis: its replicas with each value
  of `axis` against their twins with it off."""
  others = [a for a in AXES if a != axis]
  keyed = g.set_index([*_KEY, *others])
  off = keyed[keyed[axis] == AXES[axis]]
  dropout = bool((g.dropout != 0).any())
  rows = []
  for value in sorted(set(g[axis]) - {AXES[axis]}):
    on = keyed[keyed[axis] == value]
    both = on.merge(off, left_index=True, right_index=True, suffixes=("_on", "_off"))
    for (kind, p, *shared), pairs in both.reset_index().groupby(["kind", "corruption",
                                                                  *others]):
      config = dict(zip(others, shared))
      condition = pairs.iloc[0].condition_on
      p_on, p_off = _paper_diff(model, dataset, condition, {axis: value, **config},
                                {axis: AXES[axis], **config})
      rows.append(_row(model, _regularizer_name(axis, value),
                       _others(axis, pd.Series(config), dropout), kind, p, condition, pairs,
                       p_on, p_off))
  return rows


def _batch_norm_rows(bn: str, nobn: str, a: pd.DataFrame, b: pd.DataFrame) -> list[dict]:
  """`effects`' rows for a batch-norm model against its twin without batch norm."""
  if a.empty or b.empty:
    return []
  key = [*_KEY, *AXES]
  both = a.set_index(key).merge(b.set_index(key), left_index=True, right_index=True,
                                suffixes=("_on", "_off")).reset_index()
  dropout = bool((pd.concat([a, b]).dropout != 0).any())
  rows = []
  for (kind, p, *values), pairs in both.groupby(["kind", "corruption", *AXES]):
    first = pairs.iloc[0]
    config = dict(zip(AXES, values))
    p_on, p_off = _paper_diff(bn, first.dataset_on, first.condition_on, config, config, nobn)
    shared = _others("batch_norm", pd.Series(config), dropout)
    rows.append(_row(f"{bn} vs {nobn}", "batch norm", shared, kind, p, first.condition_on,
                     pairs, p_on, p_off))
  return rows


def _row(model, regularizer, shared, kind, p, condition, pairs, paper_on, paper_off) -> dict:
  d = pairs.final_test_acc_on - pairs.final_test_acc_off
  return dict(model=model, regularizer=regularizer, **{"with": shared}, condition=condition,
              kind=kind, corruption=p, n=len(pairs),
              test_on=pairs.final_test_acc_on.mean(), test_off=pairs.final_test_acc_off.mean(),
              diff=d.mean(), diff_min=d.min(), diff_max=d.max(),
              train_on=pairs.final_train_acc_on.mean(),
              train_off=pairs.final_train_acc_off.mean(),
              paper_on=paper_on, paper_off=paper_off, paper_diff=paper_on - paper_off)


def random_label_fits(runs: Runs, fits: pd.DataFrame) -> pd.DataFrame:
  """Random-label replicas per model and regularizers: how many fitted, their final train
  accuracy, and the steps to fit (mean over those that did). `fits`: `analyze(...).fits`."""
  f = fits[(fits.kind == "labels") & (fits.corruption == 1.0)].merge(
      runs.replicas[["run", "replica", "regularizers", "final_train_acc"]],
      on=["run", "replica"], how="left")
  rows = []
  for (model, regs), g in f.groupby(["model", "regularizers"], sort=True):
    acc = g.final_train_acc
    fitted = g[~g.censored]
    rows.append(dict(model=model, regularizers=regs, n=len(g), n_fitted=len(fitted),
                     final_train_acc=acc.mean(), min_train_acc=acc.min(),
                     steps_to_fit=fitted.time_step.mean() if len(fitted) else np.nan,
                     status=", ".join(sorted(set(g.status)))))
  return pd.DataFrame(rows, columns=["model", "regularizers", "n", "n_fitted",
                                     "final_train_acc", "min_train_acc", "steps_to_fit",
                                     "status"])


def early_stopping(runs: Runs, threshold: float | None = None) -> pd.DataFrame:
  """Per replica: the best test accuracy of any evaluation (`best_test_acc`, first at
  `best_step`), the test accuracy at the first evaluation with train accuracy >= `threshold`
  (`fit_test_acc`, `fit_step`; NaN if it never fitted) and at the last (`final_test_acc`),
  and what stopping at the best step would have gained over each (`gain_over_final`,
  `gain_over_fit`). `threshold`: default each run's `fit_threshold`."""
  thresholds = {run.name: (threshold if threshold is not None
                           else run.config.get("fit_threshold", 1.0)) for run in runs.runs}
  rows = []
  keep = ["run", "model", "dataset", "replica", "setup", "regularizers", "condition", "kind",
          "corruption", "seed", "status"]
  for (_, _), g in runs.metrics.groupby(["run", "replica"], sort=True):
    g = g.sort_values("step")
    first = g.iloc[0]
    best = g.loc[g.test_acc.idxmax()]
    fitted = g[g.train_acc >= thresholds[first.run]]
    fit = fitted.iloc[0] if len(fitted) else None
    last = g.iloc[-1]
    rows.append(dict(
        **{k: first[k] for k in keep}, best_step=int(best.step),
        best_test_acc=float(best.test_acc),
        fit_step=np.nan if fit is None else int(fit.step),
        fit_test_acc=np.nan if fit is None else float(fit.test_acc),
        final_step=int(last.step), final_test_acc=float(last.test_acc)))
  out = pd.DataFrame(rows)
  out["gain_over_final"] = out.best_test_acc - out.final_test_acc
  out["gain_over_fit"] = out.best_test_acc - out.fit_test_acc
  order = [condition_order(k, p) for k, p in zip(out.kind, out.corruption)]
  return out.assign(_o=order).sort_values(["setup", "_o", "seed"]).drop(
      columns="_o").reset_index(drop=True)


def early_stopping_summary(es: pd.DataFrame) -> pd.DataFrame:
  """`early_stopping` averaged over seeds per (setup, condition)."""
  rows = []
  for (setup, condition), g in es.groupby(["setup", "condition"], sort=False):
    rows.append(dict(setup=setup, model=g.model.iloc[0], condition=condition, n=len(g),
                     kind=g.kind.iloc[0], corruption=g.corruption.iloc[0],
                     best_test_acc=g.best_test_acc.mean(), best_step=g.best_step.mean(),
                     fit_test_acc=g.fit_test_acc.mean(), final_test_acc=g.final_test_acc.mean(),
                     gain_over_final=g.gain_over_final.mean(),
                     gain_over_fit=g.gain_over_fit.mean(), n_fitted=int(g.fit_step.notna().sum())))
  return pd.DataFrame(rows)


# --------------------------------------------------------------------------- markdown

def _pct(x, signed: bool = False) -> str:
  return pct(x, 2, signed)


def effects_reading(eff: pd.DataFrame) -> list[str]:
  """Plain words from the numbers: the largest effect on true labels, and the paper's."""
  true = eff[eff.condition == "true labels"]
  if true.empty:
    return []
  out = []
  big = true.loc[true["diff"].abs().idxmax()]
  out.append(f"On true labels the largest change a regularizer makes is {_pct(big['diff'], True)} "
             f"points of test accuracy ({big.regularizer}, {big.model}, {big['with']}); "
             f"every effect lies within {_pct(true['diff'].abs().max())} points.")
  both = true[true.paper_diff.notna()]
  if len(both):
    agree = int((np.sign(both["diff"]) == np.sign(both.paper_diff)).sum())
    out.append(f"Where the paper has the same pair ({len(both)} rows), the sign of the change "
               f"agrees in {agree}; the paper's changes lie within "
               f"{_pct(both.paper_diff.abs().max())} points.")
  return [" ".join(out), ""]


def table1_markdown(runs: Runs, table1: pd.DataFrame, fits: pd.DataFrame,
                    threshold: float | None = None, eff: pd.DataFrame | None = None,
                    es: pd.DataFrame | None = None) -> list[str]:
  """The lines of `table1.md`: Table 1 beside the paper, the regularizer effects, random
  labels with regularizers, and early stopping. `eff` and `es`: `effects(runs)` and
  `early_stopping(runs, threshold)` when the caller has them already."""
  dataset = ", ".join(runs.datasets)
  out = [f"# Table 1 and Figure 2 on {dataset}: regularizers and generalization", "",
         "Generated by `zhang report`. Zhang et al. (2017) Section 3: explicit regularizers "
         "(weight decay, data augmentation) and implicit ones (batch norm, early stopping) "
         "help generalization a little, but are neither necessary nor sufficient for it; "
         "networks fit random labels with them on.", ""]
  imagenet = paper.is_imagenet(dataset)
  if imagenet:
    out += [f"These runs are on {dataset}: the paper's ImageNet numbers (its Table 2) are in "
            f"table2.md and in the *paper* columns of the regularizer pairs below.", ""]
  elif not paper.matches_paper_dataset(dataset):
    out += [f"The paper's numbers are for CIFAR-10; these runs are on {dataset}, so the "
            f"*paper* columns compare the direction and size of each effect, not the "
            f"accuracies themselves.", ""]
  out += _table1_lines(table1)
  out += _effects_lines(effects(runs) if eff is None else eff, imagenet)
  out += _random_label_lines(random_label_fits(runs, fits))
  return out + _early_stopping_lines(early_stopping(runs, threshold) if es is None else es)


def _table1_lines(table1: pd.DataFrame) -> list[str]:
  rows = []
  for _, r in table1.iterrows():
    fitted = f"{r.n_fitted}/{r.n}" if "n_fitted" in table1 else str(r.n)
    match = paper.table1_match(r.model, "cifar10", r.condition,
                               {"weight_decay": r.weight_decay, "augmentation": r.augmentation})
    rows.append([r.model, r.regularizers, r.condition, fitted, _pct(r.train_acc),
                 _pct(r.test_acc), _pct(match["train_acc"]) if match else "–",
                 _pct(match["test_acc"]) if match else "–"])
  return (["## Table 1", "", "Means over seeds at the last evaluation.", ""]
          + _table(["model", "regularizers", "labels", "fitted", "train acc (%)",
                    "test acc (%)", "paper train (%, CIFAR-10)", "paper test (%, CIFAR-10)"],
                   rows) + [""])


def _effects_lines(eff: pd.DataFrame, imagenet: bool = False) -> list[str]:
  source = "Table 2 (ImageNet, top-1)" if imagenet else "Table 1 (CIFAR-10)"
  out = ["## Each regularizer on and off", "",
         "Replicas with the regularizer against their twins without it (same model, seed, "
         "labels and other regularizers): test accuracy and the mean paired difference "
         f"(range over seeds in brackets). *paper*: the same pair in the paper's {source}.",
         ""]
  if eff.empty:
    return out + ["No replica has a twin that differs in one regularizer only.", ""]
  rows = [[e.model, e.regularizer, e["with"], e.condition, e.n, _pct(e.test_on),
           _pct(e.test_off), f"{_pct(e['diff'], True)} [{_pct(e.diff_min, True)}, "
           f"{_pct(e.diff_max, True)}]", _pct(e.paper_on), _pct(e.paper_off),
           _pct(e.paper_diff, True)] for _, e in eff.iterrows()]
  out += _table(["model", "regularizer", "with", "labels", "pairs", "test on (%)",
                 "test off (%)", "difference (points)", "paper on (%)", "paper off (%)",
                 "paper difference"], rows) + [""]
  return out + effects_reading(eff)


def _random_label_lines(rl: pd.DataFrame) -> list[str]:
  if rl.empty:
    return []
  out = ["## Random labels with regularizers", "",
         "The paper: with weight decay Inception and the MLPs still fit random labels "
         "perfectly; AlexNet with weight decay fails to converge.", ""]
  rows = [[x.model, x.regularizers, f"{x.n_fitted}/{x.n}", _pct(x.final_train_acc),
           _pct(x.min_train_acc), "–" if not np.isfinite(x.steps_to_fit)
           else f"{x.steps_to_fit:,.0f}", x.status] for _, x in rl.iterrows()]
  out += _table(["model", "regularizers", "fitted", "train acc (%)", "lowest (%)",
                 "steps to fit", "status"], rows) + [""]
  short = rl[rl.n_fitted < rl.n]
  return out + [("Every random-label replica fitted." if short.empty else
                 "Not fitted: " + "; ".join(f"{x.model} with {x.regularizers} "
                                             f"({x.n - x.n_fitted} of {x.n}, train accuracy "
                                             f"down to {_pct(x.min_train_acc)}%)"
                                             for _, x in short.iterrows()) + "."), ""]


def _early_stopping_lines(es: pd.DataFrame) -> list[str]:
  s = early_stopping_summary(es)
  out = ["## Early stopping", "",
         "For each replica the best test accuracy any evaluation saw, against the test "
         "accuracy when it fitted its training set and at the end; means over seeds. The "
         "paper: on CIFAR-10 early stopping brings little. The resolution is one "
         "evaluation interval.", ""]
  rows = [[x.setup, x.condition, x.n, _pct(x.best_test_acc), f"{x.best_step:,.0f}",
           _pct(x.fit_test_acc), _pct(x.final_test_acc), _pct(x.gain_over_fit, True),
           _pct(x.gain_over_final, True)] for _, x in s.iterrows()]
  out += _table(["setup", "labels", "replicas", "best test (%)", "at step", "at fit (%)",
                 "at end (%)", "best - at fit", "best - end"], rows) + [""]
  true = s[s.condition == "true labels"]
  rand = s[s.condition == "random labels"]
  if not len(true):
    return out
  line = (f"On true labels stopping at the best evaluation gains "
          f"{_pct(true.gain_over_final.min(), True)} to "
          f"{_pct(true.gain_over_final.max(), True)} points over the end of training.")
  if len(rand):
    line += (f" The best evaluation is picked on the test set itself, so this is an upper "
             f"bound: on random labels, where nothing generalizes, the same pick gains "
             f"{_pct(rand.gain_over_final.min(), True)} to "
             f"{_pct(rand.gain_over_final.max(), True)} points from noise alone.")
  return out + [line, ""]
