"""Tests for zhang.analysis on synthetic run directories whose answers are known exactly."""

import argparse
import json
import math
import pathlib
import re
import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from zhang import analysis
from zhang.analysis import memorization, paper, plots, report, scaling, synthetic, tables
from zhang.cli import report as cli
from zhang.errors import UsageError

R = synthetic.replica


def _write(tmp_path, name="run", **kwargs):
  reps = kwargs.pop("replicas", None) or [
      R("labels", 0.0, 0, 40, 0.9), R("labels", 0.0, 1, 60, 0.9),
      R("labels", 1.0, 0, 120, 0.1), R("labels", 1.0, 1, 120, 0.1),
      R("labels", 1.0, 2, 150, 0.1), R("labels", 0.5, 0, None, 0.5),
  ]
  return synthetic.write_run(tmp_path / name, reps, **kwargs)


def test_time_to_fit_exact_and_censored(tmp_path):
  runs = analysis.load_runs(_write(tmp_path))
  fits = analysis.time_to_fit(runs.metrics).set_index("replica")
  assert fits.fit_step.tolist()[:5] == [40, 60, 120, 120, 150]
  assert fits.fit_epoch[0] == pytest.approx(40 * 128 / 1280)
  assert not fits.censored[:5].any()
  # Never fitted: censored, time set to the last evaluated step, never NaN or dropped.
  assert fits.censored[5] and math.isnan(fits.fit_step[5])
  assert fits.time_step[5] == 200 and fits.time_epoch[5] == pytest.approx(20.0)
  # Recomputed from the curves, it agrees with what summary.json says.
  summary = runs.replicas.set_index("replica").summary_fit_step
  assert fits.fit_step[:5].tolist() == summary[:5].tolist()


def test_time_to_fit_other_criteria(tmp_path):
  runs = analysis.load_runs(_write(tmp_path))
  # Synthetic train_acc before fitting is 0.1 + 0.895 * step / fit_step.
  at_half = analysis.time_to_fit(runs.metrics, threshold=0.5).set_index("replica")
  expected = math.ceil((0.4 / 0.895) * 40 / 10) * 10
  assert at_half.fit_step[0] == expected
  # Synthetic train_loss is ln(10) exp(-3 step / fit_step).
  by_loss = analysis.time_to_fit(runs.metrics, loss_below=0.1).set_index("replica")
  expected = math.ceil(40 * math.log(math.log(10) / 0.1) / 3 / 10) * 10
  assert by_loss.fit_step[0] == expected
  assert by_loss.criterion[0] == "train_loss <= 0.1"
  with pytest.raises(UsageError):
    analysis.time_to_fit(runs.metrics, threshold=1.5)


def test_slowdown_paired_by_seed_and_censored(tmp_path):
  runs = analysis.load_runs(_write(tmp_path))
  s = analysis.slowdown(analysis.time_to_fit(runs.metrics)).set_index("replica")
  assert s.slowdown[2] == pytest.approx(120 / 40) and s.paired[2]
  assert s.slowdown[3] == pytest.approx(120 / 60) and s.paired[3]
  # Seed 2 has no true-label replica: compared with the mean of all of them.
  assert s.slowdown[4] == pytest.approx(150 / 50) and not s.paired[4]
  # The censored replica's slowdown is a lower bound: steps run / baseline.
  assert s.slowdown[5] == pytest.approx(200 / 40) and s.slowdown_censored[5]
  summary = analysis.summarize(s.reset_index(), "slowdown", "slowdown_censored")
  p1 = summary[summary.corruption == 1.0].iloc[0]
  assert p1["mean"] == pytest.approx((3 + 2 + 3) / 3)
  assert p1.ci_lo <= p1["mean"] <= p1.ci_hi and not p1.lower_bound
  half = summary[summary.corruption == 0.5].iloc[0]
  assert half.lower_bound and half.n_censored == 1 and half.ci_hi == np.inf


def test_baseline_never_fitted_gives_no_slowdown(tmp_path):
  reps = [R("labels", 0.0, 0, None, 0.9), R("labels", 1.0, 0, 100, 0.1)]
  runs = analysis.load_runs(_write(tmp_path, replicas=reps))
  s = analysis.slowdown(analysis.time_to_fit(runs.metrics))
  assert s.baseline_censored.all() and s.slowdown.isna().all()


def test_bootstrap_interval():
  lo, hi = analysis.bootstrap_mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
  assert 1.0 <= lo < 2.5 < hi <= 4.0
  assert all(math.isnan(v) for v in analysis.bootstrap_mean_ci(np.array([1.0])))


P = np.repeat([0.0, 0.25, 0.5, 0.75, 1.0], 3)


@pytest.mark.parametrize("form,truth", [("exponential", lambda p: 10 * np.exp(0.7 * p)),
                                        ("linear", lambda p: 10 * (1 + 2.0 * p))])
def test_scaling_law_recovers_exact_parameters(form, truth):
  t = truth(P)
  rows = {f: scaling.fit_form(P, t, np.zeros_like(P, bool), f, n_boot=20)
          for f in scaling.FORMS}
  best = rows[form]
  assert best["t0"] == pytest.approx(10, rel=1e-3)
  assert best["b"] == pytest.approx(0.7 if form == "exponential" else 2.0, rel=1e-3)
  assert best["r2"] == pytest.approx(1.0, abs=1e-6)
  other = rows["linear" if form == "exponential" else "exponential"]
  assert best["aic"] < other["aic"] - 2
  assert best["b_lo"] <= best["b"] <= best["b_hi"]


def test_scaling_law_uses_censored_replicas():
  t = 10 * np.exp(0.7 * P)
  cens = P == 1.0
  bound = np.where(cens, 12.0, t)  # stopped at 12 epochs; the truth is 20.1
  honest = scaling.fit_form(P, bound, cens, "exponential", n_boot=0)
  naive = scaling.fit_form(P, bound, np.zeros_like(cens), "exponential", n_boot=0)
  assert honest["b"] == pytest.approx(0.7, rel=1e-2)
  assert naive["b"] < 0.6  # treating the bound as a fit time underestimates growth
  assert honest["n_censored"] == 3


def test_scaling_table_and_verdict_on_non_monotonic_data(tmp_path):
  runs = analysis.load_runs(synthetic.write_example_run(tmp_path / "ex", seeds=(0,),
                                                        censor=False))
  fits = analysis.slowdown(analysis.time_to_fit(runs.metrics))
  laws = analysis.fit_scaling(fits, n_boot=10)
  assert set(laws.form) == {"linear", "exponential"} and (laws.delta_aic >= 0).all()
  # p = 0.2 takes twice as long as p = 1 here: flagged, and no monotonic law fits well.
  s = tables.fit_summary(fits)
  nm = analysis.non_monotonic(s[s.kind == "labels"].rename(
      columns={"mean_epoch": "mean", "lower_bound_epoch": "lower_bound"}))
  worst = nm.sort_values("ratio").iloc[-1]
  assert (worst.p_low, worst.p_high) == (0.2, 1.0) and worst.ratio == pytest.approx(2.0)
  assert "neither describes the data well" in analysis.verdict(laws, "mlp_1x512")


