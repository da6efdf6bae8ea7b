"""Table 2 of the paper from a run's files: Inception V3 on ImageNet, top-1 and top-5.

- `applies`: whether the runs are on ImageNet (`imagenet2012`).
- `table`: one row per (setup, labels, augmentation, dropout, weight decay), means over seeds
  with their range, beside the paper's numbers where it has them.
- `reading`: what agrees with the paper and what does not, in words; it says first when the
  run is the fake-data `quick` run (`data_dir` "tfds-mock"), whose numbers are no result.
- `markdown`: `table2.md`; `report_lines`: report.md's section.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from zhang.analysis import paper
from zhang.analysis.load import Runs, condition_order
from zhang.formatting import DASH, md_table, pct

# The four numbers of a row, as fractions: top-1 and top-5, train and test.
METRICS = ("train_acc", "test_acc", "train_top5", "test_top5")
_NAMES = {"train_acc": "top-1 train", "test_acc": "top-1 test", "train_top5": "top-5 train",
          "test_top5": "top-5 test"}
# The regularizer axes of Table 2 and their values when off.
AXES = {"augmentation": "none", "dropout": 0.0, "weight_decay": 0.0}
# tfds's fake ImageNet (`configs/table2.py:quick`): random images, random labels.
MOCK_DATA_DIR = "tfds-mock"
# A run's number agrees with the paper's when within this many points (percent).
AGREE_POINTS = 2.0
_GROUP = ["base_setup", "model", "learning_rate", "output_scale", "kind", "corruption",
          *AXES]


def applies(runs: Runs) -> bool:
  """Whether the runs are on ImageNet, whose table is the paper's Table 2."""
  return any(paper.is_imagenet(d) for d in runs.datasets)


def mock_runs(runs: Runs) -> list[str]:
  """The names of the runs on tfds's fake ImageNet (`data_dir` "tfds-mock")."""
  return [r.name for r in runs.runs if r.config.get("data_dir") == MOCK_DATA_DIR]


def _regularized(row) -> bool:
  return any(row[a] != off for a, off in AXES.items())


def _row(g: pd.DataFrame) -> dict:
  """One table row from the replicas of one grid point: means, ranges, and the paper's."""
  first = g.iloc[0]
  row = {c: first[c] for c in _GROUP}
  row.update(condition=first.condition, regularizers=first.regularizers, n=len(g),
             seeds=", ".join(str(int(s)) for s in sorted(g.seed)),
             status=", ".join(sorted(g.status.unique())))
  for m in METRICS:
    col = g.get(f"final_{m}", pd.Series(np.nan, index=g.index)).astype(float)
    row.update({m: col.mean(), f"{m}_lo": col.min(), f"{m}_hi": col.max()})
  match = paper.table2_match(first.model, first.dataset, first.condition,
                             {a: first[a] for a in AXES}) or {}
  row.update({f"paper_{m}": match.get(m, np.nan) for m in METRICS})
  return row


def table(runs: Runs) -> pd.DataFrame:
  """Table 2's rows for the ImageNet replicas of `runs`, true labels first.

  Columns: base_setup, model, learning_rate, output_scale, kind, corruption, augmentation,
  dropout, weight_decay, condition, regularizers, n, seeds, status; for each of METRICS the
  mean over seeds and its `_lo`, `_hi` range (fractions; NaN where the run has no top-5);
  `paper_` + each of METRICS (NaN where the paper has none); `test_vs_none`: a regularized
  row's top-1 test accuracy minus that of the same setup and labels without regularizers.
  """
  r = runs.replicas[[paper.is_imagenet(d) for d in runs.replicas.dataset]]
  rows = [_row(g) for _, g in r.groupby(_GROUP, sort=False, dropna=False)]
  out = pd.DataFrame(rows)
  if out.empty:
    return out
  out["test_vs_none"] = _against_none(out)
  order = [condition_order(k, p) for k, p in zip(out.kind, out.corruption)]
  return out.assign(_o=order, _a=out.augmentation != "none").sort_values(
      ["base_setup", "learning_rate", "_o", "_a", "dropout", "weight_decay"]).drop(
      columns=["_o", "_a"]).reset_index(drop=True)


