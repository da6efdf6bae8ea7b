"""Figure 1 (a, b, c) and the test-confidence plot, from the tidy tables.

Every function returns a `matplotlib.figure.Figure` of size FIGSIZE at DPI. Figures are
built without pyplot, so no backend is chosen or changed here: a notebook shows them inline
and a headless machine renders them with Agg. `save` writes one to a local or gs:// path.
"""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np
import pandas as pd
from etils import epath
from matplotlib.figure import Figure

from zhang.analysis import paper, scaling, tables
from zhang.analysis.load import require_one_dataset, setup_sort_columns
from zhang.formatting import CONDITION_COLORS, corruption_colours
from zhang.rundir import metrics as metrics_lib

FIGSIZE = (9.0, 5.0)  # inches
DPI = 110  # so every figure is 990 x 550 pixels
# Distinct dashes too, so conditions whose curves coincide (an MLP cannot tell shuffled
# pixels from true labels) stay visible.
CONDITION_DASHES = {"true labels": "-", "shuffled pixels": (0, (5, 3)),
                    "random pixels": (0, (6, 2, 1, 2)), "gaussian": (0, (1.5, 1.5)),
                    "random labels": "-"}


def _figure(npanels: int = 1, sharey: bool = False):
  """A figure with `npanels` axes: one row up to three, then rows of up to four."""
  nrows = 1 if npanels <= 3 else math.ceil(npanels / 4)
  ncols = math.ceil(npanels / nrows)
  fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey, sharex=nrows > 1)
  axes = list(axes.flat)
  for ax in axes[npanels:]:
    ax.set_visible(False)
  for ax in axes[:npanels]:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3)
  return fig, axes[:npanels]


def setup_labels(table: pd.DataFrame) -> dict[str, str]:
  """Legend label of each setup, in display order (hyper-parameters sorted numerically).

  When the setups differ only in hyper-parameters, the label names just the varying ones
  ("lr 0.01, wd 0.0005"); otherwise it is the whole setup name.
  """
  if "setup" not in table or table.empty:
    return {}
  firsts = table.drop_duplicates("setup").sort_values(setup_sort_columns(table),
                                                       kind="stable")
  one_base = "base_setup" in firsts and firsts.base_setup.nunique() == 1
  if one_base and "hparams" in firsts and (firsts.hparams != "").all():
    return dict(zip(firsts.setup, firsts.hparams))
  return {s: s for s in firsts.setup}


def _setup_colors(setups) -> dict[str, str]:
  cycle = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
  return {s: cycle[i % len(cycle)] for i, s in enumerate(setups)}


def _legend(ax, target=None, wrap: int | None = None, **kwargs):
  """A legend of `ax`'s entries on `target` (default `ax`) that shrinks its font as entries
  pile up (one curve per combination); labels wrap at `wrap` characters if given."""
  handles, labels = ax.get_legend_handles_labels()
  if wrap:
    labels = ["\n".join(textwrap.wrap(label, wrap)) for label in labels]
  if len(labels) > 6:
    kwargs.setdefault("fontsize", 8 if len(labels) <= 12 else 6.5)
  return (target or ax).legend(handles, labels, frameon=False, **kwargs)


def save(fig, path: str | epath.Path) -> epath.Path:
  """Writes `fig` as PNG to a local or gs:// path, whole
  (``zhang.rundir.metrics.write_bytes``: a full disk is one line)."""
  path = epath.Path(path)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=DPI)
  metrics_lib.write_bytes(path, buf.getvalue())
  return path


def _partial_note(table: pd.DataFrame) -> str:
  return " (partial: a run is still in progress)" if "status" in table and (
      table["status"] != "complete").any() else ""


def _coinciding(curve: pd.Series, drawn: dict[str, pd.Series], y_range: float,
                tol: float = 0.01) -> str | None:
  """The first drawn curve that `curve` would hide: within `tol` of the y range at 90% of
  their common steps (an MLP cannot tell shuffled pixels from true labels)."""
  for name, other in drawn.items():
    common = curve.index.intersection(other.index)
    if len(common) < 2:
      continue
    diff = (curve[common] - other[common]).abs().dropna()
    if len(diff) and np.quantile(diff, 0.9) <= tol * max(y_range, 1e-12):
      return name
  return None


