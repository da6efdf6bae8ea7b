"""ntk.json's figures: Figure 1b's axes with the kernel regime's predicted slowdown beside
the measured one (ntk_fig1b.png), kernel interpolation's test accuracy beside the network's
(ntk_test_acc.png), and the predicted residual curves under both schedules with each
replica's measured fit step marked (ntk_residual.png).

Built without pyplot, as ``zhang.analysis.plots``: no backend is chosen or changed, and a
headless machine renders them with Agg.
"""

from __future__ import annotations

import os

import numpy as np
from etils import epath
from matplotlib import colormaps
from matplotlib.figure import Figure

from zhang.analysis import plots
from zhang.analysis.ntk import FIGURES, label_replicas
from zhang.formatting import KIND_COLORS, condition_name

FIGSIZE, DPI = plots.FIGSIZE, plots.DPI


def _figure(ncols: int = 1):
  fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
  axes = list(fig.subplots(1, ncols, squeeze=False).flat)
  for ax in axes:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3)
  return fig, axes


def _series(ax, reps, key, color, label, marker="o", at_least=None):
  """Points per replica (jittered by seed), their mean per corruption as a line; replicas
  without a value but with a lower bound (``at_least``) as upward triangles. The legend's
  entry shows what is drawn: the series' marker (or the triangle, when only lower bounds are),
  and a line when there are means at two corruptions or more."""
  by_p, bounds = {}, 0
  for r in reps:
    jitter = 0.006 * (r["seed"] % 5)
    if r.get(key) is not None:
      ax.scatter(r["corruption"] + jitter, r[key], s=22, marker=marker, color=color,
                 alpha=0.45, lw=0)
      by_p.setdefault(r["corruption"], []).append(r[key])
    elif at_least and r.get(at_least) is not None:
      ax.scatter(r["corruption"] + jitter, r[at_least], s=40, marker="^", color=color,
                 alpha=0.6, lw=0)
      bounds += 1
  ps = sorted(by_p)
  if len(ps) > 1:
    ax.plot(ps, [np.mean(by_p[p]) for p in ps], "-", color=color, lw=1.6)
  if ps or bounds or at_least:
    ax.plot([], [], ls="-" if len(ps) > 1 else "none", marker=marker if ps else "^",
            color=color, lw=1.6, ms=5, label=label)
  return bounds


def plot(result: dict, out_dir) -> list[str]:
  """Writes ``FIGURES`` into ``out_dir``; returns their paths."""
  return [_save(_slowdown(result), out_dir, FIGURES[0]),
          _save(_test_acc(result), out_dir, FIGURES[1]),
          _save(_residual(result), out_dir, FIGURES[2])]


def _slowdown(result: dict):
  """Figure 1b's axes: the measured slowdown and the kernel regime's predictions."""
  s = result["settings"]
  reps = label_replicas(result)
  fig, (ax,) = _figure()
  _series(ax, reps, "measured_slowdown", "#1f77b4", "measured (network)")
  crit = s["criterion"]
  other = "residual" if crit == "accuracy" else "accuracy"
  words = {"accuracy": f"train accuracy >= {s.get('fit_threshold', 1):g}",
           "residual": f"residual <= {s['threshold']:g}"}
  bounds = _series(ax, reps, "predicted_slowdown", "#d62728",
                   f"kernel regime, the run's schedule, {words[crit]}",
                   at_least="predicted_slowdown_at_least")
  for name, color, marker in ((crit, "#ff7f0e", "s"), (other, "#bcbd22", "D")):
    key = f"predicted_slowdown_constant_lr_{name}"
    bounds += _series(ax, reps, key, color, f"kernel regime, constant learning rate, "
                      f"{words[name]}", marker=marker, at_least=f"{key}_at_least")
  if bounds:
    ax.plot([], [], ls="none", marker="^", color="0.5", ms=5,
            label=f"never fits by step {s['horizon']:,}: the slowdown is at least this")
  ax.axhline(1, color="black", lw=0.8)
  ax.set_yscale("log")
  ax.set_xlabel("label corruption")
  ax.set_ylabel("time to fit / time to fit true labels")
  ax.set_title(f"{s['model']} on {s['dataset']}: slowdown predicted by the NTK at "
               f"initialization and measured", fontsize=10)
  ax.legend(frameon=False, fontsize=8)
  return fig


def _test_acc(result: dict):
  """Kernel interpolation's test accuracy beside the network's."""
  s = result["settings"]
  reps = label_replicas(result)
  fig, (ax,) = _figure()
  _series(ax, reps, "network_test_acc", "#1f77b4", "network (final)")
  _series(ax, reps, "kernel_test_acc", "#2ca02c", "kernel interpolation (NTK at init)",
          marker="s")
  chance = 1 / s["num_classes"]
  ax.axhline(chance, color="0.5", lw=0.8, ls=":", label=f"chance ({chance:.0%})")
  ax.set_ylim(0, 1)
  ax.set_xlabel("label corruption")
  ax.set_ylabel("test accuracy")
  ax.set_title(f"{s['model']} on {s['dataset']}: test accuracy, kernel against network "
               f"(kernel on {s['n']:,} training examples)", fontsize=10)
  ax.legend(frameon=False, fontsize=8)
  return fig


def _residual(result: dict):
  """The predicted residual under both schedules, each replica's measured fit step a dot."""
  s = result["settings"]
  fig, axes = _figure(2)
  steps = np.asarray(s["curve_steps"], float)
  colors = _corruption_colors(result["replicas"])
  first_seed = min(x["seed"] for x in result["replicas"])
  for ax, schedule, title in zip(axes, ("run", "constant_lr"),
                                 ("the run's schedule", "constant learning rate")):
    for r in result["replicas"]:
      curve = r.get(f"predicted_residual_{schedule}")
      if not curve:
        continue
      curve = np.asarray([np.nan if v is None else v for v in curve], float)
      curve[~(np.abs(curve) < 1e6)] = np.nan  # a diverging linearization: not drawn
      name = _name(r)
      ax.plot(steps[1:], curve[1:], color=colors[name], lw=1.0, alpha=0.8,
              ls="-" if r["seed"] == first_seed else "--",
              label=name if r["seed"] == first_seed else None)
      if r.get("measured_fit_step"):
        at = np.interp(r["measured_fit_step"], steps, curve)
        ax.scatter([r["measured_fit_step"]], [at], color=colors[name], s=18, zorder=3)
    ax.axhline(s["threshold"], color="black", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"predicted residual, {title}", fontsize=10)
  axes[0].set_ylabel("|E(k)|² / |E(0)|²")
  axes[1].legend(frameon=False, fontsize=7, title="dots: measured fit step", title_fontsize=7)
  return fig


def _name(r: dict) -> str:
  return condition_name(r["kind"], r["corruption"])


def _corruption_colors(replicas) -> dict[str, tuple]:
  """Label corruption along viridis, in order of corruption; the pixel kinds Figure 1's."""
  levels = sorted({r["corruption"] for r in replicas if r["kind"] == "labels"})
  cmap = colormaps["viridis"]
  colors = {condition_name("labels", p): cmap(i / max(len(levels) - 1, 1) * 0.9)
            for i, p in enumerate(levels)}
  colors.update({_name(r): KIND_COLORS.get(r["kind"], "0.4") for r in replicas
                 if r["kind"] != "labels"})
  return colors


def _save(fig, out_dir, name: str) -> str:
  """Writes ``fig`` as PNG into a local or gs:// folder."""
  return os.fspath(plots.save(fig, epath.Path(out_dir) / name))