def _against_none(t: pd.DataFrame) -> list[float]:
  """Each regularized row's top-1 test accuracy minus its unregularized twin's (NaN for
  the twin itself, and without one)."""
  key = ["base_setup", "learning_rate", "output_scale", "kind", "corruption"]
  none = t[[not _regularized(r) for _, r in t.iterrows()]].set_index(key).test_acc
  return [row.test_acc - none.get(tuple(row[k] for k in key), np.nan)
          if _regularized(row) else np.nan for _, row in t.iterrows()]


# --------------------------------------------------------------------------- markdown

def _cell(mean, lo, hi, n) -> str:
  """`mean` in percent, with the range over seeds when there are several."""
  if not np.isfinite(mean):
    return DASH
  text = pct(mean, 2)
  return text + (f" [{pct(lo, 2)}, {pct(hi, 2)}]" if n > 1 else "")


def _paper_metrics() -> list[str]:
  """The METRICS the paper gives anywhere in Table 2 (its columns)."""
  rows = paper.paper_numbers()["table2"]["rows"]
  return [m for m in METRICS if any(m in r for r in rows)]


def _on_off(value, off) -> str:
  return "no" if value == off else str(value if not isinstance(value, float) else f"{value:g}")


def table_lines(t: pd.DataFrame) -> list[str]:
  """The markdown table of `table(runs)`."""
  models = t.base_setup.nunique() > 1 or t.learning_rate.nunique() > 1
  shown = _paper_metrics()
  rows = []
  for _, r in t.iterrows():
    rows.append([*([r.base_setup, f"{r.learning_rate:g}"] if models else []), r.condition,
                 *(_on_off(r[a], off) for a, off in AXES.items()), r.n,
                 *(_cell(r[m], r[f"{m}_lo"], r[f"{m}_hi"], r.n) for m in METRICS),
                 pct(r.test_vs_none, 2, True),
                 *(pct(r[f"paper_{m}"], 2) for m in shown)])
  head = [*(["setup", "learning rate"] if models else []), "labels", "augmentation",
          "dropout", "weight decay", "seeds", *(f"{_NAMES[m]} (%)" for m in METRICS),
          "top-1 test vs none (points)", *(f"paper {_NAMES[m]} (%)" for m in shown)]
  return md_table(head, rows)


def _mock_lines(runs: Runs) -> list[str]:
  mock = mock_runs(runs)
  if not mock:
    return []
  steps = {r.name: r.steps_run for r in runs.runs}
  which = ", ".join(f"{n} ({steps[n]:,} steps)" for n in mock)
  return [f"**Not a result: fake data.** {which} trained on tfds's fake ImageNet (`data_dir` "
          f"{MOCK_DATA_DIR}, the `quick` run of configs/table2.py): random images with random "
          f"labels, a few examples and steps. Its numbers only show that the path from "
          f"streaming to this table runs; they say nothing about the paper's, so none is "
          f"compared with them.", ""]


def _paper_points(t: pd.DataFrame) -> list[tuple[str, str, float, float | None]]:
  """(what, metric, paper, run) for each of the paper's numbers; run None when no row of
  the grid matches it."""
  out = []
  for prow in paper.paper_numbers()["table2"]["rows"]:
    regs = [a.replace("_", " ") for a in AXES if prow[a]]
    what = (f"{prow['labels']} labels, " + (" + ".join(regs) + " only" if regs
                                            else "no regularizer"))
    for m in METRICS:
      if m not in prow:
        continue
      hit = t[t[f"paper_{m}"] == prow[m]]
      out.append((what, m, prow[m], float(hit[m].mean()) if len(hit) else None))
  return out


