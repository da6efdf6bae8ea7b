"""ntk.json (``zhang ntk``'s output) read, tabulated and put in words, without jax.

``load(path)`` reads it; ``summary_lines(result)`` is a markdown section (a table per
corruption level, then where the kernel regime's prediction fails and by how much, in
sentences computed from the numbers) that a report can embed; ``text_lines`` is the same
for a terminal; ``zhang.analysis.ntk_plots.plot(result, out_dir)`` writes the figures.

ntk.json: ``{"settings": {...}, "replicas": [...]}``. ``settings`` holds every setting the
kernels and predictions used (n, the kernel's definition and dtype, the loss and its
quadratic, the criteria and threshold, the schedules, the horizon, the memory plan) and
``timing``. Each replica has its coordinates (replica, kind, corruption, seed, learning
rate, ...), ``predicted_fit_step`` and ``predicted_slowdown`` (the run's schedule, the
settings' ``criterion``), ``measured_fit_step`` and ``measured_slowdown`` (summary.json),
``kernel_test_acc`` beside ``network_test_acc``, and every prediction by name:
``predicted_fit_step_{schedule}_{criterion}`` and ``predicted_slowdown_{...}`` for the
schedules ``run`` and ``constant_lr`` and the criteria ``accuracy`` and ``residual``
(``..._at_least``: a lower bound where a replica never fits within the horizon),
``predicted_residual_{schedule}`` at ``settings.curve_steps``, and the kernel's numbers
(``kernel_eigenvalue_min``, ``kernel_class_coupling``, ``energy_top_classes``, ...).
"""

from __future__ import annotations

import json
import math
from typing import Iterable

import numpy as np
from etils import epath

from zhang.errors import UsageError
from zhang.formatting import md_table
from zhang.formatting import pct as _pct

NTK_JSON = "ntk.json"
# What ntk.json's predictions are named by: ``predicted_fit_step_{schedule}_{criterion}``.
CRITERIA = ("accuracy", "residual")
SCHEDULES = ("run", "constant_lr")
DEFAULT_CRITERION = "accuracy"
DEFAULT_THRESHOLD = 0.1  # residual fraction that counts as fitted (``zhang ntk --threshold``)
FIGURES = ("ntk_fig1b.png", "ntk_test_acc.png", "ntk_residual.png")
REQUIRED = ("replica", "kind", "corruption", "seed", "predicted_fit_step",
            "predicted_slowdown", "measured_slowdown", "kernel_test_acc")
PIXEL_KINDS = ("shuffled_pixels", "random_pixels", "gaussian")


def load(path) -> dict:
  """ntk.json from its path or its folder (local or gs://); UsageError when it is not one."""
  path = epath.Path(path)
  if path.is_dir():
    path = path / NTK_JSON
  try:
    result = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UsageError(f"{path} is not a readable ntk.json ({type(e).__name__}): write one "
                     f"with zhang ntk RUN --out DIR") from None
  if (not isinstance(result, dict) or set(result) != {"settings", "replicas"}
      or any(k not in r for r in result["replicas"] for k in REQUIRED)):
    raise UsageError(f"{path} is not an ntk.json of zhang ntk (settings and replicas with "
                     f"{', '.join(REQUIRED)})")
  return result


# --------------------------------------------------------------------------- tables

def _mean(values: Iterable) -> float | None:
  v = [x for x in values if x is not None and math.isfinite(x)]
  return float(np.mean(v)) if v else None


def label_replicas(result: dict) -> list[dict]:
  """The replicas of the label-corruption test (kind ``labels``), Figure 1b's."""
  return [r for r in result["replicas"] if r["kind"] == "labels"]


def _other(criterion: str) -> str:
  return CRITERIA[1 - CRITERIA.index(criterion)]


def by_corruption(result: dict) -> list[dict]:
  """One row per label-corruption level: means over its replicas (seeds, hyper-parameters)
  of fit steps, slowdowns and test accuracies (of those that have them), and how many
  replicas never fitted within the run (measured) or the prediction's horizon
  (``never_<field>``)."""
  criterion = result["settings"]["criterion"]
  constant = f"predicted_slowdown_constant_lr_{criterion}"
  rows = []
  for p in sorted({r["corruption"] for r in label_replicas(result)}):
    reps = [r for r in label_replicas(result) if r["corruption"] == p]
    row = dict(corruption=p, replicas=len(reps))
    for key in ("measured_fit_step", "predicted_fit_step", "measured_slowdown",
                "predicted_slowdown", "predicted_slowdown_constant_lr_accuracy",
                "predicted_slowdown_constant_lr_residual", "kernel_test_acc",
                "network_test_acc", "predicted_residual_final_run", "energy_top_classes",
                "label_noise"):
      row[key] = _mean(r.get(key) for r in reps)
    for key in ("measured_fit_step", "predicted_fit_step"):
      row[f"never_{key}"] = sum(r.get(key) is None for r in reps)
    row[f"never_{constant}"] = sum(r.get(constant) is None for r in reps)
    rows.append(row)
  return rows


