"""Reading ``zhang measures``'s output: which complexity measures rank the generalization gap.

measures.json holds, for every replica of a grid (one run's or a study's models'), the
measures of Jiang et al. (ICLR 2020) and its gap (train accuracy - test accuracy). A measure
explains generalization only if it orders the replicas as their gaps do; Zhang et al.
(2017)'s randomization test asks the same: random labels leave network and optimizer as
they were and raise the gap, so the measure must rise too. ``analyze`` ranks each measure by
Kendall's tau with the gap, and by Jiang's granulated tau (per grid axis, the mean tau over
groups of replicas that differ along it alone; then the mean over axes, so that no one axis
speaks for the others), for the true-label replicas (Jiang's setting) and every corruption
level (Zhang's), and pairs each random-label replica with its true-label twin. ``write``
puts it in OUT/measures.md with its figures; ``summary_lines`` is report.md's section.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import pandas as pd
from etils import epath
from scipy import stats

from zhang.analysis import measures_plots, provenance
from zhang.formatting import DASH, md_table
from zhang.rundir import metrics as metrics_lib

FILE = "measures.json"
REPORT = "measures.md"
# The grid's axes, in the order the tables show them.
AXES = ("model", "learning_rate", "weight_decay", "augmentation", "seed", "corruption", "kind")
SHORT = dict(model="model", learning_rate="lr", weight_decay="wd", augmentation="aug",
             seed="seed", corruption="p", kind="kind")
# A random-label replica's twin: the true-label replica with every one of these equal.
TWIN_AXES = ("model", "learning_rate", "weight_decay", "augmentation", "seed")
REQUIRED = (*AXES, "replica", "gap", "measures")
# A measure ranks the gap when its tau is at least CLEAR and unlikely by chance
# (two-sided p below ALPHA); it ranks it backwards at -CLEAR or less.
CLEAR, ALPHA = 0.2, 0.05


@dataclasses.dataclass
class Analysis:
  """measures.json's numbers as tables a notebook can reuse."""
  settings: dict  # measures.json's settings
  replicas: pd.DataFrame  # a row per replica: AXES, step, accuracies, losses, gap
  values: pd.DataFrame  # the same rows, a column per measure (NaN: no value)
  taus: dict[str, pd.DataFrame]  # per setting (SETTINGS' names), a row per measure
  axes: dict[str, list[str]]  # per setting, the axes that vary in it
  randomization: pd.DataFrame  # a row per measure: random against true labels

  @property
  def primary(self) -> str:
    """The setting the figures sort by: the label-corruption one where there is one."""
    return "label corruption" if "label corruption" in self.taus else next(iter(self.taus))


def load(path) -> dict:
  """measures.json's dict, from the file or the folder that holds it (local or gs://)."""
  return provenance.read(path, FILE, REQUIRED, "zhang measures")


def select(result: dict, runs) -> tuple[dict | None, list[dict]]:
  """The replicas of ``result`` computed from ``runs`` (``zhang.analysis.load.Runs``), by
  config hash (``provenance``): a study's measures.json lists each model's run in
  ``settings.runs``. Returns ``result`` with those replicas alone (None when none is), and
  the settings of the runs it holds that are not among ``runs``."""
  s = result["settings"]
  sources = s.get("runs") or [dict(s, model=None)]
  mine, others = set(), []
  for src in sources:
    if provenance.source(src, runs) is not None:
      mine.add(src.get("model"))
    else:
      others.append(src)
  if not mine:
    return None, others
  replicas = [r for r in result["replicas"] if None in mine or r["model"] in mine]
  return dict(result, replicas=replicas), others


def partial_line(path, others: Sequence[dict]) -> str:
  """One line for the runs of a measures.json that a report leaves out."""
  return (f"{path} also holds replicas of {'; '.join(map(provenance.describe, others))}, "
          f"not of the runs reported here: those skipped")


def _number(v) -> float:
  return math.nan if v is None else float(v)


def tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
  """The replicas (AXES, step, accuracies, losses, gap) and their measures (a column per
  measure, in settings.measures' order; NaN where a replica has no value)."""
  reps = result["replicas"]
  names = list(result["settings"].get("measures") or [])
  names += [n for r in reps for n in r["measures"] if n not in names]
  names = list(dict.fromkeys(names))
  keys = [*AXES, "replica", "step", "train_acc", "test_acc", "train_loss", "test_loss", "gap"]
  replicas = pd.DataFrame([{k: r.get(k) for k in keys} for r in reps], columns=keys)
  replicas["gap"] = replicas["gap"].map(_number)
  values = pd.DataFrame([{n: _number(r["measures"].get(n)) for n in names} for r in reps],
                        columns=names, dtype=float)
  return replicas, values


def kendall(x, y) -> tuple[float, float]:
  """Kendall's tau-b of ``x`` and ``y`` and its two-sided p-value; NaN for both where
  either is constant (no order to compare) or there are fewer than two pairs of points."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  if len(x) < 2 or np.unique(x).size < 2 or np.unique(y).size < 2:
    return math.nan, math.nan
  r = stats.kendalltau(x, y)
  return float(r.statistic), float(r.pvalue)


def granulated(table: pd.DataFrame, axis: str) -> tuple[float, int]:
  """Jiang et al.'s psi for one axis: the mean tau of ``table.x`` with ``table.y`` over the
  groups of rows that share every other axis of AXES and take two or more values of
  ``axis``; and the number of those groups. A group whose gap is constant orders nothing and
  is left out; one whose measure is constant while its gap varies counts 0 (Jiang's tau
  counts a tie as neither concordant nor discordant)."""
  others = [a for a in AXES if a != axis]
  taus = []
  for _, g in table.groupby(others, dropna=False, sort=False):
    if g[axis].nunique(dropna=False) < 2 or g.y.nunique() < 2:
      continue
    taus.append(0.0 if g.x.nunique() < 2 else kendall(g.x, g.y)[0])
  return (float(np.mean(taus)) if taus else math.nan), len(taus)


def tau_table(replicas: pd.DataFrame, values: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
  """A row per measure (by tau, highest first): n (replicas with a value and a gap),
  missing (those without), tau, p, psi per varying axis with its groups
  (``<axis>_groups``), and Psi (``psi``, their mean); and the varying axes. A measure
  constant over the replicas has NaN throughout."""
  axes = [a for a in AXES if replicas[a].nunique(dropna=False) > 1]
  rows = []
  for name in values.columns:
    keep = values[name].notna() & replicas.gap.notna()
    t = replicas.loc[keep, list(AXES)].assign(x=values.loc[keep, name],
                                              y=replicas.loc[keep, "gap"])
    tau, p = kendall(t.x, t.y)
    row = dict(measure=name, n=int(keep.sum()), missing=int((~keep).sum()), tau=tau, p=p,
               constant=t.x.nunique() < 2)
    for a in axes:
      row[a], row[f"{a}_groups"] = (math.nan, 0) if row["constant"] else granulated(t, a)
    psis = [row[a] for a in axes if np.isfinite(row[a])]
    row["psi"] = float(np.mean(psis)) if psis else math.nan
    rows.append(row)
  columns = ["measure", "n", "missing", "tau", "p", "constant",
             *(c for a in axes for c in (a, f"{a}_groups")), "psi"]
  table = pd.DataFrame(rows, columns=columns)
  return table.sort_values("tau", ascending=False, na_position="last", kind="stable",
                           ignore_index=True), axes


# (name, what it is, which replicas): the settings a tau is computed in.
SETTINGS = (
    ("true labels", "the replicas with true labels (kind labels, corruption 0): Jiang et "
     "al.'s setting, where only the hyper-parameters, models and seeds move the gap",
     lambda r: (r.kind == "labels") & (r.corruption == 0)),
    ("label corruption", "the label-corruption replicas at every level (kind labels): "
     "Zhang et al.'s setting, where corrupting the labels moves the gap",
     lambda r: r.kind == "labels"),
    ("every replica", "every replica, the randomized inputs too",
     lambda r: pd.Series(True, index=r.index)),
)


def randomization(replicas: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
  """A row per measure over the pairs of a random-label replica (kind labels, corruption
  1) and its true-label twin (corruption 0, TWIN_AXES equal): pairs (with both values),
  median_ratio (value at p=1 / value at p=0, over the pairs whose p=0 value is positive),
  grows (the share of pairs where the value rises), with_gap (the share, among pairs whose
  gap changed, where the value moves the way the gap does) and gap_grows (the share of
  pairs where the gap rises)."""
  labels = replicas[replicas.kind == "labels"].reset_index()
  pairs = labels[labels.corruption == 0.0].merge(labels[labels.corruption == 1.0],
                                                 on=list(TWIN_AXES), suffixes=("0", "1"))
  dgap = (pairs.gap1 - pairs.gap0).to_numpy()
  rows = []
  for name in values.columns:
    v0 = values[name].to_numpy()[pairs.index0.to_numpy(int)]
    v1 = values[name].to_numpy()[pairs.index1.to_numpy(int)]
    ok = np.isfinite(v0) & np.isfinite(v1)
    moved = ok & np.isfinite(dgap) & (dgap != 0)
    pos = ok & (v0 > 0)
    rows.append(dict(
        measure=name, pairs=int(ok.sum()), missing=int((~ok).sum()),
        median_ratio=float(np.median(v1[pos] / v0[pos])) if pos.any() else math.nan,
        grows=float(np.mean(v1[ok] > v0[ok])) if ok.any() else math.nan,
        with_gap=(float(np.mean(np.sign(v1 - v0)[moved] == np.sign(dgap[moved])))
                  if moved.any() else math.nan),
        gap_grows=float(np.mean(dgap[ok] > 0)) if ok.any() else math.nan))
  return pd.DataFrame(rows, columns=["measure", "pairs", "missing", "median_ratio", "grows",
                                     "with_gap", "gap_grows"])


def analyze(result: dict) -> Analysis:
  """Taus per setting (SETTINGS, each with replicas of its own and two or more; else every
  replica) and the randomization test, from measures.json's dict."""
  replicas, values = tables(result)
  taus, axes, seen = {}, {}, []
  for name, _, which in SETTINGS:
    rows = which(replicas).to_numpy(bool)
    if rows.sum() < 2 or any((rows == s).all() for s in seen):
      continue
    seen.append(rows)
    taus[name], axes[name] = tau_table(replicas[rows].reset_index(drop=True),
                                       values[rows].reset_index(drop=True))
  if not taus:  # one replica: its table says there is no tau
    taus["every replica"], axes["every replica"] = tau_table(replicas, values)
  return Analysis(settings=result["settings"], replicas=replicas, values=values, taus=taus,
                  axes=axes, randomization=randomization(replicas, values))


