"""kernel_movement.json (``zhang ntk RUN --steps``) read back: how far each replica's tangent
kernel moved, by regime (parameterization and output scale), as a figure and report lines.

Reads files only (no jax). The figure, kernel_movement.png: the kernel distance and the
kernel-target alignment against the step, one line per replica, coloured by
parameterization and output scale, thicker for wider networks, solid for true labels and
dashed for corrupted ones; the distance on a log scale (from the first
saved step after 0: lazier regimes sit orders of magnitude lower). Built without pyplot, as
``zhang.analysis.plots``.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from etils import epath
from matplotlib import colormaps
from matplotlib.figure import Figure

from zhang.analysis import plots

FILE = "kernel_movement.json"
FIGURE = "kernel_movement.png"


def load(path) -> dict:
  """kernel_movement.json from its folder or the file itself."""
  path = epath.Path(path)
  if path.is_dir():
    path = path / FILE
  return json.loads(path.read_text())


def regime(row: dict) -> str:
  """A replica's regime in words: its parameterization (and width, for a study over
  widths), and its output scale unless 1."""
  name = row.get("parameterization", "standard")
  width = _width(row.get("model", ""))
  name = f"{name} {width}" if width else name
  alpha = float(row.get("output_scale", 1.0))
  return name if alpha == 1.0 else f"{name}, alpha {alpha:g}"


def _width(model: str) -> int:
  """The hidden width a model's name gives (mlp_DxW, mlp_tokens_W), 0 for none."""
  match = re.fullmatch(r"mlp_(?:[0-9]+x|tokens_)([0-9]+)(?:_[a-z_]+)?", model)
  return int(match[1]) if match else 0


def _regimes(rows: list[dict]) -> list[str]:
  """The regimes in a stable order: parameterization, width, then output scale."""
  keys = {regime(r): (r.get("parameterization", "standard"), _width(r.get("model", "")),
                      float(r.get("output_scale", 1))) for r in rows}
  return sorted(keys, key=lambda k: keys[k])


def _family(row: dict) -> str:
  """A replica's regime without its width: parameterization and output scale."""
  name = row.get("parameterization", "standard")
  alpha = float(row.get("output_scale", 1.0))
  return name if alpha == 1.0 else f"{name}, alpha {alpha:g}"


def plot(result: dict, out_dir) -> list[str]:
  """Writes kernel_movement.png into ``out_dir``; returns its path. A colour per
  parameterization and output scale, thicker lines for wider networks."""
  rows = result["rows"]
  families = sorted({_family(r) for r in rows})
  color = dict(zip(families, colormaps["tab10"](np.arange(len(families)) % 10)))
  widths = sorted({_width(r.get("model", "")) for r in rows})
  lw = dict(zip(widths, np.linspace(0.8, 2.6, len(widths)) if len(widths) > 1 else [1.4]))
  fig = Figure(figsize=(plots.FIGSIZE[0] * 1.6, plots.FIGSIZE[1]), dpi=plots.DPI,
               layout="constrained")
  axes = fig.subplots(1, 2)
  for ax, key, title in zip(axes, ("kernel_distance", "alignment"),
                            ("kernel distance 1 - <K0, Kt> / (|K0| |Kt|)",
                             "centred kernel-target alignment")):
    for model, replica in sorted({(r["model"], r["replica"]) for r in rows}):
      mine = sorted((r for r in rows if (r["model"], r["replica"]) == (model, replica)),
                    key=lambda r: r["step"])
      first = mine[0]
      if key == "kernel_distance":  # 0 at step 0, then orders of magnitude apart: log scale
        mine = [r for r in mine if r["step"] > 0 and r[key] > 0]
      ax.plot([r["step"] for r in mine], [r[key] for r in mine], color=color[_family(first)],
              ls="-" if first["corruption"] == 0 else "--",
              lw=lw[_width(first.get("model", ""))], alpha=0.8)
    if key == "kernel_distance" and any(r[key] > 0 for r in rows):
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3)
  for name in families:
    axes[0].plot([], [], color=color[name], label=name)
  if len(widths) > 1:
    for w in widths:
      axes[0].plot([], [], color="grey", lw=lw[w], label=f"width {w:,}")
  axes[0].plot([], [], color="grey", ls="--", label="corrupted labels")
  axes[0].legend(fontsize=7, frameon=False)
  path = plots.save(fig, epath.Path(out_dir) / FIGURE)
  return [os.fspath(path)]


def table(result: dict, test_acc: dict | None = None) -> list[dict]:
  """Per regime and corruption level, at the last step: the mean kernel distance and
  alignment over replicas (and at step 0, the alignment), how many replicas, and the mean
  final test accuracy where ``test_acc`` ((model, replica) -> accuracy) has it."""
  rows = result["rows"]
  test_acc = test_acc or {}
  last = max(r["step"] for r in rows)
  out = []
  for name in _regimes(rows):
    for p in sorted({r["corruption"] for r in rows}):
      at = lambda t, name=name, p=p: [r for r in rows if regime(r) == name
                                      and r["corruption"] == p and r["step"] == t]
      end, start = at(last), at(0)
      if end:
        accs = [test_acc[r["model"], r["replica"]] for r in end
                if (r["model"], r["replica"]) in test_acc]
        out.append(dict(regime=name, corruption=p, replicas=len(end), step=last,
                        test_acc=float(np.mean(accs)) if accs else float("nan"),
                        kernel_distance=float(np.mean([r["kernel_distance"] for r in end])),
                        alignment_start=float(np.mean([r["alignment"] for r in start]))
                        if start else float("nan"),
                        alignment=float(np.mean([r["alignment"] for r in end]))))
  return out


def report_lines(result: dict, test_acc: dict | None = None) -> list[str]:
  """report.md's section: the table (with the final test accuracy of ``test_acc``, see
  ``table``), the figure, where it came from."""
  s = result["settings"]
  lines = ["## Kernel movement (lazy or rich)", "",
           f"The class-averaged tangent kernel on the first {s['n']} training examples of "
           f"each replica, at steps {', '.join(map(str, s['steps']))} (`zhang ntk RUN "
           f"--steps`), against its kernel at initialization.", "",
           "| regime | corruption | replicas | " + ("test accuracy | " if test_acc else "")
           + f"kernel distance at step {max(s['steps'])} | alignment at 0 | alignment at "
           f"{max(s['steps'])} |", "|---|---|---|" + ("---|" if test_acc else "")
           + "---|---|---|"]
  for row in table(result, test_acc):
    acc = f"{row['test_acc']:.3f} | " if test_acc else ""
    lines.append(f"| {row['regime']} | {row['corruption']:g} | {row['replicas']} | {acc}"
                 f"{row['kernel_distance']:.3g} | {row['alignment_start']:.3f} | "
                 f"{row['alignment']:.3f} |")
  return lines + ["", f"![kernel movement]({FIGURE})", ""]
