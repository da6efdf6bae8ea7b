"""kernel_baseline.json (``zhang kernel RUN --out OUT``) read and put in the report.

The file is a list of entries, one per split and model of a token-dataset run (modular
addition): ``key`` (dataset, modulus, train_fraction, split_seed, model), ``settings``
(``run``, ``config_hash``: the run it was computed from), ``n_train``, ``n_test``,
``chance``, ``commuted_in_train`` and ``rows``, one per kernel (RBF on one-hot pairs, the
tangent kernel of the run's model at initialization) with its train and test accuracy, or
``skipped`` saying why it has none; an entry that could not be computed has ``error``.
``zhang report`` only reads it: entries of other runs are not embedded, and a token run
without one is named with the command that writes it.
"""

from __future__ import annotations

import json

from etils import epath

from zhang.analysis import provenance
from zhang.analysis.load import Runs
from zhang.formatting import DASH, md_table, pct

FILE = "kernel_baseline.json"
SPLIT_FIELDS = ("dataset", "modulus", "train_fraction", "split_seed")


def token_runs(runs: Runs) -> list:
  """The runs on token datasets (modular addition), which have a kernel baseline."""
  from zhang.experiment.data import input_kind  # numpy only: names, not data
  return [r for r in runs.runs if input_kind(r.config.get("dataset", "")) == "tokens"]


def split_key(config: dict) -> dict:
  """The split and model of a run's config, as kernel_baseline.json's ``key``."""
  return {f: config.get(f) for f in SPLIT_FIELDS} | {"model": config["model"]}


def load(out) -> list[dict] | None:
  """OUT/kernel_baseline.json's entries; None when there is none or it is not one."""
  path = epath.Path(out) / FILE
  if not path.exists():
    return None
  try:
    entries = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(entries, list) or not all(isinstance(e, dict) and "key" in e
                                              for e in entries):
    return None
  return entries


def select(entries: list[dict] | None, runs: Runs) -> tuple[list[dict], list[dict]]:
  """(the entries computed from these runs, one per key in run order; those of other
  runs, or of no recorded run)."""
  entries = entries or []
  mine, others = [], []
  for e in entries:
    (mine if provenance.source(e.get("settings", {}), runs) is not None else others).append(e)
  keys = []
  for run in token_runs(runs):
    if split_key(run.config) not in keys:
      keys.append(split_key(run.config))
  return [next(e for e in mine if e["key"] == k) for k in keys
          if any(e["key"] == k for e in mine)], others


def missing(entries: list[dict], runs: Runs) -> list:
  """The token runs whose split and model no entry of ``entries`` covers."""
  keys = [e["key"] for e in entries]
  return [r for r in token_runs(runs) if split_key(r.config) not in keys]


def _trained(runs: Runs, key: dict, s) -> list[tuple[str, float, float, float, int]]:
  """(hyper-parameters, mean final train accuracy, mean final and best test accuracy,
  replicas) of the true-label replicas of the runs with this split and model; ``s`` is
  ``grokking.steps(runs)``."""
  if s.empty:  # no run trained past its fit
    return []
  names = [r.name for r in runs.runs if split_key(r.config) == key]
  s = s[s.run.isin(names) & (s.corruption == 0) & (s.kind == "labels")]
  return [(f"lr {lr:g}, weight decay {wd:g}", g.final_train_acc.mean(), g.final_test_acc.mean(),
           g.best_test_acc.mean(), len(g))
          for (lr, wd), g in s.groupby(["learning_rate", "weight_decay"])]


def _name(row: dict, model: str) -> str:
  name = ("RBF on one-hot (a, b)" if row["kernel"] == "rbf"
          else f"NTK of {model} at initialization")
  return name + (f" (singular; ridge {row['ridge']:.2g})" if row.get("singular") else "")


def _heading(r: dict) -> str:
  k = r["key"]
  return f"{k['dataset']} P = {k['modulus']}, train fraction {k['train_fraction']:g}"


