"""Reading ``zhang llc``'s output: load llc.json, plot it, and describe it in markdown.

``load(path)`` reads OUT/llc.json (or the folder holding it); ``plot(llc, out_dir)`` writes
``llc_vs_corruption.png`` (lambda-hat against corruption level per kind, with the chains'
standard errors) and, where several checkpoints were estimated, ``llc_vs_step.png``;
``report_lines(llc)`` is a markdown section (a table and a reading computed from the
numbers) that a report can embed; ``plot_traces`` draws every chain's loss. Figures are
built without pyplot, as ``zhang.analysis.plots`` builds its own.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections import defaultdict

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from zhang.analysis import plots
from zhang.errors import UsageError
from zhang.formatting import KIND_COLORS, corruption_colours, md_table
from zhang.formatting import condition_name as condition

DPI = plots.DPI
KIND_ORDER = ("labels", "shuffled_pixels", "random_pixels", "gaussian")
KIND_MARKERS = {"labels": "o", "shuffled_pixels": "s", "random_pixels": "^", "gaussian": "D"}


def load(path) -> dict:
  """llc.json's dict, from the file or the folder that holds it."""
  path = epath.Path(path)
  if path.is_dir():
    path = path / "llc.json"
  try:
    result = json.loads(path.read_text())
  except (OSError, ValueError):
    raise UsageError(f"{path} is missing or unreadable: write it with `zhang llc RUN --out "
                     f"DIR`") from None
  if not isinstance(result, dict) or not {"settings", "replicas"} <= set(result):
    raise UsageError(f"{path} is not an llc.json (it needs settings and replicas)")
  return result


def _order(e: dict) -> tuple:
  kind = e["kind"]
  return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind,
          e["corruption"], e["seed"], e["replica"])


HPARAM_FIELDS = (("learning_rate", "lr"), ("weight_decay", "wd"), ("augmentation", "aug"))
LINESTYLES = ("-", "--", ":", "-.")


def _hparams(e: dict) -> tuple:
  return tuple(e.get(f) for f, _ in HPARAM_FIELDS)


def _hp_namer(entries: list[dict]):
  """e -> "" when every entry shares its hyper-parameters, else the ones that vary, e.g.
  "wd 0.3": a grid over weight decay is read per value, not pooled."""
  varying = [(i, short) for i, (f, short) in enumerate(HPARAM_FIELDS)
             if len({_hparams(e)[i] for e in entries}) > 1]

  def name(e: dict) -> str:
    hp = _hparams(e)
    return ", ".join(f"{short} {hp[i]:g}" if isinstance(hp[i], (int, float)) else
                     f"{short} {hp[i]}" for i, short in varying)
  return name


def _hp_sort(hp: tuple) -> tuple:
  return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in hp)


def _last(entries: list[dict]) -> list[dict]:
  """Each replica's entry at its latest estimated step."""
  latest = {}
  for e in entries:
    if e["replica"] not in latest or e["step"] > latest[e["replica"]]["step"]:
      latest[e["replica"]] = e
  return sorted(latest.values(), key=_order)


def conditions(entries: list[dict], hp_name=None) -> list[dict]:
  """Entries grouped by (hyper-parameters, kind, corruption): the mean lambda-hat over
  seeds, its standard error from the chains' (combined over seeds), the seeds' range and
  mean L_n(w*). ``hp_name`` (default ``_hp_namer(entries)``) names the hyper-parameters
  that vary (``hp``), which the condition's ``name`` then carries."""
  hp_name = hp_name or _hp_namer(entries)
  groups = defaultdict(list)
  for e in entries:
    groups[(_hparams(e), e["kind"], e["corruption"])].append(e)
  out = []
  for (hp, kind, p), group in sorted(groups.items(), key=lambda kv: (_hp_sort(kv[0][0]),
                                                                     _order(kv[1][0]))):
    values = [e["llc"] for e in group if e["llc"] is not None]
    ses = [e["llc_se"] for e in group if e["llc"] is not None and e["llc_se"] is not None]
    hp_text = hp_name(group[0])
    name = condition(kind, p) + (f", {hp_text}" if hp_text else "")
    out.append(dict(kind=kind, corruption=p, name=name, hparams=hp, hp=hp_text,
                    replicas=len(group),
                    llc=float(np.mean(values)) if values else None,
                    se=math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else None,
                    low=min(values) if values else None, high=max(values) if values else None,
                    init_loss=float(np.mean([e["init_loss"] for e in group]))))
  return out