def _x(v, digits: int = 2) -> str:
  return "–" if v is None else f"{v:.{digits}f}x"


def _step(v) -> str:
  return "–" if v is None else f"{v:,.0f}"




def _never(row: dict, key: str, text: str) -> str:
  """A mean over the replicas that have a value, saying how many never fitted."""
  count = row.get(f"never_{key}", 0)
  if count == 0:
    return text
  return "never" if count == row["replicas"] else f"{text} ({count} never)"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
  """The per-corruption table (then one row per randomized-input kind): header, cells."""
  s = result["settings"]
  crit, other = s["criterion"], _other(s["criterion"])
  head = ["corruption", "measured fit step", "measured slowdown", "predicted fit step",
          "predicted slowdown", f"predicted slowdown, constant lr ({crit})",
          f"predicted slowdown, constant lr ({other})", "kernel test acc %",
          "network test acc %"]
  constant = f"predicted_slowdown_constant_lr_{crit}"
  cells = []
  for row in by_corruption(result):
    cells.append([f"{row['corruption']:g}",
                  _never(row, "measured_fit_step", _step(row["measured_fit_step"])),
                  _x(row["measured_slowdown"]),
                  _never(row, "predicted_fit_step", _step(row["predicted_fit_step"])),
                  _x(row["predicted_slowdown"]),
                  _never(row, constant, _x(row[constant])),
                  _x(row[f"predicted_slowdown_constant_lr_{other}"]),
                  _pct(row["kernel_test_acc"]), _pct(row["network_test_acc"])])
  for kind in PIXEL_KINDS:
    reps = [r for r in result["replicas"] if r["kind"] == kind]
    if reps:
      mean = lambda k, reps=reps: _mean(r.get(k) for r in reps)
      cells.append([kind.replace("_", " "), _step(mean("measured_fit_step")),
                    _x(mean("measured_slowdown")), _step(mean("predicted_fit_step")),
                    _x(mean("predicted_slowdown")), _x(mean(constant)),
                    _x(mean(f"predicted_slowdown_constant_lr_{other}")),
                    _pct(mean("kernel_test_acc")), _pct(mean("network_test_acc"))])
  return head, cells


# --------------------------------------------------------------------------- words

def _criterion_words(s: dict, criterion: str) -> str:
  if criterion == "accuracy":
    return "its train accuracy reaching the run's fit_threshold"
  return f"its residual falling to {s['threshold']:g} of its start"


def findings(result: dict) -> list[str]:
  """Where the kernel regime's prediction fails and by how much, in sentences computed from
  the numbers."""
  s = result["settings"]
  rows = by_corruption(result)
  corrupted = [r for r in rows if r["corruption"] > 0]
  out = _true_label_words(s, rows) + _never_words(result, corrupted) + _energy_words(s, rows)
  out += _constant_lr_words(s, corrupted)
  shape = _shape_words(corrupted, f"predicted_slowdown_constant_lr_{s['criterion']}")
  return out + ([shape] if shape else []) + _pixel_words(result) + _accuracy_words(rows)


def _true_label_words(s: dict, rows: list[dict]) -> list[str]:
  base = next((r for r in rows if r["corruption"] == 0), None)
  if base is None or not base["measured_fit_step"]:
    return []
  pred, meas = base["predicted_fit_step"], base["measured_fit_step"]
  if pred is None:
    return [f"True labels: the kernel regime never fits them within {s['horizon']:,} steps; "
            f"the network fitted them at step {_step(meas)}."]
  return [f"True labels: predicted fit at step {_step(pred)}, measured {_step(meas)}: the "
          f"kernel regime is {_ratio_words(pred / meas)}."]