def _agreement_lines(t: pd.DataFrame) -> list[str]:
  out = []
  for what, m, p, run in _paper_points(t):
    if run is None:
      out.append(f"- {what}: the paper's {_NAMES[m]} {pct(p, 2)}% has no row here (the grid "
                 f"lacks that combination).")
    elif not np.isfinite(run):
      out.append(f"- {what}: the paper's {_NAMES[m]} {pct(p, 2)}%; the run has no value.")
    else:
      d = 100 * (run - p)
      verdict = ("agrees" if abs(d) <= AGREE_POINTS else
                 f"does not agree ({'above' if d > 0 else 'below'} by {abs(d):.2f} points)")
      out.append(f"- {what}: {_NAMES[m]} {pct(run, 2)}% against the paper's {pct(p, 2)}%: "
                 f"{verdict}.")
  return out


def _chance_lines(t: pd.DataFrame, num_classes: float) -> list[str]:
  """The paper's claim on random labels: fitted on the training set, chance on the test."""
  rand = t[t.condition == "random labels"]
  if rand.empty or not np.isfinite(num_classes):
    return []
  chance = 1 / num_classes
  out = []
  for _, r in rand.iterrows():
    regs = r.regularizers if _regularized(r) else "no regularizer"
    out.append(f"- random labels, {regs}: top-1 train {pct(r.train_acc, 2)}%, test "
               f"{pct(r.test_acc, 2)}% (chance {pct(chance, 2)}%). The paper: random labels "
               f"are fitted, and test accuracy stays at chance.")
  return out


def reading(runs: Runs, t: pd.DataFrame) -> list[str]:
  """What agrees with the paper and what does not; first, whether the data are fake."""
  out = ["### What agrees and what does not", ""]
  mock = _mock_lines(runs)
  if mock:
    return out + mock
  running = [r.name for r in runs.running()]
  if running:
    out += [f"Still in progress: {', '.join(running)}; its numbers are the latest "
            f"evaluation's, not the end of training.", ""]
  if set(t.model) != {paper.paper_numbers()["table2"]["model"]}:
    out += [f"The paper's Table 2 is {paper.paper_numbers()['table2']['name']}; these rows "
            f"are {', '.join(sorted(set(t.model)))}, so no row is matched.", ""]
  k = runs.replicas.num_classes.dropna()
  lines = _agreement_lines(t) + _chance_lines(t, float(k.iloc[0]) if len(k) else np.nan)
  return out + lines + ["", f"*Agrees*: within {AGREE_POINTS:g} points of the paper's "
                        f"number.", ""]


_INTRO = ("Means over seeds at the last evaluation, with the range over seeds in brackets "
          "when there are several; top-1 and top-5 accuracy on the training set as the run "
          "evaluates it (a streamed run: its first 10,000 training examples) and on the test "
          "set (ImageNet's validation split). *vs none*: top-1 test accuracy minus that of "
          "the same labels without any regularizer. *paper*: "
          "Zhang et al. (2017) Table 2 (Inception V3), where the row matches (each "
          "regularizer on or off); shared/PAPER.md gives three of its numbers.")


def report_lines(runs: Runs, t: pd.DataFrame | None = None) -> list[str]:
  """report.md's Table 2 section (empty unless the runs are on ImageNet)."""
  if not applies(runs):
    return []
  t = table(runs) if t is None else t
  return (["## Table 2: ImageNet, top-1 and top-5", "", _INTRO, "", *table_lines(t), ""]
          + reading(runs, t))


def markdown(runs: Runs, t: pd.DataFrame | None = None) -> list[str]:
  """The lines of `table2.md`."""
  dataset = ", ".join(runs.datasets)
  return [f"# Table 2 on {dataset}: true and random labels with and without regularizers",
          "", "Generated by `zhang report`."] + report_lines(runs, t)[1:]