def _save(fig, path: epath.Path) -> epath.Path:
  return plots.save(fig, path)


def _title(s: dict) -> str:
  return (f"{s['model']} on {s['dataset']}: SGLD eps {s['step_size']:g}, gamma {s['gamma']:g},"
          f" n beta {s['nbeta']:.3g} ({s['nbeta_rule']}), {s['chains']} chains x "
          f"{s['draws']} draws")


def _log_if_wide(ax, axis: str, values, ratio: float = 30.0) -> None:
  """A log scale on ``axis`` where the positive values span more than ``ratio``."""
  v = [x for x in values if x is not None and x > 0]
  if v and max(v) > ratio * min(v) and len(v) == len([x for x in values if x is not None]):
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def plot(llc: dict, out_dir) -> list[epath.Path]:
  """Writes llc_vs_corruption.png and, with several steps, llc_vs_step.png to ``out_dir``;
  returns the paths. Hyper-parameter combinations that vary (a weight-decay grid) get a
  line style each."""
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  entries = [e for e in llc["replicas"] if e["llc"] is not None]
  combos = sorted({_hparams(e) for e in entries}, key=_hp_sort)
  style = {hp: LINESTYLES[i % len(LINESTYLES)] for i, hp in enumerate(combos)}
  written = [_save(_vs_corruption(llc, entries, style), out_dir / "llc_vs_corruption.png")]
  if len({e["step"] for e in entries}) > 1:
    written.append(_save(_vs_step(llc, entries, style), out_dir / "llc_vs_step.png"))
  return written