# --------------------------------------------------------------------------- words

def _num(x, spec: str = ".2f", scale: float = 1.0) -> str:
  return DASH if x is None or not np.isfinite(x) else f"{scale * x:{spec}}"


def _p(x) -> str:
  if x is None or not np.isfinite(x):
    return DASH
  return "< 0.001" if x < 0.001 else f"{x:.2g}"


def verdicts(t: pd.DataFrame) -> dict[str, pd.DataFrame]:
  """A tau table's measures by what they say of the gap: ``ranks`` (tau >= CLEAR, p <
  ALPHA), ``backwards`` (tau <= -CLEAR, p < ALPHA), ``near_zero`` (the others with a tau),
  ``constant`` and ``no_tau`` (fewer than two values)."""
  clear = t.p < ALPHA
  has = t.tau.notna()
  return dict(ranks=t[has & clear & (t.tau >= CLEAR)],
              backwards=t[has & clear & (t.tau <= -CLEAR)],
              near_zero=t[has & ~(clear & (t.tau.abs() >= CLEAR))],
              constant=t[~has & t.constant & (t.n >= 2)],
              no_tau=t[~has & ~(t.constant & (t.n >= 2))])


def _listing(t: pd.DataFrame, column: str = "tau") -> str:
  return ", ".join(f"{r.measure} ({_num(getattr(r, column))})" for r in t.itertuples())


