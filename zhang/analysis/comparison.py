"""report.md's comparison with the paper: the size of Figure 1b's slowdown, the shape of
Figure 1c's test error and Figure 1a's steps to a training loss of 0.1, per setup, against
the published numbers (``paper.py``)."""

from __future__ import annotations

from zhang.analysis import fit_time, paper, plots, tables
from zhang.formatting import DASH, fixed, md_table, pct


def section(a) -> list[str]:
  pn = paper.paper_numbers()
  out = ["## Comparison with the paper", ""]
  dataset = a.runs.datasets[0]
  same = paper.matches_paper_dataset(dataset)
  if not same:
    out += [f"The paper's experiments are on CIFAR-10; these runs are on {dataset}, so the "
            f"comparison is of shape, not of numbers.", ""]
  out += _paper_fig1b(a, pn) + _paper_fig1c(a, pn, same) + _paper_fig1a(a, pn, same)
  return out + [""]


def _paper_fig1b(a, pn: dict) -> list[str]:
  """Figure 1b against the paper: the size of the slowdown, per setup."""
  out = []
  lo, hi = pn["figure1b"]["slowdown_range"]
  s = a.fit_summary[a.fit_summary.kind == "labels"]
  for setup in s.setup.unique():
    g = s[s.setup == setup].sort_values("corruption")
    at1 = g[g.corruption == 1]
    if not g.mean_slowdown.notna().any():
      out += [f"- **Fig. 1b, {setup}:** slowdown undefined: no true-label replica has "
              f"fitted yet, so there is nothing to compare with the paper's "
              f"{lo:g}x–{hi:g}x."]
      continue
    worst = g.loc[g.mean_slowdown.idxmax()]
    ge = "≥ " if worst.lower_bound_slowdown else ""
    p1 = (f"{'≥ ' if at1.lower_bound_slowdown.iloc[0] else ''}"
          f"{at1.mean_slowdown.iloc[0]:.2f}x at p = 1, " if len(at1) else "")
    inside = worst.mean_slowdown <= hi and not worst.lower_bound_slowdown
    out += [f"- **Fig. 1b, {setup}:** slowdown {p1}largest {ge}{worst.mean_slowdown:.2f}x "
            f"(at p = {worst.corruption:g}). The paper: {pn['figure1b']['claim']}; "
            f"{'within' if inside else 'outside'} its {lo:g}x–{hi:g}x range."]
  return out


def _paper_fig1c(a, pn: dict, same: bool) -> list[str]:
  """Figure 1c against the paper: the shape of test error, per setup."""
  out = []
  k = a.runs.replicas.num_classes.dropna()
  k = int(k.iloc[0]) if len(k) else 10
  err = tables.per_corruption(a.runs.replicas, "test_error")
  for setup in plots.setup_labels(err):
    shape = paper.figure1c_shape(err[err.setup == setup], k)
    model = a.runs.replicas.loc[a.runs.replicas.setup == setup, "model"].iloc[0]
    p0_paper = pn["figure1c"]["test_error_at_p0"].get(model) if same else None
    p0 = f"{pct(shape['error_p0'], 2)}% at p = 0" + (
        f" (paper {pct(p0_paper, 2)}%)" if p0_paper is not None else "")
    out += [f"- **Fig. 1c, {setup}:** test error {p0}, {pct(shape['error_p1'], 2)}% at p = 1 "
            f"(chance {pct(shape['chance'], 2)}%, paper {pct(shape['paper_error_p1'], 2)}%); "
            f"Spearman correlation with p = {fixed(shape['rho'])} (the paper's curve rises "
            f"steadily: 1)."]
  return out


def _paper_fig1a(a, pn: dict, same: bool) -> list[str]:
  """Figure 1a against the paper: optimizer steps to a training loss of 0.1, per
  condition, fastest first."""
  f1a = pn["figure1a"]
  loss_fits = fit_time.time_to_fit(a.runs.metrics, loss_below=f1a["loss_threshold"])
  rows = []
  order = {s: i for i, s in enumerate(plots.setup_labels(loss_fits))}
  for (setup, cond), g in loss_fits.groupby(["setup", "condition"]):
    if cond not in tables.FIG1A_CONDITIONS:
      continue
    match = same and g.model.iloc[0] == f1a["model"]
    ge = "≥ " if g.censored.any() else ""
    rows.append([setup, cond, f"{ge}{g.time_step.mean():,.0f}",
                 f"{f1a['steps_to_loss'][cond]:,}" if match else DASH, g.time_step.mean()])
  rows = [r[:-1] for r in sorted(rows, key=lambda r: (order[r[0]], r[-1]))]  # fastest first
  if not rows:
    return []
  return ["", f"Fig. 1a: optimizer steps until training loss ≤ {f1a['loss_threshold']:g} "
          f"(mean over seeds; the paper column is from a public reproduction of Inception "
          f"on CIFAR-10, shown only for that experiment).", "",
          *md_table(["setup", "condition", "steps", "paper (repro)"], rows)]