def _never_words(result: dict, corrupted: list[dict]) -> list[str]:
  """The corrupted-label replicas the kernel regime never fits under the run's schedule."""
  s = result["settings"]
  never = [r for r in label_replicas(result)
           if r["corruption"] > 0 and r.get("predicted_fit_step") is None]
  if not never:
    return []
  total = sum(r["replicas"] for r in corrupted)
  stall = [r["predicted_residual_final_run"] for r in never
           if r.get("predicted_residual_final_run") is not None] or [math.nan]
  fitted = sum(r["replicas"] - r["never_measured_fit_step"] for r in corrupted)
  return [f"Under the run's learning-rate decay the kernel regime never fits {len(never)} of "
          f"the {total} corrupted-label replicas within {s['horizon']:,} steps (by "
          f"{_criterion_words(s, s['criterion'])}): their predicted residual stalls at "
          f"{_pct(min(stall))}-{_pct(max(stall))}% of its start, while the network fitted "
          f"{fitted} of them."]


def _energy_words(s: dict, rows: list[dict]) -> list[str]:
  energy = [(r["corruption"], r["energy_top_classes"]) for r in rows
            if r.get("energy_top_classes") is not None]
  if len(energy) < 2:
    return []
  return [f"The initial residual's share on the kernel's {s.get('num_classes', 'C')} largest "
          f"eigenvalues, the directions the kernel fits fastest: "
          + ", ".join(f"{100 * e:.0f}% at corruption {c:g}" for c, e in energy) + "."]


def _constant_lr_words(s: dict, corrupted: list[dict]) -> list[str]:
  """The constant-rate predictions against the measured slowdowns, per criterion."""
  out = []
  for crit in (s["criterion"], _other(s["criterion"])):
    key = f"predicted_slowdown_constant_lr_{crit}"
    pairs = [(r["corruption"], r[key], r["measured_slowdown"]) for r in corrupted
             if r[key] is not None and r["measured_slowdown"]]
    if not pairs:
      continue
    ratios = [p / m for _, p, m in pairs]
    worst = max(range(len(pairs)), key=lambda i: abs(math.log(ratios[i])))
    c, p, m = pairs[worst]
    out.append(f"With the learning rate never decayed and {_criterion_words(s, crit)} as "
               f"the criterion, the predicted slowdown is "
               f"{_range([q for _, q, _ in pairs])} against measured "
               f"{_range([q for _, _, q in pairs])} "
               f"({_span_words(min(ratios), max(ratios))}); the largest miss is at "
               f"corruption {c:g}: {p:.1f}x predicted, {m:.1f}x measured.")
  return out


def _pixel_words(result: dict) -> list[str]:
  s, pixels = result["settings"], []
  for kind in PIXEL_KINDS:
    reps = [r for r in result["replicas"] if r["kind"] == kind]
    meas = _mean(r.get("measured_slowdown") for r in reps)
    if reps and meas is not None:
      run = _mean(r.get("predicted_slowdown") for r in reps)
      constant = _mean(r.get(f"predicted_slowdown_constant_lr_{s['criterion']}")
                       for r in reps)
      with_run = ("never fits with the run's schedule" if run is None else
                  f"{_x(run)} predicted with the run's schedule")
      pixels.append(f"{kind.replace('_', ' ')} {with_run}, {_x(constant)} with a constant "
                    f"rate, {_x(meas)} measured")
  if not pixels:
    return []
  return ["Randomized inputs, slowdown against true labels: " + "; ".join(pixels) + "."]


def _accuracy_words(rows: list[dict]) -> list[str]:
  acc = [(r["corruption"], r["kernel_test_acc"], r["network_test_acc"]) for r in rows
         if r["kernel_test_acc"] is not None and r["network_test_acc"] is not None]
  if not acc:
    return []
  gaps = [100 * (k - n) for _, k, n in acc]
  worst = max(range(len(acc)), key=lambda i: abs(gaps[i]))
  c, k, n = acc[worst]
  return [f"Test accuracy: kernel interpolation is within {abs(gaps[worst]):.1f} points of "
          f"the network at every corruption level (the largest gap at {c:g}: {_pct(k)}% "
          f"kernel, {_pct(n)}% network); at corruption {acc[-1][0]:g}, {_pct(acc[-1][1])}% "
          f"and {_pct(acc[-1][2])}%."]


def _ratio_words(ratio: float) -> str:
  if 0.9 <= ratio <= 1.1:
    return f"within 10% of the network ({ratio:.2f}x)"
  return (f"{ratio:.1f}x slower than the network" if ratio > 1 else
          f"{1 / ratio:.1f}x faster than the network")


def _range(values: list[float]) -> str:
  lo, hi = f"{min(values):.1f}x", f"{max(values):.1f}x"
  return lo if lo == hi else f"{lo} to {hi}"