def _words(t: pd.DataFrame, total: int) -> list[str]:
  """What a tau table says, in sentences computed from it."""
  v = verdicts(t)
  out = [(f"Rank the gap (tau ≥ {CLEAR:g}, p < {ALPHA:g}): {_listing(v['ranks'])}."
          if len(v["ranks"]) else
          f"No measure ranks the gap clearly (tau ≥ {CLEAR:g} with p < {ALPHA:g}).")]
  if len(v["near_zero"]):
    out.append(f"Do not rank it (tau near zero, or not told from chance): "
               f"{_listing(v['near_zero'])}.")
  if len(v["backwards"]):
    out.append(f"Rank it backwards (tau ≤ -{CLEAR:g}, p < {ALPHA:g}): "
               f"{_listing(v['backwards'])}.")
  if len(v["constant"]):
    out.append("Constant over these replicas, so no tau: "
               + ", ".join(v["constant"].measure) + ".")
  if len(v["no_tau"]):
    out.append("Fewer than two replicas with a value, so no tau: "
               + ", ".join(v["no_tau"].measure) + ".")
  missing = t[(t.missing > 0) & (t.n >= 2)]
  if len(missing):
    out.append("Left out of their measure's taus, replicas without a value (or a gap): "
               + ", ".join(f"{r.measure} ({r.missing} of {total})"
                           for r in missing.itertuples()) + ".")
  best = t[t.psi.notna()].sort_values("psi", ascending=False)
  if len(best) and len(t.columns) > 8:  # more than one varying axis
    out.append(f"Granulated over the axes (Psi), the highest: {_listing(best.head(3), 'psi')}.")
  return out


def _tau_section(a: Analysis, name: str, about: str) -> list[str]:
  t, axes = a.taus[name], a.axes[name]
  total = int(t.n.iloc[0] + t.missing.iloc[0]) if len(t) else 0
  groups = ", ".join(f"{SHORT[x]} {int(t[f'{x}_groups'].max())}" for x in axes)
  cells = [[r.measure, str(r.n), _num(r.tau), _p(r.p),
            *(_num(getattr(r, x)) for x in axes), _num(r.psi)] for r in t.itertuples()]
  return [f"## Kendall's tau with the gap: {name}", "",
          f"{total} replicas: {about}. Axes that vary: "
          f"{', '.join(SHORT[x] for x in axes) or 'none'}"
          + (f" (groups that differ in that axis alone: {groups})" if groups else "") + ".", "",
          *md_table(["measure", "n", "tau", "p", *(f"ψ {SHORT[x]}" for x in axes), "Ψ"],
                    cells, align="lrrr" + "r" * len(axes) + "r"), "",
          *(f"- {w}" for w in _words(t, total)), ""]


def _randomization_section(a: Analysis) -> list[str]:
  r = a.randomization.sort_values("median_ratio", ascending=False, na_position="last")
  head = ["## Randomization test: random labels against true labels", ""]
  if not r.pairs.any():
    return head + ["No random-label replica (kind labels, corruption 1) has a true-label twin "
                   "(corruption 0, the same model, hyper-parameters and seed): no test.", ""]
  lab = a.replicas[a.replicas.kind == "labels"]
  gaps = [lab[lab.corruption == p].gap.mean() for p in (0.0, 1.0)]
  pairs = int(r.pairs.max())
  cells = [[x.measure, str(x.pairs), _num(x.median_ratio, ".3g"),
            _num(x.grows, ".0f", 100), _num(x.with_gap, ".0f", 100)]
           for x in r.itertuples()]
  every = r[r.with_gap == 1.0].measure.tolist()
  most = r[(r.with_gap > 0.5) & (r.with_gap < 1.0)].measure.tolist()
  fails = r[r.with_gap <= 0.5].measure.tolist()
  rose = int(round((r.gap_grows * r.pairs).max()))
  words = [f"The gap is {_num(gaps[0])} with true labels and {_num(gaps[1])} with random "
           f"labels (means); it rose in {rose} of {pairs} pairs."]
  words += [f"Move with the gap in every pair: {', '.join(every) or 'none'}."]
  words += [f"In most pairs: {', '.join(most)}."] if most else []
  words += [f"Not with the gap (in half the pairs or fewer): {', '.join(fails)}."] if fails else []
  return head + [
      "Each random-label replica (corruption 1) against its true-label twin (corruption 0, "
      "the same model, hyper-parameters and seed): the network and the optimizer are the "
      "same, only the labels differ, so a measure that explains generalization must grow "
      "with the gap. *ratio*: the median of value(p=1) / value(p=0) over the pairs (where "
      "the value at p=0 is positive); *grows*: the share of pairs where the value rises; "
      "*with the gap*: where it moves the way the gap does.", "",
      *md_table(["measure", "pairs", "ratio", "grows (%)", "with the gap (%)"], cells,
                align="lrrrr"), "", *(f"- {w}" for w in words), ""]


