"""Tests for zhang.analysis.measures on measures.json files built here: Kendall's tau, the
granulated taus and the randomization test against counts of pairs made by brute force."""

import itertools
import json
import math
import types

import matplotlib.image
import numpy as np
import pytest

from zhang.analysis import measures, provenance, report, synthetic
from zhang.errors import UsageError

BASE = dict(model="mlp_1x512", kind="labels", corruption=0.0, seed=0, learning_rate=0.01,
            weight_decay=0.0, augmentation="none")


def _replica(i, gap, values, **axes):
  """One replica of measures.json, as `zhang measures` writes it."""
  return dict(BASE | axes, replica=i, step=100, train_acc=1.0, test_acc=1.0 - gap,
              train_loss=0.01, test_loss=1.0, gap=gap, measures=values, search={}, layers=[])


def _result(replicas, config_hash="1234abcd", run="runs/x", runs=None):
  names = list(dict.fromkeys(n for r in replicas for n in r["measures"]))
  settings = dict(run=run, config_hash=config_hash, step="fit", measures=names)
  if runs is not None:
    settings["runs"] = runs
  return dict(run=run, settings=settings, replicas=replicas)


def _pairs(x, y):
  """Brute force over the pairs: concordant, discordant, tied in x, tied in y."""
  c = d = tx = ty = 0
  for i, j in itertools.combinations(range(len(x)), 2):
    s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    c, d = c + (s > 0), d + (s < 0)
    tx, ty = tx + (x[i] == x[j]), ty + (y[i] == y[j])
  return c, d, tx, ty


def _tau_a(x, y):
  """(concordant - discordant) / pairs: Jiang et al.'s tau, a tie counting 0."""
  c, d, _, _ = _pairs(x, y)
  return (c - d) / (len(x) * (len(x) - 1) / 2)


def _tau_b(x, y):
  """tau-b: (C - D) / sqrt((n0 - n1)(n0 - n2)), n1 and n2 the pairs tied in x and in y."""
  c, d, tx, ty = _pairs(x, y)
  n0 = len(x) * (len(x) - 1) / 2
  return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def test_kendall_counts_pairs_and_ties():
  rng = np.random.default_rng(0)
  x, y = rng.permutation(9).astype(float), rng.normal(size=9)
  assert measures.kendall(x, y)[0] == pytest.approx(_tau_a(x, y), abs=1e-12)
  x = np.array([1, 1, 2, 2, 3, 3, 4, 5.0])
  y = np.array([1, 2, 2, 3, 3, 3, 4, 1.0])
  assert _pairs(x, y)[2:] == (3, 5)  # the ties matter here: tau-a differs
  assert measures.kendall(x, y)[0] == pytest.approx(_tau_b(x, y), abs=1e-12)
  assert measures.kendall(x, y)[0] != pytest.approx(_tau_a(x, y), abs=1e-3)
  assert all(math.isnan(v) for v in measures.kendall([2.0] * 5, y[:5]))  # constant
  assert all(math.isnan(v) for v in measures.kendall([1.0], [2.0]))


def _grid(rng):
  """Learning rate x weight decay x seed, true labels: a measure with no ties, one that
  follows the learning rate alone, and gaps without ties."""
  lrs, wds, seeds = (0.01, 0.1, 1.0), (0.0, 5e-4), (0, 1, 2)
  reps = []
  for i, (lr, wd, seed) in enumerate(itertools.product(lrs, wds, seeds)):
    reps.append(_replica(i, float(rng.uniform(0.0, 0.5)),
                         dict(noisy=float(rng.normal()), by_lr=10.0 * lr + 1.0),
                         learning_rate=lr, weight_decay=wd, seed=seed))
  return reps


def test_granulated_tau_is_the_mean_over_groups_that_differ_in_one_axis():
  reps = _grid(np.random.default_rng(1))
  a = measures.analyze(_result(reps))
  assert list(a.taus) == ["true labels"]  # one setting: no other kind or level
  table = a.taus["true labels"].set_index("measure")
  axes = ("learning_rate", "weight_decay", "seed")
  assert a.axes["true labels"] == list(axes)
  for name in ("noisy", "by_lr"):
    x = np.array([r["measures"][name] for r in reps])
    y = np.array([r["gap"] for r in reps])
    assert table.loc[name, "tau"] == pytest.approx(_tau_b(x, y), abs=1e-12)
    psis = []
    for axis in axes:
      groups = {}
      for r in reps:  # the replicas that share every other axis
        groups.setdefault(tuple(r[b] for b in axes if b != axis), []).append(r)
      taus = [_tau_a([r["measures"][name] for r in g], [r["gap"] for r in g])
              for g in groups.values()]
      assert table.loc[name, f"{axis}_groups"] == len(groups) == 18 // len({r[axis] for r in reps})
      assert table.loc[name, axis] == pytest.approx(np.mean(taus), abs=1e-12), (name, axis)
      psis.append(np.mean(taus))
    assert table.loc[name, "psi"] == pytest.approx(np.mean(psis), abs=1e-12)
  # The learning rate alone moves by_lr: along weight decay and seed it ranks nothing.
  assert table.loc["by_lr", "weight_decay"] == table.loc["by_lr", "seed"] == 0.0


