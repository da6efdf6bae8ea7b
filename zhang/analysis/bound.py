"""Reading ``zhang bound``'s output: each replica's PAC-Bayes bound beside its test error.

bound.json holds, for every replica of a two-class grid (one run's or a study's models'), the
bound of Dziugaite and Roy (2017) on the error of a Gaussian posterior Q around the trained
weights, certified with probability ``confidence`` over the training sample and the Monte
Carlo draws, and the trained network's own test error. Zhang et al. (2017) ask whether any
bound tells the replicas that generalize from those that cannot (random labels); Dziugaite and
Roy's answer is a bound that is non-vacuous for true labels and large for random ones. A bound
below 0.5, chance on two classes, certifies something; at 1 it says nothing (vacuous).
``table`` is the per-level summary, ``plot`` the figure (bound against test error, a point per
replica), ``report_lines`` report.md's section.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from etils import epath
from matplotlib.figure import Figure

from zhang.analysis import plots, provenance
from zhang.formatting import DASH, condition_name, corruption_colours, md_table

FILE = "bound.json"
FIGURE = "bound_vs_test_error.png"
CAPTIONS = {FIGURE: "PAC-Bayes bound (Dziugaite & Roy 2017) against test error, a point per "
                    "replica, coloured by label corruption; dashed: bound = test error; "
                    "grey: the vacuous bound 1, dotted: chance 0.5 (zhang bound)."}
CHANCE = 0.5  # the error of a guess on two classes: a bound below it certifies something
REQUIRED = ("replica", "model", "kind", "corruption", "seed", "test_error", "bound",
            "mc_error", "kl")


def load(path) -> dict:
  """bound.json's dict, from the file or the folder that holds it (local or gs://)."""
  return provenance.read(path, FILE, REQUIRED, "zhang bound")


def _number(v) -> float:
  return math.nan if v is None else float(v)


def replicas(result: dict) -> pd.DataFrame:
  """A row per replica: model, kind, corruption, seed, test error, bound, Monte Carlo
  error, KL (NaN where a value is missing)."""
  keys = ("replica", "model", "kind", "corruption", "seed", "test_error", "bound", "mc_error",
          "kl")
  frame = pd.DataFrame([{k: r.get(k) for k in keys} for r in result["replicas"]],
                       columns=list(keys))
  for k in ("test_error", "bound", "mc_error", "kl"):
    frame[k] = frame[k].map(_number)
  return frame


def table(result: dict) -> pd.DataFrame:
  """A row per (model, kind, corruption level): replicas, mean test error, mean bound,
  replicas certified below chance (bound < 0.5), mean Monte Carlo error and KL."""
  frame = replicas(result)
  rows = []
  for (model, kind, p), g in frame.groupby(["model", "kind", "corruption"], sort=True):
    rows.append(dict(model=model, kind=kind, corruption=float(p), replicas=len(g),
                     test_error=g.test_error.mean(), bound=g.bound.mean(),
                     certified=int((g.bound < CHANCE).sum()), mc_error=g.mc_error.mean(),
                     kl=g.kl.mean()))
  return pd.DataFrame(rows, columns=["model", "kind", "corruption", "replicas", "test_error",
                                     "bound", "certified", "mc_error", "kl"])


def _num(x, spec: str = ".3f") -> str:
  return DASH if not np.isfinite(x) else format(x, spec)


def _cells(t: pd.DataFrame) -> list[list[str]]:
  return [[row.model, condition_name(row.kind, row.corruption), str(row.replicas),
           _num(row.test_error), _num(row.bound), f"{row.certified} of {row.replicas}",
           _num(row.mc_error), _num(row.kl, ",.0f")] for row in t.itertuples()]


HEADER = ("model", "labels", "replicas", "mean test error", "mean bound",
          f"certified (bound < {CHANCE:g})", "mean Q train error", "mean KL")


def text_table(t: pd.DataFrame) -> list[str]:
  """The table as aligned plain text (what ``zhang bound`` prints)."""
  cells = [list(HEADER), *_cells(t)]
  widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
  return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                    enumerate(zip(row, widths))).rstrip() for row in cells]


