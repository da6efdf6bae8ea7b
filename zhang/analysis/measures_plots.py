"""The figures of measures.json: each measure against the gap, and the taus sorted.

Both take an ``Analysis`` of ``zhang.analysis.measures`` (not imported here: that module
imports this one) and are built without pyplot, as ``zhang.analysis.plots`` builds its own.
"""

from __future__ import annotations

import math

import numpy as np
from etils import epath
from matplotlib import colormaps
from matplotlib.figure import Figure

from zhang.analysis import plots
from zhang.formatting import KIND_COLORS, corruption_colours

SCATTER = "measures_vs_gap.png"
BARS = "measures_tau.png"
CAPTIONS = {
    SCATTER: "Each measure against the generalization gap (train - test accuracy), a point "
             "per replica, coloured by the grid axis that moves the measure most (zhang "
             "measures).",
    BARS: "Kendall's tau of each measure with the generalization gap, per setting, sorted "
          "(zhang measures).",
}
SETTING_COLORS = {"true labels": KIND_COLORS["labels"], "label corruption": "#d62728",
                  "every replica": "#7f7f7f"}


def plot(a, out_dir, clear: float = 0.2) -> list[epath.Path]:
  """Writes measures_vs_gap.png and measures_tau.png to ``out_dir``; returns their paths
  (none for measures with no value at all)."""
  out_dir = epath.Path(out_dir)
  names = [n for n in a.values.columns if np.isfinite(a.values[n]).any()]
  if not names:
    return []
  return [plots.save(scatter(a, names), out_dir / SCATTER),
          plots.save(bars(a, clear), out_dir / BARS)]


def colour_axis(a, measure: str) -> str | None:
  """The axis along which ``measure`` moves most: the largest |psi| in the primary setting
  (the one the panels' taus are from), else in another; else corruption or kind where they
  vary; else None."""
  for name in sorted(a.taus, key=lambda n: n != a.primary):
    row = a.taus[name].set_index("measure").loc[measure]
    psis = {x: abs(row[x]) for x in a.axes[name] if np.isfinite(row[x])}
    if psis:
      return max(psis, key=psis.get)
  return next((x for x in ("corruption", "kind") if a.replicas[x].nunique() > 1), None)


def _colours(axis: str | None, values) -> dict:
  """A colour per value of ``axis``: Figure 1's for corruption and kinds, else a cycle or,
  past ten values, a ramp."""
  levels = sorted(set(values), key=lambda v: (isinstance(v, str), v))
  if axis == "corruption":
    found = corruption_colours(levels)
    if all(found.get(v) for v in levels):
      return {v: found[v] for v in levels}
  if axis == "kind":
    return {v: KIND_COLORS.get(v, f"C{i}") for i, v in enumerate(levels)}
  if len(levels) <= 10:
    return {v: f"C{i}" for i, v in enumerate(levels)}
  ramp = colormaps["viridis"]
  return {v: ramp(i / (len(levels) - 1)) for i, v in enumerate(levels)}


def _log_if_wide(ax, values, ratio: float = 30.0) -> None:
  """A log y-scale where every value is positive and they span more than ``ratio``."""
  v = values[np.isfinite(values)]
  if len(v) and (v > 0).all() and v.max() > ratio * v.min():
    ax.set_yscale("log")


def _label(axis: str, value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def scatter(a, names: list[str]) -> Figure:
  """A panel per measure: its value (y) against the gap (x), a point per replica."""
  cols = min(4, len(names))
  rows = math.ceil(len(names) / cols)
  fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.4), dpi=plots.DPI, layout="constrained")
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
  for ax in axes[len(names):]:
    ax.set_visible(False)
  taus = a.taus[a.primary].set_index("measure").tau
  gap = a.replicas.gap.to_numpy(float)
  for ax, name in zip(axes, names):
    y = a.values[name].to_numpy(float)
    axis = colour_axis(a, name)
    column = a.replicas[axis] if axis else None
    colours = _colours(axis, column) if axis else {None: "C0"}
    for value, colour in colours.items():
      mine = np.isfinite(y) & np.isfinite(gap) & (
          (column == value).to_numpy() if axis else True)
      ax.scatter(gap[mine], y[mine], s=12, color=colour, alpha=0.8,
                 label=_label(axis, value) if axis else None)
    _log_if_wide(ax, y)
    ax.set_title(f"{name}\ntau {taus[name]:.2f} ({a.primary})" if np.isfinite(taus[name])
                 else f"{name}\nno tau ({a.primary})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if axis and len(colours) <= 8:
      ax.legend(title=axis.replace("_", " "), fontsize=6, title_fontsize=6, frameon=False)
  fig.supxlabel("generalization gap (train accuracy - test accuracy)", fontsize=9)
  return fig


def bars(a, clear: float = 0.2) -> Figure:
  """Horizontal bars: each measure's tau with the gap in each setting, sorted by the
  primary setting's tau (highest on top); dashed lines at +-``clear``."""
  order = a.taus[a.primary].measure.tolist()[::-1]
  settings = list(a.taus)
  height = 0.8 / len(settings)
  fig = Figure(figsize=(8.0, 1.2 + 0.32 * len(order) * max(1, len(settings) / 2)),
               dpi=plots.DPI, layout="constrained")
  ax = fig.subplots()
  y = np.arange(len(order))
  for i, name in enumerate(settings):
    tau = a.taus[name].set_index("measure").tau.reindex(order).to_numpy(float)
    ax.barh(y + (i - (len(settings) - 1) / 2) * height, np.nan_to_num(tau), height=height,
            color=SETTING_COLORS.get(name, f"C{i}"), label=name)
  ax.set_yticks(y, order, fontsize=7)
  ax.axvline(0, color="k", lw=0.8)
  for x in (-clear, clear):
    ax.axvline(x, color="0.5", lw=0.8, ls="--")
  ax.set_xlim(-1, 1)
  ax.set_xlabel("Kendall's tau with the gap (missing bar: no tau)")
  ax.grid(axis="x", alpha=0.3)
  ax.legend(fontsize=8, frameon=False, loc="lower right")
  return fig
