"""The kernel baseline of a token-dataset run (modular addition), beside the trained network.

For every distinct split and model among the runs (``modulus``, ``train_fraction``,
``split_seed``), minimum-norm interpolation K a = Y on the run's own training pairs (true
labels) with two kernels: an RBF kernel on the one-hot pairs, and the empirical tangent
kernel of the run's model at an initialization (seed 0), the kernel regime of that network
(``zhang kernel --dataset modadd [--kernel ntk --model M]``). The trained networks' test
accuracy at true labels is the comparison.

``zhang report`` computes the baseline once and keeps it in ``OUT/kernel_baseline.json``;
it is recomputed when the runs' splits or models change. A tangent kernel that is singular
(no exact interpolant) is said so, and solved again with a ridge of 1e-6 x its mean
diagonal (then 100x larger, up to the mean diagonal itself), which is recorded.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import ml_collections

from zhang.analysis.load import Runs

FILE = "kernel_baseline.json"
RELATIVE_RIDGE = 1e-6  # x the tangent kernel's mean diagonal, when it is singular
SPLIT_FIELDS = ("dataset", "modulus", "train_fraction", "split_seed")
# The tangent kernel's contractions a report computes itself, at most minutes on 2 CPU
# cores: mlp_tokens at modulus 113 (7 TFLOP) took 28-57 s there, transformer_1l at 31 (5.8
# TFLOP, no Dense factoring) 6.5 min; transformer_1l at 59 (147 TFLOP) is left to an
# accelerator.
MAX_NTK_FLOPS = 10e12
FORMAT = 1  # of kernel_baseline.json's entries: a file of another format is recomputed


def splits(runs: Runs) -> list[dict]:
  """The distinct (split, model) of the runs on token datasets, in run order."""
  from zhang.experiment import data
  out = []
  for run in runs.runs:
    c = run.config
    if data.input_kind(c.get("dataset", "")) != "tokens":
      continue
    key = {f: c.get(f) for f in SPLIT_FIELDS} | {"model": c["model"]}
    if key not in out:
      out.append(key)
  return out


def _dataset(key: dict, runs: Runs):
  from zhang.experiment import train
  run = next(r for r in runs.runs
             if {f: r.config.get(f) for f in SPLIT_FIELDS} == {f: key[f] for f in SPLIT_FIELDS})
  config = ml_collections.ConfigDict(run.config)
  config.n_train, config.n_test = 0, 0  # the whole split
  return train.load_dataset(config)


def compute(key: dict, runs: Runs, log: Callable[[str], None] = lambda s: None) -> dict:
  """The RBF and tangent-kernel interpolants of one split, as one JSON-able dict."""
  from zhang.probes.kernels import interpolation as kernels
  ds = _dataset(key, runs)
  n, n_test = len(ds.train_labels), len(ds.test_labels)
  rbf = kernels.evaluate(ds, n, n_test, kernel="rbf", features="onehot", log=log)
  rows = [dict(kernel="rbf", features="onehot", ridge=0.0, singular=False,
               train_acc=1 - rbf["train_error"], test_acc=1 - rbf["test_error"],
               **_commuted(rbf), seconds=rbf.get("seconds")),
          dict(kernel="ntk", features=f"{key['model']} tangent at initialization",
               **_tangent(ds, key, log))]
  return dict(key=key, format=FORMAT, n_train=n, n_test=n_test, chance=1 / ds.num_classes,
              commuted_in_train=rbf.get("commuted_in_train"), rows=rows)


def _tangent(ds, key: dict, log) -> dict:
  """The tangent kernel's row: its numbers, or ``skipped`` saying why there are none."""
  from zhang.probes.kernels import interpolation as kernels
  from zhang.probes.ntk import empirical as ntk
  n, n_test = len(ds.train_labels), len(ds.test_labels)
  work = ntk.token_interpolation_flops(ds, n, n_test, key["model"])
  if work > MAX_NTK_FLOPS:
    return dict(skipped=(f"about {work / 1e12:,.0f} TFLOP of contractions, over the "
                         f"report's {MAX_NTK_FLOPS / 1e12:g}: run zhang kernel --dataset "
                         f"{key['dataset']} --modulus {key['modulus']} --train_fraction "
                         f"{key['train_fraction']:g} --split_seed {key['split_seed']} --n 0 "
                         f"--kernel ntk --model {key['model']} (an accelerator's minutes)"))
  try:
    t = ntk.token_interpolation(ds, n, n_test, key["model"], seed=0, log=log,
                                singular_ridge=RELATIVE_RIDGE)
  except kernels.SingularKernelError as e:  # singular even with the largest ridge
    return dict(skipped=f"singular even with a ridge of its mean diagonal: {e}")
  return dict(ridge=t["ridge"], singular=t["singular"], train_acc=1 - t["train_error"],
              test_acc=1 - t["test_error"], **_commuted(t), seconds=t["seconds"])


def _commuted(result: dict) -> dict:
  """Test accuracy on the test pairs whose commuted pair (b, a) trains, and on the rest."""
  acc = lambda e: None if e is None else 1 - e  # noqa: E731
  return dict(test_acc_commuted=acc(result.get("test_error_commuted_in_train")),
              test_acc_not_commuted=acc(result.get("test_error_commuted_not_in_train")))


