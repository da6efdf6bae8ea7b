"""`zhang report`: figures and a markdown report from one or many run directories."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd
from etils import epath

from zhang.analysis import bound as bound_report
from zhang.analysis import (
  comparison,
  fit_time,
  grokking,
  measures_plots,
  memorization,
  paper,
  plots,
  probe_sections,
  regularization,
  scaling,
  table2,
  tables,
)
from zhang.analysis.load import (
  HPARAMS,
  Runs,
  condition_order,
  load_runs,
  require_one_dataset,
)
from zhang.formatting import condition_name, fixed, md_table, pct
from zhang.rundir import metrics as metrics_lib
from zhang.rundir import workdir as workdir_lib

FIGURES = ("fig1a.png", "fig1b.png", "fig1c.png", "confidence.png")
# Written only for runs whose files hold their fields.
OPTIONAL_FIGURES = ("noisy_fit.png", "reliability.png", "fit_times.png")
# Written for runs that trained on past the fit (``stop_at_fit=False``, grokking.py).
GROKKING_FIGURES = ("grokking.png", "grokking_steps.png")
# Written, with table1.md, for runs that compare regularizers or models (regularization.py).
REGULARIZER_FIGURES = ("fig2a.png", "early_stopping.png")
# Written, with its section in report.md, for runs on ImageNet (table2.py).
TABLE2 = "table2.md"


@dataclasses.dataclass
class Analysis:
  """Everything the report shows, as tables a notebook can reuse."""
  runs: Runs
  fits: pd.DataFrame  # per replica, with slowdown columns
  fit_summary: pd.DataFrame  # per (setup, condition); a setup is one hyper-parameter combo
  scaling: pd.DataFrame  # per (setup, form)
  table1: pd.DataFrame

  def combinations(self) -> pd.DataFrame:
    """One row per setup: its hyper-parameters and replicas, in display order."""
    return combinations(self.runs)


def combinations(runs: Runs) -> pd.DataFrame:
  """One row per setup (hyper-parameter combination): setup, base_setup, hparams,
  learning_rate, weight_decay, augmentation, n_replicas, seeds, conditions."""
  r = runs.replicas
  rows = []
  for setup in plots.setup_labels(r):
    g = r[r.setup == setup]
    first = g.iloc[0]
    conds = sorted({(k, p) for k, p in zip(g.kind, g.corruption)},
                   key=lambda c: condition_order(*c))
    rows.append(dict(setup=setup, base_setup=first.base_setup, hparams=first.hparams,
                     **{h: first[h] for h in HPARAMS}, n_replicas=len(g),
                     seeds=sorted(int(x) for x in g.seed.unique()),
                     conditions=[condition_name(k, p) for k, p in conds]))
  return pd.DataFrame(rows)


def analyze(runs: Runs, threshold: float | None = None, loss_below: float | None = None,
            n_boot: int = 200) -> Analysis:
  """Time to fit, slowdown, scaling laws and Table 1 for loaded runs.

  Args:
    threshold: train accuracy that counts as fitted; default the runs' `fit_threshold`.
    loss_below: count as fitted when train loss falls to this instead.
    n_boot: bootstrap resamples for the scaling-law intervals.
  """
  if threshold is None:
    found = {r.config.get("fit_threshold", 1.0) for r in runs.runs}
    threshold = found.pop() if len(found) == 1 else 1.0
  fits = fit_time.slowdown(fit_time.time_to_fit(runs.metrics, threshold, loss_below))
  return Analysis(runs=runs, fits=fits,
                  fit_summary=tables.fit_summary(fits),
                  scaling=scaling.fit_scaling(fits, n_boot=n_boot),
                  table1=tables.table1(runs, fits))


def _interval(mean, lo, hi, lower_bound=False, digits=2) -> str:
  if not np.isfinite(mean):
    return "–"
  ge = "≥ " if lower_bound else ""
  text = f"{ge}{mean:.{digits}f}"
  if np.isfinite(lo):
    text += f" [{lo:.{digits}f}, {'∞' if not np.isfinite(hi) else f'{hi:.{digits}f}'}]"
  return text


def steps_per_epoch(run) -> float:
  """Optimizer steps per epoch as metrics.jsonl counts epochs: examples seen / n_train, i.e.
  n_train / batch_size, unrounded (summary.json's `steps_per_epoch` is rounded down)."""
  summary = run.summary or {}
  n_train, batch = summary.get("n_train"), run.config.get("batch_size",
                                                          summary.get("batch_size"))
  if n_train and batch:
    return n_train / batch
  m = run.metrics[(run.metrics["epoch"] > 0) & (run.metrics["step"] > 0)]
  return float((m["step"] / m["epoch"]).median()) if len(m) else np.nan


def _epochs_note(runs: Runs) -> list[str]:
  parts = []
  for r in runs.runs:
    summary = r.summary or {}
    spe = steps_per_epoch(r)
    if not np.isfinite(spe):
      continue
    n_train, batch = summary.get("n_train"), r.config.get("batch_size")
    src = (f"n_train = {n_train:,} / batch size {batch} = " if n_train and batch else "")
    epochs = r.metrics["epoch"].max()
    spe_text = f"{spe:.2f}".rstrip("0").rstrip(".")
    parts.append(f"{r.name}: {src}{spe_text} steps per epoch, so {r.steps_run:,} steps are "
                 f"{epochs:.2f} epochs")
  if not parts:
    return []
  return ["Epochs are examples seen / n_train (step × batch size / n_train), as metrics.jsonl "
          "counts them, so an epoch need not be a whole number of steps: " + "; ".join(parts)
          + ".", ""]


def _runs_section(runs: Runs, fits: pd.DataFrame) -> list[str]:
  rows = []
  for r in runs.runs:
    reps = runs.replicas[runs.replicas.run == r.name]
    params = reps.num_params.iloc[0]
    rows.append([r.name, r.config["model"], r.config["dataset"],
                 f"{int(params):,}" if np.isfinite(params) else "–", len(reps),
                 f"{r.steps_run:,} / {r.config.get('max_steps', '?'):,}"
                 if isinstance(r.config.get("max_steps"), int) else f"{r.steps_run:,}",
                 r.status])
  out = ["## Runs", "", *md_table(
      ["run", "model", "dataset", "parameters", "replicas", "steps run / max", "status"], rows),
      ""]
  out += _epochs_note(runs)
  for r in runs.running():
    f = fits[fits.run == r.name]
    if r.status == "running" and workdir_lib.is_locked(epath.Path(r.path)) is False:
      out += [f"> **{r.name} was stopped before it finished** (killed: its summary says "
              f"running, but no process holds its lock; `zhang train` on it resumes), at "
              f"step {r.steps_run:,}; {int((~f.censored).sum())} of {len(f)} replicas had "
              f"fitted. Its numbers are partial: replicas that had not fitted appear as "
              f"censored (time to fit > steps run).", ""]
      continue
    out += [f"> **{r.name} is still in progress** (status: {r.status}, last evaluation at "
            f"step {r.steps_run:,}; {int((~f.censored).sum())} of {len(f)} replicas have "
            f"fitted so far). Its numbers are partial: replicas that have not fitted yet "
            f"appear as censored (time to fit > steps run), and final accuracies are the "
            f"latest ones.", ""]
  return out


def _combinations_section(a: Analysis) -> list[str]:
  """The hyper-parameter combinations, when a grid varies any (else nothing)."""
  c = a.combinations()
  if c.empty or not (c.hparams != "").any():
    return []
  rows = [[r.setup, f"{r.learning_rate:g}", f"{r.weight_decay:g}", r.augmentation, r.n_replicas,
           ", ".join(str(x) for x in r.seeds), ", ".join(r.conditions)]
          for r in c.itertuples()]
  return ["## Hyper-parameter combinations", "",
          f"{len(c)} combinations of learning rate, weight decay and augmentation. Each is "
          "its own setup: its time to fit, its slowdown (against the true-label replicas of "
          "the same combination and seed), its scaling law and its Table 1 rows are computed "
          "apart, and Fig. 1b draws one curve per combination.", "",
          *md_table(["setup", "learning rate", "weight decay", "augmentation", "replicas",
                     "seeds", "labels / inputs"], rows), ""]


def _table1_section(a: Analysis) -> list[str]:
  t = a.table1
  varies = "hparams" in t and (t.hparams != "").any()
  rows = []
  for _, r in t.iterrows():
    fitted = f"{r.n_fitted}/{r.n}" if "n_fitted" in t else str(r.n)
    rows.append([r.model, *([r.hparams] if varies else []),
                 f"{int(r.parameters):,}" if np.isfinite(r.parameters) else "–",
                 r.regularizers, r.condition, fitted, pct(r.train_acc, 2), pct(r.test_acc, 2),
                 pct(r.paper_train_acc, 2), pct(r.paper_test_acc, 2)])
  out = ["## Table 1: training and test accuracy", "",
         "Means over seeds at the last evaluation. *fitted*: replicas that reached the fit "
         "criterion / replicas. *paper*: Zhang et al. (2017) Table 1, where the experiment "
         "matches (same model, dataset, crop and weight decay).", "",
         *md_table(["model", *(["hyper-parameters"] if varies else []), "parameters",
                    "regularizers", "labels / inputs", "fitted", "train acc (%)",
                    "test acc (%)", "paper train (%)", "paper test (%)"], rows), ""]
  if not t.paper_test_acc.notna().any():
    names = sorted({paper.paper_name(m) for m in paper.paper_numbers()["models"]})
    out += [f"No row has a published counterpart: the paper's Table 1 is on CIFAR-10 "
            f"with {', '.join(names)}; these runs are {', '.join(sorted(set(t.model)))} on "
            f"{', '.join(sorted(set(t.dataset)))}.", ""]
  return out


def _no_slowdown_setups(a: Analysis) -> list[str]:
  """Setups with label-corruption replicas but no defined slowdown (no fitted baseline)."""
  labels = a.fits[a.fits.kind == "labels"]
  return sorted(setup for setup, g in labels.groupby("setup") if not g.slowdown.notna().any())


def _undefined_slowdown_notes(a: Analysis) -> list[str]:
  out = []
  for setup in _no_slowdown_setups(a):
    base = a.fits[(a.fits.setup == setup) & (a.fits.kind == "labels")
                  & (a.fits.corruption == 0)]
    why = ("it has no true-label replica" if base.empty else
           f"no true-label replica has fitted yet (all {len(base)} censored at ≥ "
           f"{base.time_epoch.min():.1f} epochs)")
    out += [f"**Slowdowns undefined ({setup}):** {why}, so there is no baseline to divide "
            f"by; the slowdown column shows –. The epochs to fit above still hold: for "
            f"censored replicas they are lower bounds (≥).", ""]
  return out


def _fit_section(a: Analysis) -> list[str]:
  s = a.fit_summary
  crit = a.fits.criterion.iloc[0]
  rows = []
  for _, r in s.iterrows():
    rows.append([r.setup, condition_name(r.kind, r.corruption), f"{r.n - r.n_censored}/{r.n}",
                 _interval(r.mean_epoch, r.ci_lo_epoch, r.ci_hi_epoch, r.lower_bound_epoch, 1),
                 _interval(r.mean_slowdown, r.ci_lo_slowdown, r.ci_hi_slowdown,
                           r.lower_bound_slowdown)])
  out = [f"## Time to fit ({crit})", "",
         "Time to the first evaluation that meets the criterion, recomputed from the curves "
         "(resolution: one evaluation interval). Replicas that never met it are censored: "
         "their time counts as the steps they ran, so a mean over them is a lower bound (≥) "
         "and its interval is open above. Slowdown is relative to the true-label replicas of "
         "the same setup and seed. Brackets: 95% bootstrap intervals across seeds.", "",
         *md_table(["setup", "labels / inputs", "fitted", "epochs to fit", "slowdown (x)"],
                   rows), ""]
  out += _undefined_slowdown_notes(a)
  labels = s[s.kind == "labels"]
  for setup in labels.setup.unique():
    g = labels[labels.setup == setup].rename(
        columns={"mean_epoch": "mean", "lower_bound_epoch": "lower_bound"})
    nm = fit_time.non_monotonic(g)
    if len(nm):
      worst = nm.sort_values("ratio").iloc[-1]
      out += [f"**Not monotonic in p ({setup}):** p = {worst.p_low:g} took "
              f"{'at least ' if worst.lower_bound else ''}{worst.ratio:.1f}x as long to fit "
              f"as p = {worst.p_high:g}. A monotonic scaling law cannot describe this; the "
              f"fits below show how far off it is.", ""]
  return out


def _fig1b_law_notes(a: Analysis) -> list[str]:
  """Per setup, whether Fig. 1b draws its law, and why not."""
  out = []
  undefined = _no_slowdown_setups(a)
  for setup in a.scaling.setup.unique():
    why = scaling.not_drawn(a.scaling, setup)
    if why is None and setup in undefined:
      why = "slowdowns are undefined (no fitted true-label replica)"
    if why is not None:
      out.append(f"- Fig. 1b, {setup}: {why}; not drawn.")
    else:
      best = a.scaling[(a.scaling.setup == setup) & a.scaling.aic.notna()].sort_values(
          "aic").iloc[0]
      out.append(f"- Fig. 1b, {setup}: the {best.form} law is drawn dashed (R² = "
                 f"{best.r2:.2f} ≥ {scaling.MIN_R2:g}).")
  return out


def _scaling_section(a: Analysis) -> list[str]:
  sc = a.scaling
  out = ["## Scaling law: time to fit against label corruption", "",
         "Fitted by maximum likelihood to every finished label-corruption replica (epochs to "
         "fit), with log-normal noise; a replica that never fitted in a complete run "
         "contributes P(time > epochs run) instead of being dropped or counted as fitted, and "
         "one still training in a run in progress is left out. A law needs fitted replicas at "
         f"{scaling.MIN_LEVELS} or more corruption levels. Brackets: 95% bootstrap intervals "
         "over replicas. R² compares the law with the mean fitted time at each corruption "
         "level, RMSE (epochs) with each fitted replica; lower AIC is better. Fig. 1b draws "
         f"the form with lower AIC only where R² ≥ {scaling.MIN_R2:g}: below that, the law "
         "leaves more of the variation across levels unexplained than it explains.", ""]
  labels = a.fits[a.fits.kind == "labels"]
  running = labels[~scaling.finished(labels)]
  if len(running):
    in_progress = labels[labels.run.isin(running.run)]
    out += [f"**Runs still in progress:** {int((~in_progress.censored).sum())} of "
            f"{len(in_progress)} of their label-corruption replicas have fitted so far; the "
            f"{len(running)} still training are left out of the laws.", ""]
  if sc.empty:
    return out + ["No scaling law could be fitted (no label-corruption replicas).", ""]
  if not sc.aic.notna().any():
    return out + ["- " + scaling.verdict(sc, setup) for setup in sc.setup.unique()] + [""]
  rows = []
  for _, r in sc[sc.aic.notna()].iterrows():
    rows.append([r.setup, r.form, f"`{r.formula}`",
                 _interval(r.t0, r.t0_lo, r.t0_hi, digits=2),
                 _interval(r.b, r.b_lo, r.b_hi, digits=3),
                 _interval(r.slowdown_p1, r.slowdown_p1_lo, r.slowdown_p1_hi),
                 fixed(r.r2), fixed(r.rmse), fixed(r.aic, 1), fixed(r.delta_aic, 1),
                 f"{int(r.n)} ({int(r.n_censored)} censored)"])
  out += [*md_table(["setup", "form", "law", "t0 (epochs)", "b", "slowdown at p=1 (x)", "R²",
                     "RMSE", "AIC", "ΔAIC", "replicas"], rows), ""]
  out += ["- " + scaling.verdict(sc, setup) for setup in sc.setup.unique()]
  return out + _fig1b_law_notes(a) + [""]


def reliability_table(runs: Runs) -> pd.DataFrame:
  """One row per replica of summary.json: run, dataset, kind, corruption, test_reliability
  (None where the summary has none)."""
  rows = []
  for run in runs.runs:
    for rep in (run.summary or {}).get("replicas", []):
      rows.append(dict(run=run.name, dataset=run.config["dataset"], kind=rep.get("kind"),
                       corruption=rep.get("corruption"),
                       test_reliability=rep.get("test_reliability")))
  return pd.DataFrame(rows, columns=["run", "dataset", "kind", "corruption",
                                     "test_reliability"])


def _figures_section(names: Sequence[str] = FIGURES) -> list[str]:
  captions = {
      "fig1a.png": "Fig. 1a: training loss against steps for each randomization.",
      "fig1b.png": "Fig. 1b: time to fit relative to true labels against label corruption.",
      "fig1c.png": "Fig. 1c: test error against label corruption.",
      "confidence.png": "Test-set confidence and entropy against label corruption.",
      "noisy_fit.png": "Train accuracy on clean and corrupted examples against steps.",
      "reliability.png": "Reliability diagram: test accuracy against confidence, per bin.",
      "fit_times.png": "Share of clean and noisy examples fitted for good by each step.",
      "grokking.png": "Train and test accuracy against steps (log axis): grokking.",
      "grokking_steps.png": "Fit, half test accuracy and generalize steps per replica "
                            "against label corruption.",
      "llc_vs_corruption.png": "Local learning coefficient against label corruption "
                               "(zhang llc).",
      "llc_vs_step.png": "Local learning coefficient against the checkpoint's step.",
      "llc_traces.png": "SGLD chains' minibatch loss per replica (zhang llc): burn-in "
                        "shaded, L_n(w*) dashed.",
      "ntk_fig1b.png": "Fig. 1b with the kernel regime's predicted slowdown (zhang ntk).",
      "ntk_test_acc.png": "Test accuracy of NTK interpolation against the trained network's.",
      "ntk_residual.png": "The kernel regime's predicted training residual against steps.",
      "fig2a.png": "Fig. 2a-style: train and test accuracy against steps per model.",
      "early_stopping.png": "Early stopping: the best test accuracy against the fit step's "
                            "and the last.",
      **measures_plots.CAPTIONS,
      **bound_report.CAPTIONS,
  }
  out = ["## Figures", ""]
  for name in names:
    caption = captions.get(name, name)
    out += [f"![{caption}]({name})", "", f"*{caption}*", ""]
  return out


def _write_text(path: epath.Path, text: str) -> epath.Path:
  """Writes ``text`` whole (``zhang.rundir.metrics.write_bytes``: a full disk is one line)."""
  metrics_lib.write_bytes(path, text.encode())
  return path


def _figures(a: Analysis, out: epath.Path, grok: pd.DataFrame) -> list[epath.Path]:
  """Figure 1, the confidence plot, and the figures of the fields the runs recorded."""
  runs = a.runs
  written = [
      plots.save(plots.fig1a(runs.metrics), out / "fig1a.png"),
      plots.save(plots.fig1b(a.fits, a.scaling), out / "fig1b.png"),
      plots.save(plots.fig1c(runs.replicas), out / "fig1c.png"),
      plots.save(plots.confidence(runs.replicas), out / "confidence.png"),
  ]
  if plots.has_noisy_fit(runs.metrics):
    written.append(plots.save(plots.noisy_fit(runs.metrics), out / "noisy_fit.png"))
  bins = reliability_table(runs)
  if plots.has_reliability(bins):
    written.append(plots.save(plots.reliability(bins), out / "reliability.png"))
  if grokking.applies(runs):
    written.append(plots.save(plots.grokking(runs.metrics), out / "grokking.png"))
    written.append(plots.save(plots.grokking_steps(grok), out / "grokking_steps.png"))
  if memorization.has_fit_times(runs):
    written.append(plots.save(plots.fit_times(memorization.curves(runs), runs.datasets[0]),
                              out / "fit_times.png"))
  return written


def _regularizer_study(a: Analysis, out: epath.Path, threshold: float | None
                       ) -> list[epath.Path]:
  """fig2a.png, early_stopping.png and table1.md, for runs that compare regularizers or
  models (else nothing)."""
  runs = a.runs
  pairs = plots.has_model_pairs(runs.metrics)
  effects = regularization.effects(runs)
  if not pairs and effects.empty:
    return []
  written = []
  if pairs:
    written.append(plots.save(plots.fig2a(runs.metrics), out / "fig2a.png"))
  es = regularization.early_stopping(runs, threshold)
  written.append(plots.save(plots.early_stopping(es), out / "early_stopping.png"))
  text = "\n".join(regularization.table1_markdown(runs, a.table1, a.fits, threshold, effects, es)
                   + _figures_section([p.name for p in written]))
  return written + [_write_text(out / "table1.md", text)]


def _table2(runs: Runs, out: epath.Path) -> tuple[list[epath.Path], list[str]]:
  """table2.md and report.md's Table 2 section, for runs on ImageNet (else nothing)."""
  if not table2.applies(runs):
    return [], []
  t = table2.table(runs)
  path = _write_text(out / TABLE2, "\n".join(table2.markdown(runs, t)))
  return [path], table2.report_lines(runs, t) + [f"Also in [{TABLE2}]({TABLE2}).", ""]


def write_report(paths: Sequence[str | epath.Path], out: str | epath.Path,
                 threshold: float | None = None, loss_below: float | None = None,
                 n_boot: int = 200) -> list[epath.Path]:
  """Loads runs, writes the figures and report.md to `out`; returns the written paths. The
  clean/noisy fit and reliability figures only for runs that recorded their fields; Table 2
  and table2.md only for runs on ImageNet; the sections of the probes (kernel baseline, llc,
  ntk) only from files in `out` computed from these runs."""
  runs = load_runs(paths)
  require_one_dataset(runs.replicas, "one report")
  a = analyze(runs, threshold=threshold, loss_below=loss_below, n_boot=n_boot)
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  grok = grokking.steps(runs)  # empty unless a run trained past its fit
  written = _figures(a, out, grok)
  study = _regularizer_study(a, out, threshold)
  probe_figures, probe_lines = probe_sections.sections(runs, out)
  lines = [f"# Randomization tests on {runs.datasets[0]}", "",
           f"Generated by `zhang report` from {len(runs.runs)} run(s). Reproduces Figure 1 and "
           f"Table 1 of Zhang et al. (2017), *Understanding deep learning requires rethinking "
           f"generalization*.", ""]
  table2_files, table2_lines = _table2(runs, out)
  lines += _runs_section(runs, a.fits) + _combinations_section(a) + _table1_section(a)
  lines += table2_lines
  if study:
    lines += ["Each regularizer on and off, random labels with regularizers, and early "
              "stopping: [table1.md](table1.md).", ""]
  lines += _fit_section(a) + _scaling_section(a) + comparison.section(a)
  lines += grokking.report_lines(runs, grok)
  lines += probe_sections.kernel_baseline_section(runs, out, grok)
  lines += memorization.report_lines(runs) + probe_lines
  figures = written + [p for p in study + probe_figures if p.suffix == ".png"]
  lines += _figures_section([p.name for p in figures])
  report = _write_text(out / "report.md", "\n".join(lines))
  return (figures + [p for p in study + probe_figures if p.suffix == ".md"] + table2_files
          + [report])