def fig1a(metrics: pd.DataFrame, y: str = "train_loss",
          conditions: tuple[str, ...] = tables.FIG1A_CONDITIONS):
  """Figure 1a: training loss against steps, one curve per randomization, one panel per setup
  (hyper-parameter combinations are setups).

  Lines are means over seeds; the band spans the lowest and highest seed.
  """
  dataset = require_one_dataset(metrics)
  curves = tables.learning_curves(metrics, y=y, conditions=conditions)
  setups = list(setup_labels(curves)) or ["(no data)"]
  fig, axes = _figure(len(setups), sharey=True)
  scale = 1000 if metrics["step"].max() >= 5000 else 1
  for ax, setup in zip(axes, setups):
    c = curves[curves.setup == setup]
    drawn = {}  # condition -> mean curve, to spot curves that would hide one another
    y_range = float(np.nanmax(c["mean"]) - min(np.nanmin(c["mean"]), 0)) if len(c) else 1.0
    for i, cond in enumerate(conditions):
      d = c[c.condition == cond]
      if d.empty:
        continue
      color = CONDITION_COLORS.get(cond)
      n = int(d.n.max())
      curve = d.set_index("step")["mean"]
      twin = _coinciding(curve, drawn, y_range)
      label = f"{cond} ({n} seed{'s' * (n > 1)})"
      if twin is not None:
        # Drawn thin and dashed on top, so the curve underneath still shows around it.
        label += f": on top of {twin}"
        ax.plot(d.step / scale, d["mean"], color=color, lw=1.1, ls=(0, (3, 2)),
                zorder=3 + i, label=label)
      else:
        # Earlier curves are wider, so a later one drawn over them leaves their edges.
        ax.plot(d.step / scale, d["mean"], color=color, lw=max(3.0 - 0.4 * len(drawn), 1.4),
                ls=CONDITION_DASHES.get(cond, "-"), zorder=2 + i, label=label)
      drawn[cond] = curve
      if n > 1:
        ax.fill_between(d.step / scale, d.lo, d.hi, color=color, alpha=0.15, lw=0)
    ax.set_title(setup, fontsize=12 if len(setups) <= 3 else 8)
    ax.set_xlabel("optimizer steps" + (" (thousands)" if scale > 1 else ""))
    ax.set_ylim(bottom=0)
  axes[0].set_ylabel({"train_loss": "training loss (cross-entropy, nats)"}.get(
      y, y.replace("_", " ")))
  _legend(axes[0], loc="best", **({} if len(setups) <= 3 else dict(fontsize=6)))
  fig.suptitle(f"Fig. 1a: fitting {_fitted_kinds(curves, conditions)} on {dataset}"
               f"{_partial_note(metrics)}", fontsize=12)
  return fig


def _fitted_kinds(curves: pd.DataFrame, conditions: tuple[str, ...]) -> str:
  """The randomizations Fig. 1a draws, in words ('random labels and shuffled pixels'); the
  true labels alone when there is no other."""
  present = set(curves.condition) if len(curves) else set()
  order = sorted(conditions, key=lambda c: c != "random labels")  # the paper's order
  drawn = [c for c in order if c in present and c != "true labels"] or ["true labels"]
  return drawn[0] if len(drawn) == 1 else ", ".join(drawn[:-1]) + " and " + drawn[-1]