def test_not_a_run(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(UsageError, match="is not a run: it has no config.json"):
    analysis.load_runs(tmp_path / "empty")
  _write(tmp_path / "parent", name="inner")
  with pytest.raises(UsageError, match="it contains runs: inner"):
    analysis.load_runs(tmp_path / "parent")
  with pytest.raises(UsageError, match="does not exist"):
    analysis.load_runs(tmp_path / "missing")


def test_run_in_progress_is_reported_and_usable(tmp_path):
  run = _write(tmp_path, steps_run=100, status="running", torn_last_line=True)
  runs = analysis.load_runs(run)
  assert runs.runs[0].status == "running" and runs.runs[0].steps_run == 100
  fits = analysis.time_to_fit(runs.metrics).set_index("replica")
  assert fits.fit_step[0] == 40 and fits.censored[2]  # fits at 120, not reached yet
  out = tmp_path / "report"
  analysis.write_report([run], out, n_boot=5)
  text = (out / "report.md").read_text()
  assert "still in progress" in text and "| running |" in text


@pytest.mark.slow
def test_a_killed_run_is_told_from_one_in_progress_by_its_lock(tmp_path):
  import fcntl
  run = _write(tmp_path, steps_run=100, status="running")
  (run / "lock").write_text("pid 1 on a host that died\n")  # a killed trainer leaves it
  out = tmp_path / "report"
  analysis.write_report([run], out, n_boot=5)
  text = (out / "report.md").read_text()
  assert "was stopped before it finished" in text and "is still in progress" not in text
  with open(run / "lock") as held:  # a live trainer holds it
    fcntl.flock(held, fcntl.LOCK_EX)
    analysis.write_report([run], out, n_boot=5)
  text = (out / "report.md").read_text()
  assert "is still in progress" in text and "was stopped" not in text


def test_mixed_datasets_refused(tmp_path):
  a = _write(tmp_path, "a", dataset="digits")
  b = _write(tmp_path, "b", dataset="cifar10")
  runs = analysis.load_runs([a, b])
  with pytest.raises(UsageError, match="different datasets"):
    plots.fig1c(runs.replicas)
  with pytest.raises(UsageError, match="different datasets"):
    analysis.write_report([a, b], tmp_path / "out")


def test_setups_and_regularizers(tmp_path):
  a = _write(tmp_path, "a", model="inception_small", config=dict(weight_decay=5e-4))
  b = _write(tmp_path, "b", model="inception_small_nobn", config=dict(augmentation="crop"))
  runs = analysis.load_runs([a, b])
  setups = set(runs.replicas.setup)
  assert setups == {"inception_small + weight decay + batch norm",
                    "inception_small_nobn + augmentation (crop)"}


def test_paper_numbers_are_packaged_and_matched(tmp_path):
  row = paper.table1_match("mlp_1x512", "cifar10", "random labels", {"weight_decay": 0})
  assert row["test_acc"] == pytest.approx(0.1061)
  assert paper.table1_match("mlp_1x512", "digits", "true labels", {}) is None
  runs = analysis.load_runs(_write(tmp_path, dataset="cifar10"))
  t1 = tables.table1(runs).set_index("condition")
  assert t1.paper_test_acc["true labels"] == pytest.approx(0.5051)
  assert math.isnan(t1.paper_test_acc["labels p=0.5"])


def _cli(argv):
  parser = argparse.ArgumentParser(prog="zhang")
  cli.register(parser.add_subparsers(required=True))
  args = parser.parse_args(argv)
  return args.func(args)


def _name(kind, p):
  """The report's condition names, written out for the synthetic runs' conditions."""
  if kind == "labels":
    return {0.0: "true labels", 1.0: "random labels"}.get(p, f"labels p={p:g}")
  assert p == 0
  return kind.replace("_", " ")


def _by_condition(run_dir):
  """From metrics.jsonl alone: per (kind, corruption), per seed, (final train acc, final
  test acc, epoch and step of the first evaluation at train accuracy 1 or None, last
  epoch)."""
  rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  out = {}
  for replica in sorted({r["replica"] for r in rows}):
    mine = sorted((r for r in rows if r["replica"] == replica), key=lambda r: r["step"])
    fit = next((r for r in mine if r["train_acc"] >= 1.0), None)
    out.setdefault((mine[0]["kind"], mine[0]["corruption"]), {})[mine[0]["seed"]] = (
        mine[-1]["train_acc"], mine[-1]["test_acc"], fit and fit["epoch"], fit and fit["step"],
        mine[-1]["epoch"])
  return out


@pytest.mark.slow
def test_report_writes_every_file(tmp_path):
  a = synthetic.write_example_run(tmp_path / "mlp1")
  b = synthetic.write_example_run(tmp_path / "mlp3", model="mlp_3x512", scale=1.5,
                                  test_acc_p0=0.95)
  out = tmp_path / "report"
  assert _cli(["report", str(a), str(b), "--out", str(out), "--n_boot", "10"]) == 0
  for name in ("fig1a.png", "fig1b.png", "fig1c.png", "confidence.png"):
    image = matplotlib.image.imread(out / name)
    width, height = plots.FIGSIZE[0] * plots.DPI, plots.FIGSIZE[1] * plots.DPI
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.05  # something is drawn
  text = (out / "report.md").read_text()
  for needle in ("## Table 1", "## Scaling law", "exponential", "linear", "![",
                 "Not monotonic in p", "Comparison with the paper"):
    assert needle in text
  lines = text.splitlines()
  for run_dir, model in ((a, "mlp_1x512"), (b, "mlp_3x512")):
    conditions = _by_condition(run_dir)
    base = {seed: v[3] for seed, v in conditions["labels", 0.0].items()}
    for (kind, p), seeds in conditions.items():
      v = list(seeds.values())
      fitted = sum(x[2] is not None for x in v)
      train, test = (100 * np.mean([x[i] for x in v]) for i in (0, 1))
      # Table 1: means over seeds at the last evaluation, and how many fitted.
      assert (f"| {model} | 1,209,866 | none | {_name(kind, p)} | {fitted}/{len(v)} | "
              f"{train:.2f} | {test:.2f} | – | – |") in lines, (model, kind, p)
      # Time to fit: epochs to the first evaluation at train accuracy 1; a replica that
      # never fitted counts its last epoch, and the mean is a lower bound.
      epochs = np.mean([x[2] if x[2] is not None else x[4] for x in v])
      ge = "" if fitted == len(v) else "≥ "
      row = next(line for line in lines if line.startswith(
          f"| {model} | {_name(kind, p)} | {fitted}/{len(v)} | "))
      assert row.split(" | ")[3].startswith(f"{ge}{epochs:.1f} ["), row
      if fitted == len(v):  # slowdown: fit step over the true labels' of the same seed
        slow = np.mean([x[3] / base[seed] for seed, x in seeds.items()])
        assert row.split(" | ")[4].startswith(f"{slow:.2f} ["), row


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
  (tmp_path / "notarun").mkdir()
  assert _cli(["report", str(tmp_path / "notarun"), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "not a run" in err and "Traceback" not in err
  a, b = _write(tmp_path, "a"), _write(tmp_path, "b", dataset="cifar10")
  assert _cli(["report", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
  assert "different datasets" in capsys.readouterr().err
  assert _cli(["report", str(a), "--out", str(tmp_path / "o"), "--threshold", "2"]) == 2


def test_corrupt_metrics_line_is_an_error(tmp_path):
  run = _write(tmp_path)
  lines = (run / "metrics.jsonl").read_text().splitlines()
  lines[3] = "{not json"
  (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  with pytest.raises(UsageError, match="line 4 is not valid JSON"):
    analysis.load_runs(run)


def test_summary_json_optional(tmp_path):
  run = _write(tmp_path)
  (run / "summary.json").unlink()
  runs = analysis.load_runs(run)
  assert runs.runs[0].status == "unknown" and len(runs.replicas) == 6
  assert json.loads((run / "config.json").read_text())["model"] == "mlp_1x512"


def test_analysis_does_not_import_jax():
  """Every module of zhang.analysis (walked, not listed), zhang.formatting and the report
  command import without jax, flax or optax."""
  code = ("import importlib, pkgutil, sys, zhang.analysis, zhang.cli.report, zhang.formatting; "
          "names = [m.name for m in pkgutil.walk_packages(zhang.analysis.__path__, "
          "'zhang.analysis.')]; "
          "assert len(names) >= 15, names; "
          "[importlib.import_module(n) for n in names]; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


def _imports(path) -> set[str]:
  """The zhang.analysis modules a file imports, at its top or inside a function."""
  import ast
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "zhang.analysis":
        found |= {f"zhang.analysis.{a.name}" for a in node.names}
      elif node.module.startswith("zhang.analysis."):
        found.add(node.module)
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("zhang.analysis.")}
  return found


def test_analysis_modules_import_one_another_without_cycles():
  """The graph of imports between zhang.analysis's modules (deferred ones too) has no
  cycle: a module that plots imports the one that reads, never the other way round."""
  folder = pathlib.Path(analysis.__file__).parent
  graph = {f"zhang.analysis.{p.stem}": _imports(p) for p in folder.glob("*.py")
           if p.stem != "__init__"}
  assert "zhang.analysis.ntk" in graph["zhang.analysis.ntk_plots"]  # the walk sees imports
  done, path = set(), []

  def visit(module):
    assert module not in path, " -> ".join(path[path.index(module):] + [module])
    if module in done or module not in graph:
      return
    path.append(module)
    for other in sorted(graph[module]):
      visit(other)
    path.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)


def test_compare_two_setups(tmp_path):
  a = synthetic.write_example_run(tmp_path / "a", seeds=(0, 1))
  b = synthetic.write_example_run(tmp_path / "b", model="mlp_3x512", seeds=(0, 1), scale=2.0)
  both = analysis.analyze(analysis.load_runs([a, b]), n_boot=5)
  table = tables.compare(both.fit_summary, "slowdown")
  assert list(table.columns) == ["mlp_1x512", "mlp_3x512"]
  assert table.index[0] == "true labels" and table.index[-1] == "gaussian"
  assert table.loc["labels p=0.2", "mlp_1x512"].startswith("≥ ")
  assert table.loc["true labels", "mlp_3x512"].startswith("1.00")


def _legend(fig) -> list[str]:
  """Legend texts of the figure and its axes, wrapped lines joined."""
  legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
  return [t.get_text().replace("\n", " ") for lg in legends for t in lg.get_texts()]


def test_run_in_progress_before_true_labels_fit(tmp_path):
  # Early in a run: nothing has fitted yet (true labels fit at step 40, 44, 48).
  run = synthetic.write_example_run(tmp_path / "early", steps_run=30, status="running")
  a = analysis.analyze(analysis.load_runs(run), n_boot=5)
  assert a.fits.censored.all() and a.fits.slowdown.isna().all()
  # Time-to-fit tables still show censored lower bounds; slowdowns are undefined.
  s = a.fit_summary
  assert s.lower_bound_epoch.all() and (s.mean_epoch == 3.0).all()
  assert s.mean_slowdown.isna().all() and not s.lower_bound_slowdown.any()
  # The scaling table keeps its columns, NaN with a reason.
  assert list(a.scaling.columns) == list(scaling.COLUMNS)
  assert a.scaling.t0.isna().all() and a.scaling.reason.str.contains("all are censored").all()
  assert "no replica has fitted yet" in analysis.verdict(a.scaling, "mlp_1x512")
  fig = plots.fig1b(a.fits, a.scaling, n_boot=5)
  texts = [t.get_text() for t in fig.axes[0].texts]
  assert "no true-label replica has fitted yet: slowdowns undefined" in texts
  assert "not fitted: lower bound" not in _legend(fig)
  out = tmp_path / "report"
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "5"]) == 0
  for name in (*report.FIGURES, "report.md"):
    assert (out / name).stat().st_size > 0, name
  text = (out / "report.md").read_text()
  for needle in ("still in progress", "Slowdowns undefined (mlp_1x512)",
                 "| mlp_1x512 | true labels | 0/3 | ≥ 3.0 [3.0, ∞] | – |",
                 "no scaling law could be fitted (no replica has fitted yet",
                 "Fig. 1b, mlp_1x512:** slowdown undefined"):
    assert needle in text, needle


def test_fit_scaling_columns_when_unfittable(tmp_path):
  reps = [R("labels", 0.0, 0, 40, 0.9), R("labels", 0.0, 1, 60, 0.9)]
  runs = analysis.load_runs(_write(tmp_path, replicas=reps))
  laws = analysis.fit_scaling(analysis.time_to_fit(runs.metrics), n_boot=5)
  assert list(laws.columns) == list(scaling.COLUMNS) and len(laws) == 2
  assert laws.reason.str.startswith("only one corruption level").all()
  assert laws[["t0", "b", "slowdown_p1", "r2", "aic", "delta_aic"]].isna().all().all()
  # Fitted at p = 0 and 1 only (p = 0.5 censored): three parameters would pass through any
  # two levels, so no law.
  two = analysis.fit_scaling(analysis.time_to_fit(analysis.load_runs(
      _write(tmp_path, "two")).metrics), n_boot=5)
  assert (two.reason == "fitted replicas at only 2 corruption levels (p = 0, 1); a law "
          "needs 3").all() and two.aic.isna().all()
  reps = [R("labels", 0.0, 0, 40, 0.9), R("labels", 0.5, 0, 80, 0.5),
          R("labels", 1.0, 0, 120, 0.1), R("labels", 1.0, 1, 150, 0.1)]
  fitted = analysis.fit_scaling(analysis.time_to_fit(analysis.load_runs(
      _write(tmp_path, "ok", replicas=reps)).metrics), n_boot=5)
  assert list(fitted.columns) == list(scaling.COLUMNS) and fitted.reason.isna().all()
  empty = analysis.fit_scaling(analysis.time_to_fit(analysis.load_runs(_write(
      tmp_path, "px", replicas=[R("gaussian", 0.0, 0, 40, 0.1)])).metrics))
  assert empty.empty and list(empty.columns) == list(scaling.COLUMNS)


def test_fig1b_lower_bound_legend_only_when_censored(tmp_path):
  for censor in (False, True):
    runs = analysis.load_runs(synthetic.write_example_run(tmp_path / f"c{censor}",
                                                          seeds=(0, 1), censor=censor))
    fits = analysis.slowdown(analysis.time_to_fit(runs.metrics))
    legend = _legend(plots.fig1b(fits, n_boot=5))
    assert ("not fitted: lower bound" in legend) == censor


def _law_lines(fig):
  """The scaling laws Fig. 1b draws: its dashed lines."""
  return [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]


def _has_nan(texts) -> bool:
  return any(re.search(r"\bnan\b", t, re.IGNORECASE) for t in texts)


# Fit steps per corruption (seed 1 takes 10 steps more): a zigzag that no monotonic law
# follows, and a straight line that the linear law does.
ZIGZAG = {0.0: 40, 0.25: 200, 0.5: 60, 0.75: 200, 1.0: 60}
LINE = {0.0: 40, 0.25: 70, 0.5: 100, 0.75: 130, 1.0: 160}


def _run_with_fit_steps(tmp_path, name, steps, **kwargs):
  reps = [R("labels", p, s, step + 10 * s, 0.5) for p, step in steps.items() for s in (0, 1)]
  return synthetic.write_run(tmp_path / name, reps, max_steps=300, **kwargs)


@pytest.mark.parametrize("steps,drawn", [(ZIGZAG, False), (LINE, True)], ids=["zigzag", "line"])
def test_fig1b_draws_a_law_only_where_it_describes_the_points(tmp_path, steps, drawn):
  run = _run_with_fit_steps(tmp_path, "run", steps)
  a = analysis.analyze(analysis.load_runs(run), n_boot=0)
  best = a.scaling.sort_values("aic").iloc[0]
  assert (best.r2 >= scaling.MIN_R2) == drawn
  fig = plots.fig1b(a.fits, a.scaling, n_boot=5)
  out = tmp_path / "report"
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  text = (out / "report.md").read_text()
  if drawn:
    assert best.form == "linear" and best.r2 > 0.99
    (law,) = _law_lines(fig)
    # Relative to the mean true-label time, 4.5 epochs: (4.5 + 12 p) / 4.5 at p = 1.
    assert law.get_xdata()[[0, -1]].tolist() == [0, 1]
    assert law.get_ydata()[-1] == pytest.approx(16.5 / 4.5, rel=0.02)
    assert f"mlp_1x512: linear law (better AIC), R² = {best.r2:.2f}" in _legend(fig)
    assert (f"- Fig. 1b, mlp_1x512: the linear law is drawn dashed (R² = {best.r2:.2f} ≥ "
            f"0.5).") in text
  else:
    assert not _law_lines(fig)
    why = (f"the {best.form} law does not describe these points (R² = {best.r2:.2f} < 0.5); "
           f"not drawn")
    assert f"mlp_1x512: {why}" in _legend(fig)
    assert f"- Fig. 1b, mlp_1x512: {why}." in text


@pytest.mark.slow
def test_fig1b_run_in_progress_fits_finished_replicas_and_prints_no_nan(tmp_path):
  # At step 100 only the true-label replicas have fitted, both at step 40: no law (its R²
  # would be 0 / 0), and the unfinished levels do not stand in for points.
  run = synthetic.write_example_run(tmp_path / "early", seeds=(0, 1), steps_run=100,
                                    status="running")
  a = analysis.analyze(analysis.load_runs(run), n_boot=0)
  assert a.scaling.aic.isna().all()
  assert a.scaling.reason.str.startswith("only one corruption level (p = 0); 10 replicas "
                                         "still training are left out").all()
  fig = plots.fig1b(a.fits, a.scaling, n_boot=5)
  assert not _law_lines(fig) and not _has_nan(_legend(fig))
  assert "(partial: a run is still in progress)" in fig.get_suptitle()
  out = tmp_path / "report"
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  text = (out / "report.md").read_text()
  assert not _has_nan([text])
  assert "early is still in progress" in text and "8 of 18 replicas have fitted so far" in text
  assert ("**Runs still in progress:** 2 of 12 of their label-corruption replicas have fitted "
          "so far; the 10 still training are left out of the laws.") in text
  # Later: fitted at p = 0, 0.25, 0.5. The law is fitted to those six replicas alone and drawn
  # over their levels, not extrapolated to p = 1.
  run = _run_with_fit_steps(tmp_path, "later", LINE, steps_run=120, status="running")
  a = analysis.analyze(analysis.load_runs(run), n_boot=0)
  lin = a.scaling[a.scaling.form == "linear"].iloc[0]
  assert (lin.n, lin.n_censored) == (6, 0) and lin.reason is None
  assert lin.b == pytest.approx(12 / 4.5, rel=0.05)  # 4.5 + 12 p epochs
  fig = plots.fig1b(a.fits, a.scaling, n_boot=5)
  (law,) = _law_lines(fig)
  assert law.get_xdata()[[0, -1]].tolist() == [0, 0.5]
  assert not _has_nan(_legend(fig))
  out = tmp_path / "later_report"
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  text = (out / "report.md").read_text()
  assert not _has_nan([text]) and "6 of 10 replicas have fitted so far" in text


@pytest.mark.parametrize("which", ["example", "grid"])
def test_fig1b_legend_is_clear_of_every_line(tmp_path, which):
  run = (synthetic.write_example_run(tmp_path / "ex") if which == "example"
         else _grid_run(tmp_path))
  a = analysis.analyze(analysis.load_runs(run), n_boot=0)
  fig = plots.fig1b(a.fits, a.scaling, n_boot=5)
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  (ax,) = [ax for ax in fig.axes if ax.get_visible()]
  legend = (fig.legends or [ax.get_legend()])[0]
  box = legend.get_window_extent(renderer)
  (one,) = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [1, 1]]  # y = 1
  assert box.height > 0 and not box.overlaps(one.get_window_extent(renderer))
  # Outside the axes, so clear of every curve, and of the x label; whole, in the figure.
  assert not box.overlaps(ax.get_window_extent(renderer))
  assert not box.overlaps(ax.xaxis.label.get_window_extent(renderer))
  assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0


def test_fig1a_coinciding_curves_stay_visible(tmp_path):
  reps = [R("labels", 0.0, 0, 40, 0.9), R("shuffled_pixels", 0.0, 0, 40, 0.9),
          R("random_pixels", 0.0, 0, 120, 0.1)]
  runs = analysis.load_runs(_write(tmp_path, replicas=reps))
  fig = plots.fig1a(runs.metrics)
  lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
  top = lines["shuffled pixels (1 seed): on top of true labels"]
  under = lines["true labels (1 seed)"]
  assert top.get_linewidth() < under.get_linewidth() and top.get_zorder() > under.get_zorder()
  assert "random pixels (1 seed)" in lines  # a different curve is not marked


def test_report_states_epochs_as_examples_over_n_train(tmp_path):
  run = _write(tmp_path, n_train=1000, batch_size=128)
  out = tmp_path / "report"
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  text = (out / "report.md").read_text()
  assert "examples seen / n_train" in text
  assert ("n_train = 1,000 / batch size 128 = 7.81 steps per epoch, so 200 steps are 25.60 "
          "epochs") in text


# A grid over learning rate x weight decay x corruption x seed. Replica time to fit is
# BASE[lr, wd] * (1 + GROWTH[wd] * p) * (1 + seed) steps: each combination has its own
# true-label time and its own slowdown, and seed 1 takes twice as long as seed 0.
BASE = {(0.01, 0.0): 40, (0.01, 5e-4): 60, (0.03, 0.0): 20, (0.03, 5e-4): 40}
GROWTH = {0.0: 2.0, 5e-4: 1.0}
COMBOS = ["lr 0.01, wd 0", "lr 0.01, wd 0.0005", "lr 0.03, wd 0", "lr 0.03, wd 0.0005"]


def _grid_run(tmp_path, name="grid", **kwargs):
  reps = [R("labels", p, s, int(BASE[lr, wd] * (1 + GROWTH[wd] * p) * (1 + s)), 0.9 - 0.8 * p,
            learning_rate=lr, weight_decay=wd)
          for (lr, wd) in BASE for p in (0.0, 0.5, 1.0) for s in (0, 1)]
  return synthetic.write_run(tmp_path / name, reps, max_steps=300, **kwargs)


def test_grid_hparams_are_replica_columns(tmp_path):
  runs = analysis.load_runs(_grid_run(tmp_path))
  r = runs.replicas
  assert len(r) == 24 and set(r.augmentation) == {"none"}
  assert sorted(set(zip(r.learning_rate, r.weight_decay))) == sorted(BASE)
  # Only the axes that vary are named; augmentation does not.
  assert sorted(set(r.hparams)) == COMBOS
  assert set(r.base_setup) == {"mlp_1x512"}
  assert set(r.setup) == {f"mlp_1x512 ({c})" for c in COMBOS}
  wd = r.set_index("replica").weight_decay
  regs = r.set_index("replica").regularizers
  assert (regs[wd > 0] == "weight decay").all() and (regs[wd == 0] == "none").all()
  # The per-row lr is the replica's own scheduled rate.
  m = runs.metrics
  first = m[m.step == 0]
  np.testing.assert_allclose(first.lr, first.learning_rate, rtol=1e-6)


def test_grid_fit_times_and_slowdowns_per_combination(tmp_path):
  a = analysis.analyze(analysis.load_runs(_grid_run(tmp_path)), n_boot=20)
  s = a.fits
  # Each combination against its own true-label replica of the same seed: 1 + GROWTH p.
  assert s.paired.all()
  expected_step = [BASE[lr, wd] * (1 + GROWTH[wd] * p) * (1 + seed)
                   for lr, wd, p, seed in zip(s.learning_rate, s.weight_decay, s.corruption,
                                              s.seed)]
  assert s.time_step.tolist() == expected_step
  assert s.baseline_step.tolist() == [BASE[lr, wd] * (1 + seed) for lr, wd, seed in
                                      zip(s.learning_rate, s.weight_decay, s.seed)]
  assert np.allclose(s.slowdown, 1 + s.weight_decay.map(GROWTH) * s.corruption)
  # One fit-summary row per (combination, corruption), in numeric order.
  f = a.fit_summary
  assert len(f) == 12 and not f.duplicated(["learning_rate", "weight_decay",
                                            "corruption"]).any()
  assert list(f.hparams.unique()) == COMBOS
  for r in f.itertuples():
    # Mean over seeds 0 and 1 of BASE (1 + GROWTH p) (1 + seed) steps, 10 steps an epoch.
    steps = BASE[r.learning_rate, r.weight_decay] * (1 + GROWTH[r.weight_decay] * r.corruption)
    assert r.mean_epoch == pytest.approx(steps * 1.5 / 10)
    assert r.mean_slowdown == pytest.approx(1 + GROWTH[r.weight_decay] * r.corruption)
    assert r.n == 2 and r.n_censored == 0
  # A scaling law per combination: the linear form recovers its growth rate, and t0 is the
  # combination's true-label time (geometric mean over the seeds, in epochs).
  lin = a.scaling[a.scaling.form == "linear"]
  assert list(lin.hparams) == COMBOS
  for r in lin.itertuples():
    assert r.b == pytest.approx(GROWTH[r.weight_decay], rel=1e-3)
    assert r.t0 == pytest.approx(BASE[r.learning_rate, r.weight_decay] * math.sqrt(2) / 10,
                                 rel=1e-3)
  # Table 1: a row per combination and condition.
  t1 = a.table1
  assert len(t1) == 12 and list(t1.hparams.unique()) == COMBOS
  assert set(t1[t1.weight_decay > 0].regularizers) == {"weight decay"}
  assert (t1.n == 2).all() and (t1.n_fitted == 2).all()


def test_grid_fig1b_draws_one_curve_per_combination(tmp_path):
  a = analysis.analyze(analysis.load_runs(_grid_run(tmp_path)), n_boot=5)
  fig = plots.fig1b(a.fits, a.scaling, n_boot=5)
  curves = [ln for ln in fig.axes[0].get_lines() if ln.get_label() in COMBOS
            or ln.get_label().split(":")[0] in COMBOS and "on top of" in ln.get_label()]
  # The two learning rates of a weight decay have the same slowdowns: one lies on the other.
  assert [ln.get_label() for ln in curves] == [
      *COMBOS[:2], f"{COMBOS[2]}: on top of {COMBOS[0]}", f"{COMBOS[3]}: on top of {COMBOS[1]}"]
  # Each curve is its combination's mean slowdown at p = 0, 0.5, 1.
  for line, (_, wd) in zip(curves, BASE):
    assert np.allclose(line.get_ydata(), [1, 1 + GROWTH[wd] / 2, 1 + GROWTH[wd]])
  laws = [t for t in _legend(fig) if "law (better AIC)" in t]
  assert len(laws) == 4 and all(t.split(":")[0] in COMBOS for t in laws)


@pytest.mark.slow
def test_grid_report_lists_combinations(tmp_path):
  out = tmp_path / "report"
  assert _cli(["report", str(_grid_run(tmp_path)), "--out", str(out), "--n_boot", "0"]) == 0
  text = (out / "report.md").read_text()
  assert "## Hyper-parameter combinations" in text and "4 combinations" in text
  assert "| mlp_1x512 (lr 0.03, wd 0.0005) | 0.03 | 0.0005 | none | 6 | 0, 1 |" in text
  assert "| model | hyper-parameters | parameters |" in text
  assert ("| mlp_1x512 (lr 0.03, wd 0) | labels p=0.5 | 2/2 | 6.0 [4.0, 8.0] | "
          "2.00 [2.00, 2.00] |") in text
  assert "| mlp_1x512 (lr 0.01, wd 0.0005) | linear | `t(p) = t0 * (1 + b*p)` |" in text
  for name in report.FIGURES:
    assert (out / name).stat().st_size > 0
  # One learning rate and weight decay: no combination appears anywhere.
  single = tmp_path / "single"
  assert _cli(["report", str(_write(tmp_path)), "--out", str(single), "--n_boot", "0"]) == 0
  text = (single / "report.md").read_text()
  assert "Hyper-parameter" not in text and "hyper-parameters" not in text
  assert "| mlp_1x512 | true labels | 2/2 |" in text


@pytest.mark.parametrize("which", ["config.json", "summary.json"])
def test_a_run_of_another_format_is_refused_in_one_line(tmp_path, capsys, which):
  """A run whose config.json or summary.json is of another run-file format (here from
  before the files carried one) is refused by the loader, and by `zhang report` with exit 2,
  in one line naming the version and what to do; its files are left as they were."""
  run = _write(tmp_path, "old")
  path = run / which
  fields = json.loads(path.read_text())
  assert fields.pop("format") == 1
  path.write_text(json.dumps(fields))
  before = {p.name: p.read_bytes() for p in run.iterdir()}
  with pytest.raises(UsageError, match=rf"{which} is in run-file format 0 .* reads format 1"):
    analysis.load_runs(run)
  from zhang.cli import main
  assert main(["report", str(run), "--out", str(tmp_path / "o"), "--n_boot", "0"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith(f"zhang report: error: {path} is in run-file format 0 (no format "
                        f"field: written before run files carried one)")
  assert "rerun `zhang train --restart`" in err and "version of zhang that wrote it" in err
  assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_table1_per_replica_augmentation_and_weight_decay(tmp_path):
  reps = [R("labels", 0.0, 0, 40, 0.9), R("labels", 0.0, 0, 60, 0.9, weight_decay=5e-4),
          R("labels", 0.0, 0, 80, 0.9, augmentation="crop"),
          R("labels", 1.0, 0, 120, 0.1)]
  runs = analysis.load_runs(_write(tmp_path, replicas=reps, dataset="cifar10"))
  t1 = tables.table1(runs).set_index(["weight_decay", "augmentation", "condition"])
  assert t1.regularizers[5e-4, "none", "true labels"] == "weight decay"
  assert t1.regularizers[0.0, "crop", "true labels"] == "augmentation (crop)"
  assert t1.regularizers[0.0, "none", "true labels"] == "none"
  # The paper's Table 1 row that matches each replica's own crop and weight decay.
  assert t1.paper_test_acc[0.0, "none", "true labels"] == pytest.approx(0.5051)
  assert t1.paper_test_acc[5e-4, "none", "true labels"] == pytest.approx(0.5039)
  assert math.isnan(t1.paper_test_acc[0.0, "crop", "true labels"])  # no MLP + crop row
  # The random-label replica (wd 0, no augmentation) is slowed against the true-label
  # replica of its own combination (40 steps), not the mean of all three (60).
  s = analysis.slowdown(analysis.time_to_fit(runs.metrics)).set_index("replica")
  assert s.slowdown[3] == pytest.approx(120 / 40) and s.baseline_step[3] == 40
  assert s.slowdown[[0, 1, 2]].tolist() == [1.0, 1.0, 1.0]


def test_flags_have_one_spelling(tmp_path, capsys):
  run = _write(tmp_path)
  with pytest.raises(SystemExit):
    _cli(["report", str(run), "--out", str(tmp_path / "o"), "--n-boot", "0"])
  assert "unrecognized arguments: --n-boot" in capsys.readouterr().err
  assert _cli(["report", str(run), "--out", str(tmp_path / "o"), "--n_boot", "0",
               "--loss_below", "0.1"]) == 0


def _add_noisy_and_reliability(run_dir):
  """Adds the clean/noisy train accuracies to every row and reliability bins to the
  summary, as a run that recorded them has."""
  path = run_dir / "metrics.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  for row in rows:
    noisy = row["kind"] == "labels" and row["corruption"] > 0
    row["train_acc_clean"] = row["train_acc"]
    row["train_acc_noisy"] = 0.8 * row["train_acc"] if noisy else None
    row["train_acc_noisy_vs_true"] = 0.1 if noisy else None
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  summary = json.loads((run_dir / "summary.json").read_text())
  for i, rep in enumerate(summary["replicas"]):
    bins = [[(b + 0.5) / 15, min(1.0, (b + 0.5) / 15 + 0.02 * i), 3 + b] for b in range(15)]
    bins[0] = [None, None, 0]  # an empty bin
    rep["test_reliability"] = bins
  (run_dir / "summary.json").write_text(json.dumps(summary))
  _add_fit_times(run_dir, summary)


def _add_fit_times(run_dir, summary, n=200):
  """A fit_times.npz as a run writes it: noisy examples (their share the replica's
  corruption) fitted later than clean ones, a few never."""
  rng = np.random.default_rng(0)
  last = summary["steps_run"]
  reps = summary["replicas"]
  noisy = np.stack([rng.random(n) < (r["corruption"] if r["kind"] == "labels" else 0)
                    for r in reps])
  fit = np.where(noisy, rng.integers(last // 2, last + 1, noisy.shape),
                 rng.integers(0, last // 4 + 1, noisy.shape)).astype(np.int32)
  fit[:, :3] = -1
  np.savez_compressed(run_dir / "fit_times.npz", fit_step=fit, noisy=noisy,
                      step=np.asarray(last))
  return fit, noisy, last


@pytest.mark.slow
def test_report_writes_noisy_fit_and_reliability_only_when_recorded(tmp_path):
  old = synthetic.write_example_run(tmp_path / "old")
  out = tmp_path / "old_report"
  assert _cli(["report", str(old), "--out", str(out), "--n_boot", "10"]) == 0
  assert not (out / "noisy_fit.png").exists() and not (out / "reliability.png").exists()
  assert "noisy_fit.png" not in (out / "report.md").read_text()
  new = synthetic.write_example_run(tmp_path / "new")
  _add_noisy_and_reliability(new)
  out = tmp_path / "new_report"
  assert _cli(["report", str(new), "--out", str(out), "--n_boot", "10"]) == 0
  text = (out / "report.md").read_text()
  for name in report.OPTIONAL_FIGURES:
    image = matplotlib.image.imread(out / name)
    assert image.shape[:2] == (plots.FIGSIZE[1] * plots.DPI, plots.FIGSIZE[0] * plots.DPI)
    assert image[..., :3].std() > 0.05
    assert f"({name})" in text
  runs = analysis.load_runs([new])
  levels = sorted(runs.metrics.loc[(runs.metrics.kind == "labels")
                                   & (runs.metrics.corruption > 0), "corruption"].unique())
  fig = plots.noisy_fit(runs.metrics)
  assert len([ax for ax in fig.axes if ax.get_visible()]) == len(levels)
  table = report.reliability_table(runs)
  fig = plots.reliability(table)
  assert len([ax for ax in fig.axes if ax.get_visible()]) == table[
      table.kind == "labels"].corruption.nunique()


def test_fit_times_tables_match_the_arrays(tmp_path):
  run_dir = synthetic.write_example_run(tmp_path / "run")
  summary = json.loads((run_dir / "summary.json").read_text())
  fit, noisy, last = _add_fit_times(run_dir, summary)
  runs = analysis.load_runs([run_dir])
  table = memorization.per_replica(runs)
  assert len(table) == len(summary["replicas"])
  for _, row in table.iterrows():
    i = int(row.replica)
    f, z = fit[i], noisy[i]
    assert row.n_noisy == z.sum() and row.n_clean == (~z).sum()
    if (~z).any():
      assert row.clean_fitted == pytest.approx((f[~z] >= 0).mean())
      assert row.clean_median_step == pytest.approx(np.median(f[~z & (f >= 0)]))
    else:  # random labels: every example's label changed
      assert np.isnan(row.clean_fitted) and np.isnan(row.clean_median_step)
    if z.any():
      assert row.noisy_median_step == pytest.approx(np.median(f[z & (f >= 0)]))
      fitted = np.flatnonzero(f >= 0)
      k = max(1, int(round(0.1 * len(fitted))))
      assert row.noisy_share_last == pytest.approx(
          z[fitted[np.argsort(f[fitted], kind="stable")[-k:]]].mean())
    else:
      assert np.isnan(row.noisy_median_step) and np.isnan(row.noisy_share_last)
  # Noise fitted later here by construction: the report says so in numbers.
  text = "\n".join(memorization.report_lines(runs))
  assert "## When each example is fitted" in text and "is later than the clean ones'" in text
  curves = memorization.curves(runs)
  one = curves[(curves.replica == 1) & (curves.step == last)].iloc[0]
  assert one.clean == pytest.approx((fit[1][~noisy[1]] >= 0).mean())
  (run_dir / "fit_times.npz").write_bytes(b"not a zip")
  with pytest.raises(UsageError, match="fit_times.npz is damaged"):
    memorization.per_replica(analysis.load_runs([run_dir]))


def _llc_json(run, config_hash, values):
  """An llc.json as `zhang llc` writes it, computed from ``run`` (its path and hash): one
  true-label and one random-label replica per seed, with lambda-hat ``values[(p, seed)]``."""
  entries = [dict(replica=i, kind="labels", corruption=p, seed=seed, step=200, llc=v,
                  llc_std=0.0, llc_se=0.1, num_params=1000, learning_rate=0.01,
                  weight_decay=0.0, augmentation="none", label_noise=0.9 * p,
                  llc_per_chain=[v], init_loss=0.01, mean_loss=0.02, diverged_chains=0,
                  settled=True, drift=0.0)
             for i, ((p, seed), v) in enumerate(sorted(values.items()))]
  settings = dict(run=str(run), config_hash=config_hash, model="mlp_1x512", dataset="digits",
                  step_size=1e-4, gamma=100.0, nbeta=10.0, nbeta_rule="n", chains=1,
                  draws=10, burnin=5, batch_size=8, seed=0)
  return json.dumps(dict(settings=settings, replicas=entries))


def _run_and_llc_values(tmp_path):
  """A synthetic run of config hash 1234abcd, an empty report folder, and lambda-hats by
  (corruption, seed) for an llc.json of it."""
  run = synthetic.write_example_run(tmp_path / "mlp1", seeds=(0, 1))
  summary = json.loads((run / "summary.json").read_text())
  (run / "summary.json").write_text(json.dumps(summary | {"config_hash": "1234abcd"}))
  out = tmp_path / "report"
  out.mkdir()
  return run, out, {(0.0, 0): 12.0, (0.0, 1): 14.0, (1.0, 0): 40.0, (1.0, 1): 50.0}


@pytest.mark.slow
def test_report_embeds_a_probe_of_its_own_run_and_skips_another_runs(tmp_path, capsys):
  """llc.json records the run it was computed from (settings.config_hash, summary.json's):
  the report embeds it for that run, and for another run says where it is from and skips
  it, with one line on the terminal."""
  run, out, values = _run_and_llc_values(tmp_path)
  (out / "llc.json").write_text(_llc_json(run, "1234abcd", values))
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  text = (out / "report.md").read_text()
  assert "| true labels | 2 | 13 | 0.071 | 12 - 14 | 0.01 |" in text  # mean, se: sqrt(2)/2/10
  assert "| random labels | 2 | 45 | 0.071 | 40 - 50 | 0.01 |" in text
  assert "(llc_vs_corruption.png)" in text and "skipped" not in capsys.readouterr().err
  # The same folder, another run's llc.json (another config hash): not embedded.
  (out / "llc.json").write_text(_llc_json("runs/digits", "99999999", values))
  (out / "llc_vs_corruption.png").unlink()
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  text = (out / "report.md").read_text()
  section = text[text.index("## Local learning coefficient"):]
  assert section.splitlines()[2].startswith(
      f"{out}/llc.json was computed from runs/digits (config hash 99999999), not from the "
      f"runs reported here")
  assert "| true labels | 2 | 13 |" not in text and "(llc_vs_corruption.png)" not in text
  assert not (out / "llc_vs_corruption.png").exists()
  err = [line for line in capsys.readouterr().err.splitlines() if "llc.json" in line]
  assert len(err) == 1 and "computed from runs/digits (config hash 99999999)" in err[0]
  assert err[0].endswith("skipped")


def test_a_probe_without_a_hash_is_matched_by_its_run_path(tmp_path):
  """A run or a probe file that records no config hash (older files) is matched by the
  probe's ``settings.run`` path alone."""
  run = synthetic.write_example_run(tmp_path / "mlp1", seeds=(0,))
  runs = analysis.load_runs(run)
  from zhang.analysis import provenance
  assert provenance.source(dict(run=str(run), config_hash="abc"), runs) is runs.runs[0]
  assert provenance.source(dict(run=str(tmp_path / "other")), runs) is None
  runs.runs[0].summary["config_hash"] = "def"
  assert provenance.source(dict(run=str(run), config_hash="abc"), runs) is None
  assert provenance.source(dict(run="elsewhere", config_hash="def"), runs) is runs.runs[0]


def _report_error(argv, capsys) -> str:
  """The one line `zhang report` printed on stderr for bad input (exit 2)."""
  assert _cli(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err
  return err.strip()


@pytest.mark.parametrize("status", ["complete", "preempted"])
def test_a_torn_row_of_a_finished_run_is_refused_naming_file_and_line(tmp_path, capsys,
                                                                      status):
  """Not dropped: a run cut short by one row reads as another run (its replica's last
  accuracy shifts to an earlier evaluation's)."""
  run = _write(tmp_path, status=status)
  path = run / "metrics.jsonl"
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[:-1] + [lines[-1][:len(lines[-1]) // 2]]))
  out = tmp_path / "o"
  line = _report_error(["report", str(run), "--out", str(out)], capsys)
  assert f"{path} line {len(lines)} is not valid JSON (a torn row)" in line
  assert not out.exists()


@pytest.mark.parametrize("field,value,wanted", [
    ("test_acc", "0.9", "a number"), ("train_loss", True, "a number"),
    ("step", 10.5, "an integer"), ("replica", None, "an integer"),
    ("corruption", "high", "a number")])
def test_a_metrics_row_with_a_wrong_type_is_one_line(tmp_path, capsys, field, value, wanted):
  run = _write(tmp_path)
  path = run / "metrics.jsonl"
  lines = path.read_text().splitlines()
  row = json.loads(lines[5])
  row[field] = value
  lines[5] = json.dumps(row)
  path.write_text("\n".join(lines) + "\n")
  line = _report_error(["report", str(run), "--out", str(tmp_path / "o")], capsys)
  assert line.endswith(f"{path} line 6: {field} is {json.dumps(value)}, not {wanted}: the "
                       f"file is damaged")


def test_a_diverged_replicas_null_metrics_are_read_as_nan(tmp_path):
  run = _write(tmp_path)
  path = run / "metrics.jsonl"
  lines = path.read_text().splitlines()
  row = json.loads(lines[-1])
  row["test_acc"] = row["train_loss"] = None
  lines[-1] = json.dumps(row)
  path.write_text("\n".join(lines) + "\n")
  metrics = analysis.load_runs(run).metrics
  assert metrics.test_acc.isna().sum() == 1 and metrics.train_loss.isna().sum() == 1


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_loss_below_must_be_a_finite_positive_loss(tmp_path, capsys, value):
  run = _write(tmp_path)
  line = _report_error(["report", str(run), "--out", str(tmp_path / "o"), "--loss_below",
                        value], capsys)
  assert line == (f"zhang report: error: --loss_below must be a finite loss > 0, got "
                  f"{float(value)}")
  assert not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_refused_untouched(tmp_path, capsys):
  run = _write(tmp_path)
  (tmp_path / "o").write_text("notes")
  line = _report_error(["report", str(run), "--out", str(tmp_path / "o")], capsys)
  assert line == (f"zhang report: error: --out {tmp_path / 'o'} is a file, not a folder: give "
                  f"a folder (created if missing) for the outputs")
  assert (tmp_path / "o").read_text() == "notes"


# --- Figures say what they draw. -------------------------------------------------------------

def _legend_texts(ax) -> list[str]:
  legend = ax.get_legend()
  return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_fit_times_labels_the_noisy_line_in_every_panel():
  rows = [dict(corruption=p, step=s, clean=s / 100, noisy=None if p == 0 else s / 200)
          for p in (0.0, 0.5, 1.0) for s in (0, 50, 100)]
  fig = plots.fit_times(pd.DataFrame(rows), "digits")
  axes = [ax for ax in fig.axes if ax.lines]
  assert len(axes) == 3
  for ax in axes:
    drawn = {line.get_label() for line in ax.lines}
    assert set(_legend_texts(ax)) == drawn, ax.get_title()
  assert _legend_texts(axes[0]) == ["clean examples"]
  assert _legend_texts(axes[2]) == ["clean examples", "noisy examples"]


def test_fig1a_title_names_only_the_kinds_the_run_has(tmp_path):
  runs = analysis.load_runs(synthetic.write_example_run(tmp_path / "run", seeds=(0,)))
  m = runs.metrics
  every = plots.fig1a(m)._suptitle.get_text()
  assert every.startswith("Fig. 1a: fitting random labels, shuffled pixels, random pixels and "
                          "gaussian on ")
  labels = plots.fig1a(m[m.kind == "labels"])._suptitle.get_text()
  assert labels.startswith("Fig. 1a: fitting random labels on ") and "pixels" not in labels
  true = plots.fig1a(m[(m.kind == "labels") & (m.corruption == 0)])._suptitle.get_text()
  assert true.startswith("Fig. 1a: fitting true labels on ")


def test_fig1b_says_which_curve_lies_on_top_of_another(tmp_path):
  """Two models with the same fit times up to a factor: the same slowdowns, one curve."""
  a = synthetic.write_example_run(tmp_path / "a")
  b = synthetic.write_example_run(tmp_path / "b", model="mlp_3x512", scale=1.0)
  c = synthetic.write_example_run(tmp_path / "c", model="alexnet_small", scale=1.0,
                                  censor=False, seeds=(5, 6, 7))
  both = analysis.analyze(analysis.load_runs([a, b]), n_boot=0)
  texts = [t.get_text() for t in plots.fig1b(both.fits, both.scaling, n_boot=10).legends[0]
           .get_texts()]
  assert "mlp_3x512: on top of mlp_1x512" in texts and "mlp_1x512" in texts
  other = analysis.analyze(analysis.load_runs([a, c]), n_boot=0)
  texts = [t.get_text() for t in plots.fig1b(other.fits, other.scaling, n_boot=10).legends[0]
           .get_texts()]
  assert not any("on top of" in t for t in texts)


def test_ntk_fig1b_legend_shows_each_series_marker():
  from zhang.analysis import ntk_plots  # pylint: disable=g-import-not-at-top
  reps = []
  for p, measured in ((0.0, 1.0), (0.5, 3.0), (1.0, 5.0)):
    reps.append(dict(kind="labels", corruption=p, seed=0, measured_slowdown=measured,
                     predicted_slowdown=1.0 if p == 0 else None,
                     predicted_slowdown_at_least=None if p == 0 else 10.0,
                     predicted_slowdown_constant_lr_accuracy=2 * measured,
                     predicted_slowdown_constant_lr_residual=None,
                     predicted_slowdown_constant_lr_residual_at_least=20.0))
  settings = dict(criterion="accuracy", fit_threshold=1.0, threshold=0.1, horizon=1000,
                  model="mlp_1x512", dataset="digits")
  (ax,) = ntk_plots._slowdown(dict(settings=settings, replicas=reps)).axes
  legend = ax.get_legend()
  shown = [(t.get_text(), h.get_marker(), h.get_linestyle())
           for t, h in zip(legend.get_texts(), legend.legend_handles)]
  assert [(m, ls) for _, m, ls in shown] == [
      ("o", "-"),  # measured: means at three corruptions, a line
      ("o", "None"),  # the run's schedule: one mean (p = 0), no line; the rest lower bounds
      ("s", "-"),  # constant rate, accuracy
      ("^", "None"),  # constant rate, residual: lower bounds only
      ("^", "None")]  # what the triangles mean
  assert shown[0][0] == "measured (network)" and "residual" in shown[3][0]
  assert shown[4][0] == "never fits by step 1,000: the slowdown is at least this"


@pytest.mark.slow
def test_report_embeds_the_llc_traces_that_zhang_llc_kept(tmp_path):
  run, out, values = _run_and_llc_values(tmp_path)
  llc = json.loads(_llc_json(run, "1234abcd", values))
  (out / "llc.json").write_text(json.dumps(llc))
  entries = llc["replicas"]

  def traces(replicas):
    np.savez_compressed(out / "llc_traces.npz",
                        traces=np.linspace(1, 0, 2 * 15).reshape(1, 2, 15).repeat(4, 0),
                        init_loss=np.zeros(4, np.float32), replica=np.asarray(replicas),
                        step=np.asarray([e["step"] for e in entries]), burnin=np.asarray(5))

  traces([e["replica"] for e in entries])
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  text = (out / "report.md").read_text()
  assert "(llc_traces.png)" in text and "(llc_vs_corruption.png)" in text
  assert (out / "llc_traces.png").read_bytes().startswith(b"\x89PNG")
  # Traces of other entries (another llc run's), or a damaged file: not shown as these.
  (out / "llc_traces.png").unlink()
  traces([9, 8, 7, 6])
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  assert "(llc_traces.png)" not in (out / "report.md").read_text()
  (out / "llc_traces.npz").write_bytes(b"not a zip")
  assert _cli(["report", str(run), "--out", str(out), "--n_boot", "0"]) == 0
  assert "(llc_traces.png)" not in (out / "report.md").read_text()
  assert not (out / "llc_traces.png").exists()