def _source_words(a: Analysis) -> str:
  s = a.settings
  models = sorted(a.replicas.model.unique())
  steps = sorted(a.replicas.step.dropna().unique())
  at = f"{int(steps[0]):,}" if len(steps) == 1 else (
      f"{int(steps[0]):,} to {int(steps[-1]):,}" if steps else DASH)
  return (f"{len(a.replicas)} replicas of {', '.join(models)} from {s.get('run', 'a run')} "
          f"(zhang measures at step {s.get('step', DASH)}: "
          f"step{'s' if len(steps) > 1 else ''} {at})")


def report_lines(a: Analysis | dict) -> list[str]:
  """measures.md: the tau table of each setting, the randomization test, what they say."""
  a = a if isinstance(a, Analysis) else analyze(a)
  lines = ["# Generalization measures against the generalization gap", "",
           f"{_source_words(a)}. Each measure (Jiang et al., ICLR 2020) is oriented so that "
           f"a larger value predicts a larger gap = train accuracy - test accuracy. *tau*: "
           f"Kendall's tau-b between measure and gap over the replicas (*p*: two-sided); "
           f"*ψ axis*: the mean tau over the groups of replicas that differ in that axis "
           f"alone (Jiang et al.'s granulated tau); *Ψ*: the mean of the ψ; *n*: the "
           f"replicas with a value. A measure ranks the gap when tau ≥ {CLEAR:g} with "
           f"p < {ALPHA:g}.", ""]
  about = {name: text for name, text, _ in SETTINGS}
  for name in a.taus:
    lines += _tau_section(a, name, about[name])
  return lines + _randomization_section(a)


def summary_lines(a: Analysis) -> list[str]:
  """report.md's section: what the measures say, in a few lines, and a link to the rest."""
  t = a.taus[a.primary]
  ranks = verdicts(t)["ranks"]
  r = a.randomization
  words = (f"in the setting *{a.primary}*, {len(ranks)} of {len(t)} measures rank the gap "
           f"(Kendall's tau ≥ {CLEAR:g}, p < {ALPHA:g})"
           + (f": {_listing(ranks)}" if len(ranks) else ""))
  if r.pairs.any():
    words += (f"; with random labels, {int((r.with_gap == 1.0).sum())} move with the gap in "
              f"every one of {int(r.pairs.max())} pairs with their true-label twins")
  return ["## Generalization measures", "", f"{_source_words(a)}: {words}. Every setting, "
          f"the granulated taus and the randomization test: [{REPORT}]({REPORT}).", ""]


def write(out, result: Analysis | dict) -> list[epath.Path]:
  """Writes measures.md and its figures (``measures_plots``) to ``out``; returns their paths,
  the figures first."""
  a = result if isinstance(result, Analysis) else analyze(result)
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  figures = measures_plots.plot(a, out, clear=CLEAR)
  lines = report_lines(a) + ["## Figures", ""]
  for path in figures:
    caption = measures_plots.CAPTIONS[path.name]
    lines += [f"![{caption}]({path.name})", "", f"*{caption}*", ""]
  md = out / REPORT
  metrics_lib.write_bytes(md, "\n".join(lines).encode())
  return figures + [md]