def _errorbars(ax, s: pd.DataFrame, color: str, label: str, scale: float = 1.0,
               dashed: bool = False):
  """Means (line), bootstrap intervals (bars); lower bounds as hollow up-triangles.
  ``dashed``: a line drawn over another that it hides, thin and dashed so both show."""
  s = s.sort_values("corruption")
  ax.plot(s.corruption, s["mean"] * scale, color=color, label=label,
          **(dict(lw=1.1, ls=(0, (3, 2)), zorder=3) if dashed else dict(lw=1.5)))
  exact = s[~s.lower_bound]
  lo = (exact["mean"] - exact.ci_lo).clip(lower=0).fillna(0) * scale
  hi = (exact.ci_hi - exact["mean"]).clip(lower=0).fillna(0) * scale
  ax.errorbar(exact.corruption, exact["mean"] * scale, yerr=[lo, hi], fmt="o", color=color,
              ms=5, capsize=3, lw=1.2)
  bound = s[s.lower_bound]
  if len(bound):
    ax.errorbar(bound.corruption, bound["mean"] * scale, yerr=0.12 * bound["mean"] * scale,
                lolims=True, fmt="^", mfc="white", color=color, ms=8, capsize=0, lw=1.2)


def fig1b(slowdowns: pd.DataFrame, scaling_fits: pd.DataFrame | None = None,
          n_boot: int = 2000):
  """Figure 1b: time to fit relative to true labels against label corruption, one curve per
  setup (each hyper-parameter combination is a setup; the legend names the varying axes).

  Args:
    slowdowns: per-replica table from `fit_time.slowdown`.
    scaling_fits: from `scaling.fit_scaling`; the better form per setup is drawn dashed over
      the corruption levels it was fitted to, where it describes them (`scaling.not_drawn`);
      otherwise the legend says why not.

  The legend is the figure's, below the axes, so it is clear of every line.
  """
  dataset = require_one_dataset(slowdowns)
  all_labels = slowdowns[slowdowns.kind == "labels"]
  labels = all_labels[all_labels.slowdown.notna()]
  summary = tables.fit_summary(labels, n_boot=n_boot)
  fig, (ax,) = _figure()
  names = setup_labels(all_labels)
  colors = _setup_colors(names)
  any_bound = False
  drawn = {}  # setup's label -> its mean curve, to say which curves hide one another
  y_range = float(summary.mean_slowdown.max()) if len(summary) else 1.0
  for setup in [n for n in names if n in set(summary.setup)]:
    s = summary[summary.setup == setup].rename(columns={
        "mean_slowdown": "mean", "ci_lo_slowdown": "ci_lo", "ci_hi_slowdown": "ci_hi",
        "lower_bound_slowdown": "lower_bound"})
    curve = s.set_index("corruption")["mean"]
    twin = _coinciding(curve, drawn, y_range)
    _errorbars(ax, s, colors[setup], names[setup] + (f": on top of {twin}" if twin else ""),
               dashed=twin is not None)
    drawn[names[setup]] = curve
    reps = labels[labels.setup == setup]
    any_bound |= bool(s.lower_bound.any() or reps.slowdown_censored.any())
    jitter = (reps.seed.rank(method="dense") - 1) * 0.006
    for cens, marker in ((False, "."), (True, "^")):
      r = reps[reps.slowdown_censored == cens]
      ax.scatter(r.corruption + jitter[r.index] + 0.015, r.slowdown, s=30 if cens else 40,
                 marker=marker, color=colors[setup], alpha=0.4, lw=0)
    if scaling_fits is not None and "aic" in scaling_fits:
      _fig1b_law(ax, scaling_fits, all_labels, setup, names[setup], colors[setup])
  _fig1b_empty(ax, all_labels, labels, names)
  ax.axhline(1, color="black", lw=0.8)
  lo, hi = paper.paper_numbers()["figure1b"]["slowdown_range"]
  ax.axhspan(lo, hi, color="grey", alpha=0.08, lw=0, label="paper's axis range (CIFAR-10)")
  if any_bound:
    ax.plot([], [], "^", mfc="white", color="grey", label="not fitted: lower bound")
  ax.set_xlabel("label corruption p (fraction of labels redrawn at random)")
  ax.set_ylabel("time to fit / time on true labels (x)")
  ax.set_xlim(-0.05, 1.08)
  ax.set_ylim(bottom=0)
  _legend(ax, fig, wrap=60, loc="outside lower center", ncols=2)
  crit = (slowdowns.criterion.iloc[0] if "criterion" in slowdowns and len(slowdowns)
          else "train_acc >= 1")
  fig.suptitle(f"Fig. 1b: time to fit the training set ({crit}) on {dataset}, relative to "
               f"true labels{_partial_note(slowdowns)}\nmeans over seeds with 95% bootstrap "
               f"intervals; small markers are single replicas", fontsize=11)
  return fig