def _table(r: dict, trained: list) -> list[str]:
  model = r["key"]["model"]
  rows = [[_name(row, model), pct(row["train_acc"]), pct(row["test_acc"]),
           pct(row.get("test_acc_commuted")), pct(row.get("test_acc_not_commuted"))]
          for row in r["rows"] if "skipped" not in row]
  rows += [[f"{model} trained ({hp}; {n} replicas; final / best)", pct(train),
            f"{pct(final)} / {pct(best)}", DASH, DASH]
           for hp, train, final, best, n in trained]
  return md_table(["predictor", "train acc (%)", "test acc (%)", "(b, a) trains",
                   "the rest"], rows)


def _reading(r: dict, trained: list) -> list[str]:
  """What the table says: skipped kernels, commutativity, the best kernel against the
  trained network."""
  model, chance = r["key"]["model"], r["chance"]
  done = [row for row in r["rows"] if "skipped" not in row]
  words = [f"The {_name(row, model)} was not computed: {row['skipped']}."
           for row in r["rows"] if "skipped" in row]
  for row in done:
    on, off = row.get("test_acc_commuted"), row.get("test_acc_not_commuted")
    if on is not None and off is not None and on > 0.5 and off < 2 * chance:
      words.append(f"The {_name(dict(row, singular=False), model)} gets its "
                   f"{pct(row['test_acc'])}% by commutativity, not addition: {pct(on)}% on "
                   f"the test pairs whose (b, a) trains, {pct(off)}% on the rest.")
  if done and trained:
    best_kernel = max(row["test_acc"] for row in done)
    below = ("; below chance, since a kernel of the one-hot pair weighs most the training "
             "pairs that share a residue with the test pair, and none of those has its sum"
             if best_kernel < chance else "")
    words.append(f"The best kernel reaches {pct(best_kernel)}% test accuracy (chance "
                 f"{pct(chance)}%{below}); the trained {model} "
                 f"{pct(max(t[2] for t in trained))}%.")
  return [" ".join(words), ""] if words else []


def _split_lines(r: dict, runs: Runs, steps) -> list[str]:
  """One split's heading, table and reading."""
  if "error" in r:
    return [f"{_heading(r)}: the kernel baseline was not computed: {r['error']}", ""]
  share = r.get("commuted_in_train")
  trained = _trained(runs, r["key"], steps)
  return ([f"**{_heading(r)}**: {r['n_train']:,} training and {r['n_test']:,} test pairs"
           + (f"; (b, a) trains for {100 * share:.0f}% of the test pairs" if share is not None
              else "") + ".", ""]
          + _table(r, trained) + [""] + _reading(r, trained))


def _absent_lines(runs: Runs, without: list, others: list[dict], out) -> list[str]:
  """The token runs that have no baseline here, with the command that writes it, and the
  entries of other runs that were skipped."""
  lines = [f"{run.name}: no kernel baseline in {out} for its split; `zhang kernel "
           f"{run.path} --out {out}` writes it." for run in without]
  lines += [f"An entry of {out}/{FILE} ({_heading(e)}) was computed from "
            f"{provenance.describe(e.get('settings', {}))}, not from the runs reported here: "
            f"skipped." for e in others]
  return [" ".join(lines), ""] if lines else []


def report_lines(entries: list[dict] | None, runs: Runs, out, steps=None) -> list[str]:
  """The report's kernel-baseline section (empty for runs on image datasets, unless the file
  holds another run's entries, which it says were skipped): per split,
  each kernel's train and test accuracy beside the trained networks' (true labels), from
  the entries of ``entries`` (kernel_baseline.json's) computed from these runs. ``steps``:
  ``grokking.steps(runs)``, where the caller has it already."""
  mine, others = select(entries, runs)
  if not token_runs(runs) and not others:
    return []
  if steps is None and mine:
    from zhang.analysis import grokking
    steps = grokking.steps(runs)
  out_lines = ["## The kernel baseline", "",
               "Minimum-norm interpolation K a = Y of the true training labels (float64 "
               "Cholesky; `zhang kernel RUN --out OUT`), on each run's own split, against the "
               "trained networks at true labels. *NTK*: the empirical tangent kernel of the "
               "run's model at an initialization (seed 0), the network's kernel regime. "
               "*(b, a) trains*: test accuracy on the test pairs whose commuted pair is in "
               "the training set, which a predictor symmetric in a and b gets from "
               "commutativity alone; *the rest*: on the others.", ""]
  for r in mine:
    out_lines += _split_lines(r, runs, steps)
  return out_lines + _absent_lines(runs, missing(mine, runs), others, out)