def load_or_compute(runs: Runs, out, log: Callable[[str], None] = lambda s: None
                    ) -> list[dict]:
  """The baselines of the runs' splits: OUT/kernel_baseline.json if it holds exactly them,
  else computed and written there. Empty for runs on image datasets."""
  keys = splits(runs)
  if not keys:
    return []
  path = out / FILE
  if path.exists():
    try:
      cached = json.loads(path.read_text())
      if [c["key"] for c in cached] == keys and all(c.get("format") == FORMAT
                                                     for c in cached):
        return cached
    except (ValueError, KeyError, TypeError):
      pass  # damaged or from another version: recomputed below
  from zhang.errors import UsageError
  results = []
  for k in keys:
    start = time.perf_counter()
    try:
      results.append(compute(k, runs))
    except UsageError as e:  # too large for this machine's memory: said in the report
      results.append(dict(key=k, error=str(e)))
      log(f"kernel baseline of {k['dataset']} P = {k['modulus']} not computed: {e}")
      continue
    log(f"kernel baseline of {k['dataset']} P = {k['modulus']} (rbf, and the tangent kernel "
        f"of {k['model']} at initialization): {time.perf_counter() - start:.0f} s, kept in "
        f"{path}")
  if all("error" not in r for r in results):
    path.write_text(json.dumps(results, indent=1))
  return results


def _trained(runs: Runs, key: dict, s) -> list[tuple[str, float, float, float, int]]:
  """(hyper-parameters, mean final train accuracy, mean final and best test accuracy,
  replicas) of the true-label replicas of the runs with this split and model; ``s`` is
  ``grokking.steps(runs)``."""
  if s.empty:  # no run trained past its fit
    return []
  names = [r.name for r in runs.runs
           if {f: r.config.get(f) for f in SPLIT_FIELDS} | {"model": r.config["model"]}
           == key]
  s = s[s.run.isin(names) & (s.corruption == 0) & (s.kind == "labels")]
  return [(f"lr {lr:g}, weight decay {wd:g}", g.final_train_acc.mean(), g.final_test_acc.mean(),
           g.best_test_acc.mean(), len(g))
          for (lr, wd), g in s.groupby(["learning_rate", "weight_decay"])]


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.1f}"


def _name(row: dict, model: str) -> str:
  name = ("RBF on one-hot (a, b)" if row["kernel"] == "rbf"
          else f"NTK of {model} at initialization")
  return name + (f" (singular; ridge {row['ridge']:.2g})" if row.get("singular") else "")


def _split_lines(r: dict, runs: Runs, steps) -> list[str]:
  """One split's heading, table and reading."""
  k = r["key"]
  split = f"{k['dataset']} P = {k['modulus']}, train fraction {k['train_fraction']:g}"
  if "error" in r:
    return [f"{split}: the kernel baseline was not computed: {r['error']}", ""]
  share = r.get("commuted_in_train")
  out = [f"**{split}**: {r['n_train']:,} training and {r['n_test']:,} test pairs"
         + (f"; (b, a) trains for {100 * share:.0f}% of the test pairs" if share is not None
            else "") + ".", "",
         "| predictor | train acc (%) | test acc (%) | (b, a) trains | the rest |",
         "|---|---|---|---|---|"]
  words = []
  done = [row for row in r["rows"] if "skipped" not in row]
  for row in r["rows"]:
    if "skipped" in row:
      words.append(f"The {_name(row, k['model'])} was not computed: {row['skipped']}.")
      continue
    out.append(f"| {_name(row, k['model'])} | {100 * row['train_acc']:.1f} | "
               f"{100 * row['test_acc']:.1f} | {_pct(row.get('test_acc_commuted'))} | "
               f"{_pct(row.get('test_acc_not_commuted'))} |")
  trained = _trained(runs, k, steps)
  for hp, train, final, best, n in trained:
    out.append(f"| {k['model']} trained ({hp}; {n} replicas; final / best) | "
               f"{100 * train:.1f} | {100 * final:.1f} / {100 * best:.1f} | – | – |")
  for row in done:
    on, off = row.get("test_acc_commuted"), row.get("test_acc_not_commuted")
    if on is not None and off is not None and on > 0.5 and off < 2 * r["chance"]:
      words.append(f"The {_name(dict(row, singular=False), k['model'])} gets its "
                   f"{100 * row['test_acc']:.1f}% by commutativity, not addition: "
                   f"{100 * on:.1f}% on the test pairs whose (b, a) trains, {100 * off:.1f}% "
                   f"on the rest.")
  if done and trained:
    best_kernel = max(row["test_acc"] for row in done)
    below = ("; below chance, since a kernel of the one-hot pair weighs most the training "
             "pairs that share a residue with the test pair, and none of those has its sum"
             if best_kernel < r["chance"] else "")
    words.append(f"The best kernel reaches {100 * best_kernel:.1f}% test accuracy (chance "
                 f"{100 * r['chance']:.1f}%{below}); the trained {k['model']} "
                 f"{100 * max(t[2] for t in trained):.1f}%.")
  return out + [""] + ([" ".join(words), ""] if words else [])


def report_lines(results: list[dict], runs: Runs, steps=None) -> list[str]:
  """The report's kernel-baseline section: per split, each kernel's train and test accuracy
  beside the trained networks' (true labels). ``steps``: ``grokking.steps(runs)``, where
  the caller has it already."""
  if not results:
    return []
  if steps is None:
    from zhang.analysis import grokking
    steps = grokking.steps(runs)
  out = ["## The kernel baseline", "",
         "Minimum-norm interpolation K a = Y of the true training labels (float64 Cholesky; "
         "`zhang kernel --dataset modadd`), on each run's own split, against the trained "
         "networks at true labels. *NTK*: the empirical tangent kernel of the run's model "
         "at an initialization (seed 0), the network's kernel regime. *(b, a) trains*: test "
         "accuracy on the test pairs whose commuted pair is in the training set, which a "
         "predictor symmetric in a and b gets from commutativity alone; *the rest*: on the "
         "others.", ""]
  for r in results:
    out += _split_lines(r, runs, steps)
  return out