def _fig1b_law(ax, scaling_fits: pd.DataFrame, all_labels: pd.DataFrame, setup: str,
               name: str, color: str) -> None:
  """One setup's scaling law, dashed, relative to its measured true-label time; or, in the
  legend, why it is not drawn."""
  fits = scaling_fits[(scaling_fits.setup == setup) & scaling_fits.aic.notna()]
  reps = all_labels[(all_labels.setup == setup) & all_labels.slowdown.notna()]
  base = reps.loc[(reps.corruption == 0), "time_epoch"].mean()
  why = scaling.not_drawn(scaling_fits, setup)
  if why is not None:
    ax.plot([], [], " ", label=f"{name}: {why}; not drawn")
  elif base > 0 and (fits.time == "time_epoch").all():
    # Drawn relative to the measured true-label time, so a law that misses p = 0 shows.
    best = fits.sort_values("aic").iloc[0]
    used = all_labels[(all_labels.setup == setup) & scaling.finished(all_labels)]
    p = np.linspace(used.corruption.min(), used.corruption.max(), 101)
    ax.plot(p, scaling.FORMS[best.form][1](p, best.t0, best.b) / base, "--",
            color=color, lw=1.2, alpha=0.8,
            label=f"{name}: {best.form} law (better AIC), R² = {best.r2:.2f}")


def _fig1b_empty(ax, all_labels: pd.DataFrame, labels: pd.DataFrame, names: dict) -> None:
  """What Fig. 1b says where there is no slowdown to draw: for no setup, or for some."""
  if len(all_labels) and not len(labels):
    ax.text(0.5, 0.5, "no true-label replica has fitted yet: slowdowns undefined",
            ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.3",
            bbox=dict(boxstyle="round", fc="white", ec="0.7"))
  elif not len(all_labels):
    ax.text(0.5, 0.5, "no label-corruption replicas in these runs", ha="center",
            va="center", transform=ax.transAxes, fontsize=12, color="0.3")
  else:
    for setup in [n for n in names if n not in set(labels.setup)]:
      ax.plot([], [], " ", label=f"{names[setup]}: no true-label replica fitted yet, "
              f"slowdown undefined")


def fig1c(replicas: pd.DataFrame, show_paper: bool = True, n_boot: int = 2000):
  """Figure 1c: test error after training against label corruption, per setup."""
  dataset = require_one_dataset(replicas)
  err = tables.per_corruption(replicas, "test_error", n_boot=n_boot)
  fig, (ax,) = _figure()
  names = setup_labels(err)
  colors = _setup_colors(names)
  for setup, label in names.items():
    _errorbars(ax, err[err.setup == setup], colors[setup], label, scale=100)
  k = replicas.num_classes.dropna()
  k = int(k.iloc[0]) if len(k) else 10
  ax.axhline(100 * (1 - 1 / k), color="black", ls=":", lw=1,
             label=f"chance ({100 * (1 - 1 / k):.0f}% error, {k} classes)")
  if show_paper and paper.matches_paper_dataset(dataset):
    f1c = paper.paper_numbers()["figure1c"]
    for model in sorted(set(replicas.model) & set(f1c["test_error_at_p0"])):
      ax.plot([0, 1], [100 * f1c["test_error_at_p0"][model], 100 * f1c["test_error_at_p1"]],
              "s", ls="none", mfc="white", color="grey", ms=8,
              label=f"paper, {paper.paper_name(model)} (Table 1 and 90% at p = 1)")
  ax.set_xlabel("label corruption p (fraction of labels redrawn at random)")
  ax.set_ylabel("test error (%)")
  ax.set_xlim(-0.05, 1.05)
  ax.set_ylim(0, 100)
  _legend(ax, loc="lower right")
  fig.suptitle(f"Fig. 1c: test error at the end of training on {dataset}"
               f"{_partial_note(replicas)}\nmeans over seeds with 95% bootstrap intervals",
               fontsize=11)
  return fig