def test_missing_and_constant_measures():
  reps = _grid(np.random.default_rng(2))
  for i, r in enumerate(reps):
    r["measures"] |= dict(const=3.0, none=None, gappy=None if i in (4, 11) else r["gap"] ** 2)
  a = measures.analyze(_result(reps))
  table = a.taus["true labels"].set_index("measure")
  kept = [r for i, r in enumerate(reps) if i not in (4, 11)]
  assert (table.loc["gappy", "n"], table.loc["gappy", "missing"]) == (16, 2)
  assert table.loc["gappy", "tau"] == pytest.approx(  # the square keeps the gaps' order
      _tau_b([r["gap"] ** 2 for r in kept], [r["gap"] for r in kept])) == 1.0
  for name in ("const", "none"):
    assert table.loc[name, ["tau", "p", "learning_rate", "seed", "psi"]].isna().all()
  v = measures.verdicts(a.taus["true labels"])
  assert list(v["ranks"].measure) == ["gappy"]
  assert list(v["constant"].measure) == ["const"] and list(v["no_tau"].measure) == ["none"]
  text = "\n".join(measures.report_lines(a))
  assert "- Constant over these replicas, so no tau: const." in text
  assert "- Fewer than two replicas with a value, so no tau: none." in text
  assert "without a value (or a gap): gappy (2 of 18)." in text
  row = table.loc["noisy"]
  assert (f"| noisy | 18 | {row.tau:.2f} | {row.p:.2g} | {row.learning_rate:.2f} | "
          f"{row.weight_decay:.2f} | {row.seed:.2f} | {row.psi:.2f} |") in text
  assert list(a.taus["true labels"].measure[:1]) == ["gappy"]  # sorted by tau


def test_randomization_pairs_random_labels_with_their_true_label_twins():
  v0, v1 = [1.0, 2.0, 4.0, 0.0, 5.0], [3.0, 2.0, 2.0, 1.0, None]
  g0, g1 = [0.1, 0.1, 0.1, 0.2, 0.1], [0.9, 0.9, 0.05, 0.8, 0.9]
  reps = []
  for seed in range(5):
    reps.append(_replica(len(reps), g0[seed], dict(m=v0[seed]), seed=seed))
    reps.append(_replica(len(reps), g1[seed], dict(m=v1[seed]), seed=seed, corruption=1.0))
  reps.append(_replica(len(reps), 0.5, dict(m=100.0), seed=0, corruption=0.5))  # not a pair
  reps.append(_replica(len(reps), 0.9, dict(m=100.0), seed=9, corruption=1.0))  # no twin
  reps.append(_replica(len(reps), 0.9, dict(m=100.0), seed=0, kind="gaussian"))
  row = measures.analyze(_result(reps)).randomization.set_index("measure").loc["m"]
  ok = [s for s in range(5) if v1[s] is not None]
  assert (row.pairs, row.missing) == (len(ok), 1)
  ratios = [v1[s] / v0[s] for s in ok if v0[s] > 0]
  assert row.median_ratio == pytest.approx(np.median(ratios))
  assert row.grows == pytest.approx(np.mean([v1[s] > v0[s] for s in ok]))
  assert row.with_gap == pytest.approx(np.mean(
      [np.sign(v1[s] - v0[s]) == np.sign(g1[s] - g0[s]) for s in ok]))
  assert row.gap_grows == pytest.approx(np.mean([g1[s] > g0[s] for s in ok]))


def test_load_refuses_what_is_not_a_measures_json(tmp_path):
  with pytest.raises(UsageError, match="not a readable measures.json"):
    measures.load(tmp_path)
  (tmp_path / "measures.json").write_text(json.dumps(dict(settings={}, replicas=[dict(
      replica=0)])))
  with pytest.raises(UsageError, match="replicas with model, learning_rate"):
    measures.load(tmp_path)