def _vs_corruption(llc: dict, entries: list[dict], style: dict) -> Figure:
  """lambda-hat against corruption at each replica's last step: a point per replica (the
  chains' standard error), a line through the means per kind and combination."""
  hp_name = _hp_namer(entries)
  fig = Figure(figsize=(8.0, 5.0), dpi=DPI, layout="constrained")
  ax = fig.subplots()
  last = _last(entries)
  kinds = sorted({e["kind"] for e in last}, key=lambda k: _order(dict(
      kind=k, corruption=0, seed=0, replica=0)))
  for i, kind in enumerate(kinds):
    color = KIND_COLORS.get(kind, f"C{i + 4}")
    marker = KIND_MARKERS.get(kind, "o")
    for h, hp in enumerate(style):
      mine = [e for e in last if e["kind"] == kind and _hparams(e) == hp]
      seeds = sorted({e["seed"] for e in mine})
      for j, e in enumerate(mine):  # offsets per seed, kind and combination keep points apart
        dx = 0.012 * (seeds.index(e["seed"]) - (len(seeds) - 1) / 2) + 0.012 * (i + h)
        label = None
        if j == 0:
          label = kind.replace("_", " ") + (f", {hp_name(e)}" if hp_name(e) else "")
        ax.errorbar(e["corruption"] + dx, e["llc"], yerr=e["llc_se"] or 0.0, fmt=marker,
                    color=color, ms=5, capsize=2, alpha=0.85, label=label,
                    mfc=color if h == 0 else "white")
      means = [c for c in conditions(mine, hp_name) if c["llc"] is not None]
      if len(means) > 1:
        ax.plot([c["corruption"] for c in means], [c["llc"] for c in means], style[hp],
                color=color, lw=1)
  _log_if_wide(ax, "y", [e["llc"] for e in last])
  ax.set_xlabel("label corruption p (the line: the mean over seeds; bars: the chains' "
                "standard error)")
  ax.set_ylabel("lambda-hat (local learning coefficient)")
  ax.set_title(_title(llc["settings"]), fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def _vs_step(llc: dict, entries: list[dict], style: dict) -> Figure:
  """lambda-hat against the checkpoint's step, a line per replica."""
  hp_name = _hp_namer(entries)
  fig = Figure(figsize=(8.0, 5.0), dpi=DPI, layout="constrained")
  ax = fig.subplots()
  by_replica = defaultdict(list)
  for e in entries:
    by_replica[e["replica"]].append(e)
  names = sorted({condition(e["kind"], e["corruption"]) for e in entries},
                 key=lambda n: _order(next(e for e in entries
                                           if condition(e["kind"], e["corruption"]) == n)))
  # Label corruption alone (modadd): the grokking figure's colours; with pixel kinds too,
  # one colour per condition.
  only_labels = all(e["kind"] == "labels" for e in entries)
  levels = corruption_colours(sorted({e["corruption"] for e in entries}))
  labelled = set()
  for _, mine in sorted(by_replica.items()):
    mine.sort(key=lambda e: e["step"])
    first = mine[0]
    name = condition(first["kind"], first["corruption"])
    label = name + (f", {hp_name(first)}" if hp_name(first) else "")
    color = levels[first["corruption"]] if only_labels else None
    ax.errorbar([e["step"] for e in mine], [e["llc"] for e in mine],
                yerr=[e["llc_se"] or 0.0 for e in mine], fmt="o", ls=style[_hparams(first)],
                ms=3, capsize=2, color=color or f"C{names.index(name) % 10}",
                label=None if label in labelled else label)
    labelled.add(label)
  _log_if_wide(ax, "y", [e["llc"] for e in entries])
  _log_if_wide(ax, "x", sorted({e["step"] for e in entries}), ratio=10.0)
  ax.set_xlabel("training step of the checkpoint")
  ax.set_ylabel("lambda-hat")
  ax.set_title(_title(llc["settings"]), fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  return fig


def plot_traces(llc: dict, traces: np.ndarray, out_dir) -> epath.Path:
  """llc_traces.png: every chain's minibatch loss against the SGLD step, one panel per
  replica (one colour per checkpoint step), L_n(w*) dashed, the burn-in shaded."""
  entries = llc["replicas"]
  burnin = llc["settings"]["burnin"]
  replicas = sorted({e["replica"] for e in entries})
  steps = sorted({e["step"] for e in entries})
  cols = min(5, len(replicas))
  rows = -(-len(replicas) // cols)
  fig = Figure(figsize=(3.0 * cols, 2.3 * rows + 0.4), dpi=DPI, layout="constrained")
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
  for ax in axes[len(replicas):]:
    ax.set_visible(False)
  stride = max(1, traces.shape[-1] // 1000)  # at most about 1000 points a line
  x = np.arange(traces.shape[-1])[::stride]
  for i, e in enumerate(entries):
    ax = axes[replicas.index(e["replica"])]
    color = f"C{steps.index(e['step']) % 10}"
    for chain in traces[i]:
      ax.plot(x, chain[::stride], color=color, lw=0.6, alpha=0.6)
    ax.axhline(e["init_loss"], color=color, ls="--", lw=0.8)
    ax.set_title(f"{e['replica']}: {condition(e['kind'], e['corruption'])}, seed {e['seed']}"
                 + ("" if e["llc"] is None else f"\nlambda-hat {e['llc']:.3g}"), fontsize=8)
  for ax in axes[:len(replicas)]:
    if burnin:
      ax.axvspan(0, burnin, color="0.9", zorder=0)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  fig.suptitle(_title(llc["settings"]) + "; minibatch loss per chain (burn-in shaded, "
               "L_n(w*) dashed" + (", one colour per checkpoint" if len(steps) > 1 else "")
               + ")", fontsize=9)
  out_dir = epath.Path(out_dir)
  return _save(fig, out_dir / "llc_traces.png")


TRACES = "llc_traces.npz"  # what `zhang llc` writes beside llc.json


def replot_traces(llc: dict, out_dir) -> epath.Path | None:
  """llc_traces.png again, from the llc_traces.npz that `zhang llc` wrote with ``llc``
  (llc.json's entries, in its order); None where there is none, or where it is damaged or
  holds other entries."""
  path = epath.Path(out_dir) / TRACES
  entries = llc["replicas"]
  try:
    with path.open("rb") as f, np.load(f) as saved:
      traces, replica, step = saved["traces"], saved["replica"], saved["step"]
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
    return None
  if (replica.tolist() != [e["replica"] for e in entries]
      or step.tolist() != [e["step"] for e in entries] or traces.ndim != 3):
    return None
  return plot_traces(llc, traces, out_dir)


def _num(x, digits: int = 3) -> str:
  return "-" if x is None else f"{x:.{digits}g}"


def _spearman(x, y) -> float | None:
  if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
    return None
  from scipy import stats
  return float(stats.spearmanr(x, y).statistic)


def report_lines(llc: dict) -> list[str]:
  """A markdown section: the settings, a table per condition, and what the numbers say."""
  s = llc["settings"]
  entries = llc["replicas"]
  last = _last(entries)
  d = max((e["num_params"] for e in entries), default=0)
  steps = sorted({e["step"] for e in entries})
  lines = ["## Local learning coefficient", "",
           f"lambda-hat = n beta (E[L_n(w)] - L_n(w*)) by SGLD from each replica's checkpoint "
           f"(Lau et al. 2023), on its own training set as it trained on it: n beta = "
           f"{s['nbeta']:.4g} ({s['nbeta_rule']}), step size {s['step_size']:g}, gamma "
           f"{s['gamma']:g}, {s['chains']} chains of {s['burnin']} burn-in and {s['draws']} "
           f"draws, batch {s['batch_size']}, seed {s['seed']}; step(s) "
           f"{', '.join(map(str, steps))}. The model has d = {d:,} parameters: a regular "
           f"model would have lambda = d/2 = {d / 2:,.0f}.", ""]
  rows = conditions(last)
  if len(steps) > 1:
    lines += [f"At each replica's last estimated step ({steps[-1]:,}):", ""]
  cells = [[c["name"], c["replicas"], _num(c["llc"]), _num(c["se"], 2),
            "-" if c["replicas"] < 2 or c["llc"] is None else
            f"{c['low']:.3g} - {c['high']:.3g}", f"{c['init_loss']:.2g}"] for c in rows]
  lines += md_table(["condition", "replicas", "lambda-hat", "se (chains)", "seeds' range",
                     "L_n(w*)"], cells, align="lrrrrr")
  lines += [""] + _reading(rows, last, entries, d)
  if len(steps) > 1:
    lines += step_table(entries)
  return lines


def step_table(entries: list[dict]) -> list[str]:
  """lambda-hat through training: one row per checkpoint step, one column per condition
  (and varying hyper-parameters), the mean over seeds."""
  entries = [e for e in entries if e["llc"] is not None]
  hp_name = _hp_namer(entries)
  names = [c["name"] for c in conditions(entries, hp_name)]
  cells = []
  for step in sorted({e["step"] for e in entries}):
    at = {c["name"]: c["llc"] for c in conditions([e for e in entries if e["step"] == step],
                                                  hp_name)}
    cells.append([f"{step:,}", *(_num(at.get(n)) for n in names)])
  return (["lambda-hat through training (mean over seeds at each checkpoint):", ""]
          + md_table(["step", *names], cells, align="r" * (len(names) + 1)) + [""])


def _reading(rows: list[dict], last: list[dict], entries: list[dict], d: int) -> list[str]:
  out = []
  trues = {}
  for hp in sorted({c["hparams"] for c in rows}, key=_hp_sort):
    labels = [c for c in rows if c["kind"] == "labels" and c["llc"] is not None
              and c["hparams"] == hp]
    true = next((c for c in labels if c["corruption"] == 0), None)
    if true is not None:
      trues[hp] = true
    if len(labels) < 2:
      continue
    lo, hi = labels[0], labels[-1]
    points = [(e["corruption"], e["llc"]) for e in last
              if e["kind"] == "labels" and e["llc"] is not None and _hparams(e) == hp]
    rho = _spearman([p for p, _ in points], [v for _, v in points])
    trend = ("grows" if hi["llc"] > lo["llc"] else "falls")
    ratio = f" ({hi['llc'] / lo['llc']:.2g}x)" if lo["llc"] > 0 else ""
    where = f" ({lo['hp']})" if lo["hp"] else ""
    out.append(f"- lambda-hat{where} {trend} with label corruption, from {lo['llc']:.3g} at "
               f"{lo['name']} to {hi['llc']:.3g} at {hi['name']}{ratio}"
               + ("" if rho is None else f"; the rank correlation of lambda-hat with the "
                  f"corruption level over the {len(points)} label replicas is {rho:.2f}")
               + ": " + ("the solutions that fit noisier labels use more effective "
                         "parameters." if trend == "grows" and (rho is None or rho > 0.5)
                         else "no monotone rise with corruption at these settings.")
               + (f" (The training loss at w* also differs: {lo['init_loss']:.2g} against "
                  f"{hi['init_loss']:.2g}.)" if max(lo["init_loss"], hi["init_loss"]) > 2 * min(
                      lo["init_loss"], hi["init_loss"]) else ""))
  for hp, true in trues.items():
    others = [c for c in rows if c["kind"] != "labels" and c["llc"] is not None
              and c["hparams"] == hp]
    if others and true["llc"] > 0:
      out.append("- Against true labels: " + ", ".join(
          f"{c['name']} {c['llc'] / true['llc']:.2g}x" for c in others) + ".")
  values = [e["llc"] for e in last if e["llc"] is not None]
  if values and d:
    out.append(f"- Every estimate is {100 * max(values) / (d / 2):.2g}% of d/2 or less: the "
               f"trained networks are far from regular (at this n beta and gamma, most "
               f"directions of w* are flat)." if max(values) < d / 2 else
               f"- The largest estimate, {max(values):.3g}, reaches d/2 = {d / 2:,.0f}.")
  steps = sorted({e["step"] for e in entries})
  if len(steps) > 1:
    first = {e["replica"]: e["llc"] for e in entries if e["step"] == steps[0]}
    final = {e["replica"]: e["llc"] for e in entries if e["step"] == steps[-1]}
    changes = [final[r] - first[r] for r in first
               if r in final and first[r] is not None and final[r] is not None]
    if changes:
      out.append(f"- From step {steps[0]} to {steps[-1]} the estimates moved by "
                 f"{np.median(changes):+.3g} (median over replicas; range "
                 f"{min(changes):+.3g} to {max(changes):+.3g}).")
  diverged = sum(1 for e in entries if e["diverged_chains"])
  unsettled = sum(1 for e in entries if e.get("settled") is False)
  if diverged or unsettled:
    out.append(f"- Caution: {diverged} estimate(s) had diverged chains and {unsettled} had "
               f"chains that had not settled (see `zhang llc`'s warnings); compare settings "
               f"with `zhang llc --sweep`.")
  else:
    out.append("- Every chain stayed finite and settled (the last two quarters of the draws "
               "agree within tolerance).")
  return out + [""]


def sweep_lines(result: dict) -> list[str]:
  """A plain-text table of a sweep: one row per replica (and step), one column per
  combination of the swept settings; ``div`` where every chain diverged, ``*`` not
  settled, ``!`` some chains diverged."""
  combos = result["combinations"]
  swept = result["swept"]
  lines = ["columns:"]
  for i, c in enumerate(combos):
    s = c["settings"]
    values = {name: s["nbeta_rule"] if name == "nbeta" and s["nbeta_rule"] != "number"
              else s[name] for name in swept}
    lines.append(f"  {chr(65 + i) if i < 26 else i}: " + ", ".join(
        f"{name}={v:g}" if isinstance(v, (int, float)) else f"{name}={v}"
        for name, v in values.items()) + f" (n beta {s['nbeta']:.4g})")
  head = f"{'replica':>7} {'condition':<18} {'seed':>4} {'step':>6} "
  head += "".join(f"{(chr(65 + i) if i < 26 else str(i)):>10}" for i in range(len(combos)))
  lines.append(head)
  rows = combos[0]["replicas"]
  for j, e in enumerate(rows):
    cells = []
    for c in combos:
      f = c["replicas"][j]
      if f["llc"] is None:
        cells.append("div")
        continue
      mark = ("!" if f["diverged_chains"] else "") + ("*" if f["settled"] is False else "")
      cells.append(f"{f['llc']:.4g}{mark}")
    lines.append(f"{e['replica']:>7} {condition(e['kind'], e['corruption']):<18} "
                 f"{e['seed']:>4} {e['step']:>6} " + "".join(f"{x:>10}" for x in cells))
  lines.append("div: every chain diverged; !: some chains diverged; *: not settled")
  return lines