def confidence(replicas: pd.DataFrame, n_boot: int = 2000):
  """Test-set confidence and entropy against label corruption: confidently wrong?"""
  dataset = require_one_dataset(replicas)
  fig, (ax1, ax2) = _figure(2)
  k = replicas.num_classes.dropna()
  k = int(k.iloc[0]) if len(k) else 10
  names = setup_labels(replicas)
  colors = _setup_colors(names)
  have = "final_test_confidence" in replicas
  if have:
    conf = tables.per_corruption(replicas, "final_test_confidence", n_boot=n_boot)
    acc = tables.per_corruption(replicas, "final_test_acc", n_boot=n_boot)
    for setup in [n for n in names if n in set(conf.setup)]:
      _errorbars(ax1, conf[conf.setup == setup], colors[setup], names[setup], scale=100)
      a = acc[acc.setup == setup].sort_values("corruption")
      ax1.plot(a.corruption, 100 * a["mean"], "--", color=colors[setup], lw=1.2)
    ax1.plot([], [], "--", color="grey", label="test accuracy")
  ax1.axhline(100 / k, color="black", ls=":", lw=1, label=f"uniform guess ({100 / k:.0f}%)")
  ax1.set_ylim(0, 100)
  ax1.set_ylabel("test set, mean max-softmax probability (%)")
  ax1.set_title("confidence (solid) vs accuracy (dashed)")
  ax1.legend(loc="best", fontsize=8, frameon=False)
  if "final_test_entropy" in replicas:
    ent = tables.per_corruption(replicas, "final_test_entropy", n_boot=n_boot)
    for setup in [n for n in names if n in set(ent.setup)]:
      _errorbars(ax2, ent[ent.setup == setup], colors[setup], names[setup])
    ax2.axhline(math.log(k), color="black", ls=":", lw=1,
                label=f"uniform prediction (ln {k} = {math.log(k):.2f})")
    ax2.set_ylim(0, 1.1 * math.log(k))
    ax2.legend(loc="best", fontsize=8, frameon=False)
  ax2.set_ylabel("test set, mean predictive entropy (nats)")
  ax2.set_title("uncertainty")
  for ax in (ax1, ax2):
    ax.set_xlabel("label corruption p")
    ax.set_xlim(-0.05, 1.05)
  if not have:
    ax1.text(0.5, 0.5, "no test_confidence in metrics.jsonl", ha="center",
             transform=ax1.transAxes)
  fig.suptitle(f"Random labels on {dataset}: uncertain or confidently wrong?"
               f"{_partial_note(replicas)}\nconfidence above accuracy means confidently "
               f"wrong; entropy near ln {k} means uncertain", fontsize=11)
  return fig


NOISY_FIELDS = ("train_acc_clean", "train_acc_noisy", "train_acc_noisy_vs_true")


def has_noisy_fit(metrics: pd.DataFrame) -> bool:
  """Whether the metrics hold the clean/noisy train accuracies of a corrupted replica."""
  return (all(c in metrics for c in NOISY_FIELDS) and
          bool(metrics.loc[metrics.kind == "labels", "train_acc_noisy"].notna().any()))