def test_select_keeps_the_models_whose_run_is_reported():
  """A study's measures.json lists each model's run: only the reported runs' replicas stay."""
  runs = types.SimpleNamespace(runs=[types.SimpleNamespace(
      summary=dict(config_hash="aaaa"), path="/study/mlp_1x512")])
  reps = [_replica(0, 0.1, dict(m=1.0)), _replica(1, 0.2, dict(m=2.0), model="mlp_3x512")]
  study = [dict(model="mlp_1x512", run="/study/mlp_1x512", config_hash="aaaa"),
           dict(model="mlp_3x512", run="/study/mlp_3x512", config_hash="bbbb")]
  mine, others = measures.select(_result(reps, "cccc", "/study", study), runs)
  assert [r["model"] for r in mine["replicas"]] == ["mlp_1x512"] and others == study[1:]
  assert measures.partial_line("o/measures.json", others) == (
      f"o/measures.json also holds replicas of {provenance.describe(study[1])}, not of the "
      f"runs reported here: those skipped")
  assert measures.select(_result(reps, "cccc", "/study", study[1:]), runs)[0] is None
  assert measures.select(_result(reps, "aaaa"), runs)[0]["replicas"] == reps  # one run


def _run_measures(run, config_hash, recorded=None, runs=None):
  """A measures.json of ``run``'s replicas, recording the run ``recorded`` (default
  ``run``): ``sharp`` follows the gap, ``params`` does not."""
  summary = json.loads((run / "summary.json").read_text())
  reps = []
  for r in summary["replicas"]:
    gap = r["final_train_acc"] - r["final_test_acc"]
    axes = {k: r[k] for k in ("kind", "corruption", "seed", "learning_rate", "weight_decay",
                              "augmentation")}
    reps.append(_replica(r["replica"], gap, dict(sharp=10 * gap + 1, params=1e5), **axes))
  return json.dumps(_result(reps, config_hash, str(recorded or run), runs))


@pytest.mark.slow
def test_report_writes_measures_md_and_its_figures(tmp_path, capsys):
  run = synthetic.write_example_run(tmp_path / "mlp1", seeds=(0, 1))
  summary = json.loads((run / "summary.json").read_text())
  (run / "summary.json").write_text(json.dumps(summary | {"config_hash": "1234abcd"}))
  out = tmp_path / "report"
  out.mkdir()
  (out / "measures.json").write_text(_run_measures(run, "1234abcd"))
  written = {p.name for p in report.write_report([run], out, n_boot=0)}
  assert {"measures.md", "measures_vs_gap.png", "measures_tau.png"} <= written
  for name in ("measures_vs_gap.png", "measures_tau.png"):
    assert matplotlib.image.imread(out / name)[..., :3].std() > 0.05  # something is drawn
  text, md = (out / "report.md").read_text(), (out / "measures.md").read_text()
  assert "## Generalization measures" in text and "[measures.md](measures.md)" in text
  assert "(measures_vs_gap.png)" in text and "(measures_tau.png)" in md
  assert "| sharp | 12 | 1.00 |" in md  # 12 label-corruption replicas, the gap's own order
  assert "Move with the gap in every pair: sharp." in md
  assert "skipped" not in capsys.readouterr().err
  # Another run's measures.json: one line, no section, no measures.md.
  for name in ("measures.md", "measures_vs_gap.png", "measures_tau.png"):
    (out / name).unlink()
  (out / "measures.json").write_text(_run_measures(run, "99999999", "runs/other"))
  written = {p.name for p in report.write_report([run], out, n_boot=0)}
  assert not {"measures.md", "measures_tau.png"} & written and not (out / "measures.md").exists()
  assert "measures.json was computed from runs/other (config hash 99999999)" in (
      out / "report.md").read_text()
  err = [line for line in capsys.readouterr().err.splitlines() if "measures.json" in line]
  assert len(err) == 1 and err[0].endswith("skipped")
  # A study's measures.json with one model reported here: its replicas, and one line.
  study = [dict(model="mlp_1x512", run=str(run), config_hash="1234abcd"),
           dict(model="mlp_3x512", run="runs/mlp3", config_hash="77777777")]
  (out / "measures.json").write_text(_run_measures(run, None, "runs", study))
  written = {p.name for p in report.write_report([run], out, n_boot=0)}
  assert "measures.md" in written and "| sharp | 12 | 1.00 |" in (out / "measures.md").read_text()
  err = [line for line in capsys.readouterr().err.splitlines() if "measures.json" in line]
  assert err == [f"[zhang report] {out}/measures.json also holds replicas of runs/mlp3 "
                 f"(config hash 77777777), not of the runs reported here: those skipped"]