def report_lines(result: dict) -> list[str]:
  """report.md's section: what was bounded and how, the table per corruption level, and
  the figure's link."""
  s = result["settings"]
  frame = replicas(result)
  t = table(result)
  steps = sorted({r.get("step") for r in result["replicas"] if r.get("step") is not None})
  at = DASH if not steps else (f"{steps[0]:,}" if len(steps) == 1
                               else f"{steps[0]:,} to {steps[-1]:,}")
  certified = int((frame.bound < CHANCE).sum())
  return ["## PAC-Bayes bounds", "",
          f"{len(frame)} replicas of {', '.join(sorted(frame.model.unique()))} from "
          f"{s.get('run', 'a run')} (zhang bound at step {s.get('step', DASH)}: step"
          f"{'s' if len(steps) > 1 else ''} {at}). Dziugaite and Roy (2017)'s bound: a "
          f"Gaussian posterior Q around each replica's trained weights, optimized for "
          f"{_count(s.get('steps'))} steps against a prior around its initialization, its "
          f"training error estimated from {_count(s.get('draws'))} sampled networks, "
          f"{_measured_on(s)}; with probability "
          f"{s.get('confidence', DASH)} over the sample and the draws, Q's error is below "
          f"the bound. The bound is on Q, not on the trained network whose test error is "
          f"shown. The task has two classes, so a bound below {CHANCE:g} (chance) certifies "
          f"something; {certified} of {len(frame)} replicas are certified so.", "",
          *md_table(HEADER, _cells(t), align="llrrrrrr"), "",
          f"Every replica's bound against its test error: {FIGURE}. Each setting and field "
          f"of {FILE}: docs/bounds.md.", ""]


def _count(v) -> str:
  return f"{v:,}" if isinstance(v, int) else DASH


def _measured_on(s: dict) -> str:
  n = s.get("examples", DASH)
  size = s.get("mc_batch") or 0
  if size and (not isinstance(n, int) or size < n):
    return f"each on {size:,} of the n = {n:,} training examples (drawn with replacement)"
  return f"each on all n = {n:,} training examples" if isinstance(n, int) else (
      f"each on all n = {n} training examples")


def plot(result: dict, out_dir) -> list[epath.Path]:
  """Writes bound_vs_test_error.png to ``out_dir``; returns its path (none without a
  finite bound)."""
  frame = replicas(result)
  if not np.isfinite(frame.bound).any():
    return []
  return [plots.save(figure(frame), epath.Path(out_dir) / FIGURE)]


def figure(frame: pd.DataFrame) -> Figure:
  """Bound (y) against test error (x), a point per replica coloured by corruption (a marker
  per model), with the diagonal, chance and the vacuous line at 1."""
  fig = Figure(figsize=(6.0, 5.0), dpi=plots.DPI, layout="constrained")
  ax = fig.subplots()
  levels = sorted(frame.corruption.unique())
  colours = corruption_colours(levels)
  markers = dict(zip(sorted(frame.model.unique()), "os^Dv<>p"))
  for (model, p), g in frame.groupby(["model", "corruption"], sort=True):
    ax.scatter(g.test_error, g.bound, s=30, alpha=0.85, color=colours.get(p),
               marker=markers[model],
               label=f"p={p:g}" + (f", {model}" if len(markers) > 1 else ""))
  top = max(1.05, float(np.nanmax(frame.bound)) * 1.02)
  ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="bound = test error")
  ax.axhline(1.0, color="0.5", lw=1.2, label="vacuous (1)")
  ax.axhline(CHANCE, color="0.5", lw=0.8, ls=":", label=f"chance ({CHANCE:g})")
  ax.set_xlim(0, max(0.6, float(np.nanmax(frame.test_error)) + 0.05))
  ax.set_ylim(0, top)
  ax.set_xlabel("test error of the trained network")
  ax.set_ylabel("PAC-Bayes bound on the posterior's error")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, frameon=False, loc="lower right", title="label corruption",
            title_fontsize=7)
  return fig