def noisy_fit(metrics: pd.DataFrame):
  """Train accuracy on the clean and the corrupted examples (against the corrupted and the
  true labels) against steps, one panel per label corruption p > 0, mean over replicas."""
  dataset = require_one_dataset(metrics)
  m = metrics[(metrics.kind == "labels") & (metrics.corruption > 0)
              & metrics.train_acc_noisy.notna()]
  levels = sorted(m.corruption.unique())
  fig, axes = _figure(len(levels), sharey=True)
  styles = {"train_acc_clean": ("#1f77b4", "-", "clean examples"),
            "train_acc_noisy": ("#d62728", "-", "corrupted examples, their new label"),
            "train_acc_noisy_vs_true": ("#d62728", ":", "corrupted examples, the true label")}
  for ax, p in zip(axes, levels):
    curves = m[m.corruption == p].groupby("step")[list(NOISY_FIELDS)].mean()
    for field, (color, ls, label) in styles.items():
      ax.plot(curves.index, 100 * curves[field], ls=ls, color=color, lw=1.5, label=label)
    ax.set_title(f"label corruption p = {p:g}", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylim(0, 102)
  axes[0].set_ylabel("train accuracy (%)")
  axes[0].legend(loc="best", fontsize=8, frameon=False)
  fig.suptitle(f"Memorization on {dataset}: clean examples fit first, then the corrupted "
               f"ones{_partial_note(metrics)}", fontsize=11)
  return fig


def has_reliability(table: pd.DataFrame) -> bool:
  """Whether a table of replicas (``reliability_table``) holds reliability bins."""
  return not table.empty and bool(table.test_reliability.notna().any())


def reliability(table: pd.DataFrame):
  """Reliability diagram of the final evaluation, one panel per label corruption: each
  confidence bin's test accuracy against its mean confidence, bins pooled over replicas.
  ``table``: one row per replica with dataset, kind, corruption, test_reliability (a list of
  [mean confidence, accuracy, count] per bin)."""
  dataset = require_one_dataset(table)
  t = table[(table.kind == "labels") & table.test_reliability.notna()]
  levels = sorted(t.corruption.unique())
  fig, axes = _figure(len(levels), sharey=True)
  for ax, p in zip(axes, levels):
    bins = np.stack([np.asarray(b, np.float64) for b in t[t.corruption == p].test_reliability])
    bins = np.nan_to_num(bins)  # empty bins: count 0
    count = bins[..., 2].sum(0)
    conf = (bins[..., 0] * bins[..., 2]).sum(0) / np.maximum(count, 1)
    acc = (bins[..., 1] * bins[..., 2]).sum(0) / np.maximum(count, 1)
    ece = float(np.sum(np.abs(acc - conf) * count) / max(count.sum(), 1))
    k = len(count)
    keep = count > 0
    ax.bar((np.arange(k) + 0.5)[keep] / k, acc[keep], width=1 / k, color="#1f77b4",
           edgecolor="white", alpha=0.8, label="accuracy")
    ax.plot(conf[keep], acc[keep], "o", color="#d62728", ms=3, label="(mean confidence, acc.)")
    ax.plot([0, 1], [0, 1], ":", color="black", lw=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"p = {p:g}: ECE {ece:.3f}", fontsize=10)
    ax.set_xlabel("test confidence (max softmax)")
  axes[0].set_ylabel("test accuracy")
  axes[0].legend(loc="upper left", fontsize=8, frameon=False)
  fig.suptitle(f"Reliability on {dataset}'s test set, final evaluation "
               f"({len(count)} confidence bins, pooled over seeds)", fontsize=11)
  return fig


def _explicit(row) -> str:
  """A replica's explicit regularizers in words ("no regularizer", "wd 0.0005, crop")."""
  parts = []
  if row.weight_decay > 0:
    parts.append(f"weight decay {row.weight_decay:g}")
  if row.augmentation != "none":
    parts.append(f"augmentation {row.augmentation}")
  return ", ".join(parts) or "no explicit regularizer"


def has_model_pairs(metrics: pd.DataFrame) -> bool:
  """Whether two or more models trained true labels with the same explicit regularizers."""
  m = metrics[(metrics.kind == "labels") & (metrics.corruption == 0)]
  return bool(len(m)) and bool(
      (m.groupby(["weight_decay", "augmentation"]).model.nunique() >= 2).any())


def fig2a(metrics: pd.DataFrame, max_panels: int = 4):
  """Figure 2a-style: train (dashed) and test (solid) accuracy against steps on true labels,
  one line per model (mean over seeds), one panel per combination of explicit regularizers
  that two or more models share, so models (with and without batch norm, say) compare at
  the same regularizers."""
  dataset = require_one_dataset(metrics)
  m = metrics[(metrics.kind == "labels") & (metrics.corruption == 0)]
  shared = m.groupby(["weight_decay", "augmentation"]).model.nunique()
  combos = sorted(shared[shared >= 2].index, key=lambda c: (c[0] > 0, c[1] != "none", c))
  combos = combos[:max_panels]
  fig, axes = _figure(len(combos), sharey=True)
  models = sorted(m.model.unique())
  colors = _setup_colors(models)
  for ax, (wd, aug) in zip(axes, combos):
    g = m[(m.weight_decay == wd) & (m.augmentation == aug)]
    for model in models:
      curves = g[g.model == model].groupby("step")[["train_acc", "test_acc"]].mean()
      if curves.empty:
        continue
      ax.plot(curves.index, 100 * curves.test_acc, color=colors[model], lw=1.6,
              label=f"{model} test")
      ax.plot(curves.index, 100 * curves.train_acc, color=colors[model], lw=1, ls="--",
              label=f"{model} train")
    ax.set_title("\n".join(textwrap.wrap(_explicit(g.iloc[0]), 26)), fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylim(0, 102)
  axes[0].set_ylabel("accuracy (%)")
  _legend(axes[0], loc="lower right", fontsize=8)
  fig.suptitle(f"True labels on {dataset}: train (dashed) and test (solid) accuracy per "
               f"model, mean over seeds{_partial_note(metrics)}", fontsize=11)
  return fig


def early_stopping(es: pd.DataFrame):
  """What stopping at the best evaluation would have gained, in points of test accuracy,
  over the fit step (triangles) and over the end (dots): one marker per replica, one column
  per setup, one panel per condition (true labels, random labels, ...). At zero, stopping
  early gains nothing. ``es``: ``regularization.early_stopping``."""
  dataset = require_one_dataset(es)
  conditions = list(dict.fromkeys(es.sort_values("corruption").condition))
  fig, axes = _figure(len(conditions), sharey=True)
  setups = list(setup_labels(es))
  colors = _setup_colors(setups)
  for ax, condition in zip(axes, conditions):
    g = es[es.condition == condition]
    for i, setup in enumerate(setups):
      h = g[g.setup == setup]
      jitter = np.linspace(-0.12, 0.12, max(len(h), 1))[:len(h)]
      ax.scatter(i + jitter - 0.15, 100 * h.gain_over_fit, marker="^", s=22,
                 color=colors[setup])
      ax.scatter(i + jitter + 0.15, 100 * h.gain_over_final, marker="o", s=22,
                 color=colors[setup])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(setups)))
    ax.set_xticklabels(["\n".join(textwrap.wrap(s, 18)) for s in setups], fontsize=7,
                       rotation=90 if len(setups) > 4 else 0)
    ax.set_title(condition, fontsize=10)
  axes[0].set_ylabel("best test accuracy minus ... (points)")
  axes[0].scatter([], [], marker="^", color="gray", label="minus at the fit step")
  axes[0].scatter([], [], marker="o", color="gray", label="minus at the end")
  axes[0].legend(loc="upper right", fontsize=8, frameon=False)
  fig.suptitle(f"Early stopping on {dataset}: what stopping at the best evaluation would "
               f"have gained{_partial_note(es)}", fontsize=11)
  return fig