def _span_words(lo: float, hi: float) -> str:
  """How predicted / measured ratios between ``lo`` and ``hi`` miss."""
  if 0.9 <= lo and hi <= 1.1:
    return "within 10% of the measured slowdown"
  if lo >= 1:
    return f"it overestimates the slowdown {_range([lo, hi])}"
  if hi <= 1:
    return f"it underestimates the slowdown {_range([1 / hi, 1 / lo])}"
  return f"from {1 / lo:.1f}x under to {hi:.1f}x over the measured slowdown"


def _shape_words(corrupted: list[dict], key: str) -> str | None:
  """Whether the measured and predicted slowdowns grow with corruption, and where the
  measured one peaks."""
  meas = [(r["corruption"], r["measured_slowdown"]) for r in corrupted
          if r["measured_slowdown"] is not None]
  pred = [(r["corruption"], r[key]) for r in corrupted if r[key] is not None]
  if len(meas) < 3:
    return None
  rising = lambda pts: all(b[1] >= a[1] * 0.95 for a, b in zip(pts, pts[1:]))
  peak = max(meas, key=lambda t: t[1])
  values = ", ".join(f"{p:g}: {v:.1f}x" for p, v in meas)
  if rising(meas):
    text = "The measured slowdown grows with corruption"
  elif peak == meas[-1]:  # highest at the last level, with a dip before it
    text = f"The measured slowdown is not monotone in corruption ({values})"
  else:
    text = (f"The measured slowdown is not monotone in corruption: it peaks at {peak[0]:g} "
            f"({peak[1]:.1f}x) and is {meas[-1][1]:.1f}x at {meas[-1][0]:g}")
  if len(pred) >= 3:
    peak_p = max(pred, key=lambda t: t[1])
    text += ("; the predicted one (constant rate) grows with it" if rising(pred) else
             f"; the predicted one (constant rate) peaks at {peak_p[0]:g} "
             f"({peak_p[1]:.1f}x)")
  return text + "."


def _method_words(s: dict) -> str:
  quadratic = ("its cross-entropy expanded at zero logits" if s["loss"] == "cross_entropy"
               else "1/2 |f - y|^2")
  return (f"{s['model']} on {s['dataset']}: the class-averaged tangent kernel of the logits "
          f"at initialization on the first {s['n']:,} training examples; the network "
          f"linearized there and trained full batch with the run's schedule and momentum "
          f"on {quadratic}; fitted at {_criterion_words(s, s['criterion'])}. Slowdown: fit "
          f"step over the true-label replica's of the same seed. Kernel test accuracy: "
          f"minimum-norm interpolation with the same kernel.")


def summary_lines(result: dict) -> list[str]:
  """A markdown section for a report: the per-corruption table and the findings."""
  head, cells = table_rows(result)
  lines = ["## Kernel regime (empirical NTK at initialization)", "",
           _method_words(result["settings"]), "",
           *md_table(head, cells)]
  lines += ["", "Where the prediction fails:", ""]
  lines += [f"- {text}" for text in findings(result)]
  return lines


def text_lines(result: dict) -> list[str]:
  """A terminal summary: one line per replica, then the findings."""
  s = result["settings"]
  crit = s["criterion"]
  lines = [f"{'replica':>7} {'kind':<16} {'p':>4} {'seed':>4} {'fit':>6} {'pred fit':>8} "
           f"{'slow':>6} {'pred':>6} {'pred c':>6} {'kernel':>6} {'net':>6}"]
  for r in result["replicas"]:
    lines.append(
        f"{r['replica']:>7} {r['kind']:<16} {r['corruption']:>4.2f} {r['seed']:>4} "
        f"{_step(r['measured_fit_step']):>6} {_step(r['predicted_fit_step']):>8} "
        f"{_x(r['measured_slowdown']):>6} {_x(r['predicted_slowdown']):>6} "
        f"{_x(r.get(f'predicted_slowdown_constant_lr_{crit}')):>6} "
        f"{_pct(r['kernel_test_acc']):>6} {_pct(r['network_test_acc']):>6}")
  lines.append(f"fit / pred fit: measured and predicted fit step (the kernel regime, the "
               f"run's schedule, fitted at {_criterion_words(s, crit)}; - never within "
               f"{s['horizon']:,} steps); slow / pred / pred c: measured, predicted and "
               f"predicted with a constant learning rate slowdown; kernel / net: test "
               f"accuracy %.")
  return lines + findings(result)