def fit_times(curves: pd.DataFrame, dataset: str):
  """Share of clean (blue) and noisy (red) training examples fitted for good by each step,
  one panel per label corruption, mean over replicas (``memorization.curves``): the gap
  between the curves is how much later the noise is fitted."""
  levels = sorted(curves.corruption.unique())
  fig, axes = _figure(len(levels), sharey=True)
  for ax, p in zip(axes, levels):
    c = curves[curves.corruption == p].groupby("step")[["clean", "noisy"]].mean()
    if c.clean.notna().any():
      ax.plot(c.index, 100 * c.clean, color="#1f77b4", lw=1.6, label="clean examples")
    if c.noisy.notna().any():
      ax.plot(c.index, 100 * c.noisy, color="#d62728", lw=1.6, label="noisy examples")
    ax.set_title(f"label corruption p = {p:g}", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylim(0, 102)
  axes[0].set_ylabel("examples fitted for good (%)")
  for ax in axes:  # each panel names its own lines: p = 0 has no noisy examples
    if ax.lines:
      ax.legend(loc="lower right", fontsize=8, frameon=False)
  fig.suptitle(f"When each example is fitted on {dataset}: the first evaluation from which "
               f"it stays fitted to the end", fontsize=11)
  return fig


def grokking(metrics: pd.DataFrame, max_panels: int = 4):
  """Train (dashed) and test (solid) accuracy against steps on a log axis, one panel per
  (model, weight decay), one colour per label corruption, one line per replica (seed):
  grokking is the test curve rising long after the train curve (``grokking.steps`` has the
  events)."""
  dataset = require_one_dataset(metrics)
  m = metrics[metrics.kind == "labels"]
  panels = sorted(m.groupby(["model", "learning_rate", "weight_decay"]).groups)[:max_panels]
  fig, axes = _figure(len(panels), sharey=True)
  levels = sorted(m.corruption.unique())
  cmap = corruption_colours(levels)
  for ax, (model, lr, wd) in zip(axes, panels):
    g = m[(m.model == model) & (m.learning_rate == lr) & (m.weight_decay == wd)]
    for p in levels:
      for i, (_, c) in enumerate(g[g.corruption == p].groupby(["run", "replica"])):
        c = c[c.step > 0].sort_values("step")  # the log axis
        if c.empty:
          continue
        ax.plot(c.step, 100 * c.test_acc, color=cmap[p], lw=1.3, alpha=0.85,
                label=f"p = {p:g} test" if i == 0 else None)
        ax.plot(c.step, 100 * c.train_acc, color=cmap[p], lw=0.9, ls="--", alpha=0.85)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylim(0, 102)
    ax.set_title(f"{model}\nlr {lr:g}, weight decay {wd:g}", fontsize=9)
  axes[0].set_ylabel("accuracy (%)")
  _legend(axes[0], loc="center left", fontsize=8)
  fig.suptitle(f"Grokking on {dataset}: train (dashed) and test (solid) accuracy, one line "
               f"per replica{_partial_note(metrics)}", fontsize=11)
  return fig


def grokking_steps(steps: pd.DataFrame, max_panels: int = 4):
  """Per replica, against label corruption: the fit step, the first step at half test
  accuracy and the generalize step (``grokking.steps``), one panel per (model, weight decay)
  on a log step axis; a replica that never got there is an open marker at the steps it ran."""
  panels = sorted(steps.groupby(["model", "learning_rate", "weight_decay"]).groups
                  )[:max_panels]
  fig, axes = _figure(len(panels), sharey=True)
  events = [("fit_step", "fit (train acc 1)", "o", "#555555", -0.012),
            ("half_step", "half test acc", "s", "#2ca02c", 0.0),
            ("generalize_step", "generalized", "^", "#1f77b4", 0.012)]
  threshold = steps.generalize_threshold.iloc[0] if len(steps) else 0.99
  for ax, (model, lr, wd) in zip(axes, panels):
    g = steps[(steps.model == model) & (steps.learning_rate == lr)
              & (steps.weight_decay == wd)]
    for column, name, marker, colour, dx in events:
      done, never = g[g[column].notna()], g[g[column].isna()]
      ax.scatter(done.corruption + dx, done[column], marker=marker, color=colour, s=30,
                 label=name if column != "generalize_step"
                 else f"generalized (test acc >= {threshold:g})", zorder=3)
      if len(never) and column != "fit_step":
        ax.scatter(never.corruption + dx, never.steps_run, marker=marker,
                   facecolors="none", edgecolors=colour, s=30, zorder=3,
                   label=f"{name}: never (drawn at the last step)")
    if len(g):
      ax.axhline(g.steps_run.max(), color="#999999", lw=0.8, ls=":", zorder=1)
    ax.set_yscale("log")
    ax.set_xlabel("label corruption p")
    ax.set_title(f"{model}\nlr {lr:g}, weight decay {wd:g}", fontsize=9)
  if panels:
    axes[0].set_ylabel("step (dotted: the run's last)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False,
               fontsize=8)
  fig.suptitle("When each replica fits, reaches half test accuracy and generalizes"
               f"{_partial_note(steps)}", fontsize=11)
  return fig
