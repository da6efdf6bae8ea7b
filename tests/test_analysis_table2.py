"""Tests for Table 2 (zhang.analysis.table2) on run directories whose numbers are known."""

import json

import numpy as np
import pytest

from zhang import analysis
from zhang.analysis import paper, regularization, report, table2
from zhang.rundir import format as format_lib

WD, DROP = 4e-5, 0.2


def _rep(p, seed, train, test, train5, test5, wd=0.0, dropout=0.0, aug="none"):
  return dict(corruption=p, seed=seed, weight_decay=wd, dropout=dropout, augmentation=aug,
              train_acc=train, test_acc=test, train_top5=train5, test_top5=test5)


def _write_run(path, reps, dataset="imagenet2012", model="inception_v3", data_dir=None,
               num_classes=1000, top5=True, dropout_field=True, status="complete"):
  """A run directory as `zhang train` writes one: an evaluation at step 0 (chance) and one
  at step 10 with each replica's given accuracies."""
  path.mkdir(parents=True)
  config = dict(model=model, dataset=dataset, batch_size=8, learning_rate=0.1, momentum=0.9,
                lr_decay=0.95, lr_decay_every=8, weight_decay=0.0, augmentation="none",
                max_steps=10, eval_every=10, fit_threshold=1.0, data_dir=data_dir,
                grid=[dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0, 1])])
  (path / "config.json").write_text(json.dumps(format_lib.stamped(config)))
  rows, summary = [], []
  for i, r in enumerate(reps):
    hp = dict(learning_rate=0.1, weight_decay=r["weight_decay"],
              augmentation=r["augmentation"], **({"dropout": r["dropout"]}
                                                 if dropout_field else {}))
    for step, scale in ((0, None), (10, 1.0)):
      acc = {m: (r[m] if scale else 1 / num_classes) for m in table2.METRICS
             if top5 or not m.endswith("top5")}
      rows.append(dict(step=step, epoch=step / 10, replica=i, kind="labels",
                       corruption=r["corruption"], seed=r["seed"], **hp, train_loss=1.0,
                       test_loss=1.0, **acc))
    summary.append(dict(replica=i, kind="labels", corruption=r["corruption"],
                        seed=r["seed"], **hp, fit_step=None,
                        **{f"final_{m}": v for m, v in acc.items()}))
  (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  (path / "summary.json").write_text(json.dumps(format_lib.stamped(dict(
      status=status, model=model, dataset=dataset, num_params=23_000_000, n_train=80,
      n_test=64, num_classes=num_classes, steps_run=10, replicas=summary))))
  return path


# The configs/table2.py grid, two seeds each: known accuracies per (labels, regularized).
GRID = [
    _rep(0.0, 0, 0.97, 0.50, 0.995, 0.74), _rep(0.0, 1, 0.99, 0.52, 1.0, 0.76),
    _rep(0.0, 0, 0.90, 0.64, 0.98, 0.85, WD, DROP), _rep(0.0, 1, 0.92, 0.66, 0.99, 0.87, WD, DROP),
    _rep(1.0, 0, 0.94, 0.001, 0.99, 0.004), _rep(1.0, 1, 0.96, 0.002, 0.98, 0.006),
    _rep(1.0, 0, 0.80, 0.0, 0.90, 0.005, WD, DROP), _rep(1.0, 1, 0.84, 0.001, 0.94, 0.005,
                                                         WD, DROP),
]


def _expected(p, regularized):
  """Mean, min and max over seeds of each metric, computed straight from GRID."""
  reps = [r for r in GRID if r["corruption"] == p and (r["weight_decay"] > 0) == regularized]
  return {m: (np.mean([r[m] for r in reps]), min(r[m] for r in reps),
              max(r[m] for r in reps)) for m in table2.METRICS}


def test_table_rows_are_the_seed_means_and_ranges(tmp_path):
  runs = analysis.load_runs(_write_run(tmp_path / "run", GRID))
  assert table2.applies(runs)
  t = table2.table(runs)
  assert len(t) == 4 and (t.n == 2).all() and (t.seeds == "0, 1").all()
  # True labels first, then random; without regularizers before with.
  assert list(zip(t.corruption, t.weight_decay, t.dropout)) == [
      (0.0, 0.0, 0.0), (0.0, WD, DROP), (1.0, 0.0, 0.0), (1.0, WD, DROP)]
  for _, row in t.iterrows():
    want = _expected(row.corruption, row.weight_decay > 0)
    for m, (mean, lo, hi) in want.items():
      assert (row[m], row[f"{m}_lo"], row[f"{m}_hi"]) == pytest.approx((mean, lo, hi)), m
  # Regularized minus unregularized top-1 test accuracy, same labels.
  assert t.test_vs_none.tolist() == pytest.approx(
      [np.nan, 0.65 - 0.51, np.nan, 0.0005 - 0.0015], nan_ok=True)


def test_paper_numbers_sit_beside_their_rows(tmp_path):
  t = table2.table(analysis.load_runs(_write_run(tmp_path / "run", GRID)))
  pn = {(r["labels"], r["augmentation"]): r for r in paper.paper_numbers()["table2"]["rows"]}
  assert pn["true", False]["test_acc"] == pytest.approx(0.5980)
  assert pn["true", True]["test_acc"] == pytest.approx(0.7295)
  assert pn["random", False]["train_acc"] == pytest.approx(0.9520)
  assert t.paper_test_acc.tolist()[0] == pytest.approx(0.5980)
  assert t.paper_train_acc.tolist()[2] == pytest.approx(0.9520)
  # The regularized rows and the metrics the paper does not give: none.
  assert t.paper_test_acc.isna().tolist() == [False, True, True, True]
  assert t.paper_train_top5.isna().all() and t.paper_test_top5.isna().all()
  # Another model on ImageNet is not the paper's Inception V3.
  other = table2.table(analysis.load_runs(_write_run(tmp_path / "r2", GRID, model="resnet")))
  assert other.paper_test_acc.isna().all()


def test_report_writes_table2_with_the_papers_numbers_and_a_reading(tmp_path):
  out = tmp_path / "report"
  written = report.write_report([_write_run(tmp_path / "run", GRID)], out, n_boot=0)
  assert out / "table2.md" in written
  text, md = (out / "report.md").read_text(), (out / "table2.md").read_text()
  for doc in (text, md):
    assert "## Table 2: ImageNet" not in md and "Table 2" in doc
    # The first row's cells: mean [min, max] over the two seeds, in percent.
    assert ("| true labels | no | no | no | 2 | 98.00 [97.00, 99.00] | 51.00 [50.00, 52.00] | "
            "99.75 [99.50, 100.00] | 75.00 [74.00, 76.00] | – | – | 59.80 |") in doc
    assert ("| random labels | no | no | no | 2 | 95.00 [94.00, 96.00] | 0.15 [0.10, 0.20] | "
            "98.50 [98.00, 99.00] | 0.50 [0.40, 0.60] | – | 95.20 | – |") in doc
    assert ("| true labels | no | 0.2 | 4e-05 | 2 | 91.00 [90.00, 92.00] | 65.00 [64.00, 66.00] | "
            "98.50 [98.00, 99.00] | 86.00 [85.00, 87.00] | +14.00 | – | – |") in doc
    assert "### What agrees and what does not" in doc
    assert ("true labels, no regularizer: top-1 test 51.00% against the paper's 59.80%: does "
            "not agree (below by 8.80 points).") in doc
    assert ("random labels, no regularizer: top-1 train 95.00% against the paper's 95.20%: "
            "agrees.") in doc
    assert ("true labels, augmentation only: the paper's top-1 test 72.95% has no row here"
            in doc)
    assert "fake data" not in doc
  assert "[table2.md](table2.md)" in text


def test_the_fake_data_quick_run_is_said_to_be_no_result(tmp_path):
  out = tmp_path / "report"
  run = _write_run(tmp_path / "t2q", GRID, data_dir="tfds-mock")
  report.write_report([run], out, n_boot=0)
  for name in ("report.md", "table2.md"):
    doc = (out / name).read_text()
    assert "**Not a result: fake data.** t2q (10 steps) trained on tfds's fake ImageNet" in doc
    assert "agrees" not in doc.split("### What agrees and what does not")[1]
    assert "| true labels | no | no | no | 2 | 98.00 [97.00, 99.00] |" in doc  # still shown


def test_a_run_not_on_imagenet_gets_no_table2(tmp_path):
  run = _write_run(tmp_path / "run", GRID[:2] + GRID[4:6], dataset="cifar10",
                   model="inception_small", num_classes=10, top5=False)
  runs = analysis.load_runs(run)
  assert not table2.applies(runs) and table2.report_lines(runs) == []
  written = report.write_report([run], tmp_path / "report", n_boot=0)
  assert "table2.md" not in {p.name for p in written}
  assert not (tmp_path / "report" / "table2.md").exists()
  assert "Table 2" not in (tmp_path / "report" / "report.md").read_text()


def test_the_papers_grid_matches_augmentation_only_and_pairs_its_regularizers(tmp_path):
  """The grid of configs/table2.py with its augmentation rows: augmentation alone is the
  paper's 72.95%, and table1.md pairs each regularizer with the paper's Table 2."""
  reps = [_rep(0.0, 0, 0.93, 0.78, 0.99, 0.94, WD, DROP, "inception"),
          _rep(0.0, 0, 0.92, 0.73, 0.99, 0.90, aug="inception"),
          _rep(0.0, 0, 0.91, 0.67, 1.0, 0.87, WD), _rep(0.0, 0, 0.99, 0.60, 1.0, 0.80),
          _rep(1.0, 0, 0.91, 0.001, 0.98, 0.007, WD, DROP), _rep(1.0, 0, 0.95, 0.001, 0.99, 0.006)]
  out = tmp_path / "report"
  written = {p.name for p in report.write_report([_write_run(tmp_path / "run", reps)], out,
                                                 n_boot=0)}
  assert {"table1.md", "table2.md"} <= written
  t = table2.table(analysis.load_runs(tmp_path / "run"))
  aug = t[(t.augmentation == "inception") & (t.weight_decay == 0)].iloc[0]
  assert aug.paper_test_acc == pytest.approx(0.7295)
  assert aug.test_vs_none == pytest.approx(0.73 - 0.60)
  doc = (out / "table2.md").read_text()
  assert ("true labels, augmentation only: top-1 test 73.00% against the paper's 72.95%: "
          "agrees.") in doc
  assert "| true labels | inception | no | no | 1 | 92.00 | 73.00 |" in doc
  t1 = (out / "table1.md").read_text()
  assert "the same pair in the paper's Table 2 (ImageNet, top-1)" in t1
  assert ("| inception_v3 | augmentation inception | no weight decay, no dropout | true labels "
          "| 1 | 73.00 | 60.00 | +13.00 [+13.00, +13.00] | 72.95 | 59.80 | +13.15 |") in t1


def test_one_seed_shows_no_range_and_no_top5_shows_a_dash(tmp_path):
  reps = [GRID[0], GRID[4]]
  runs = analysis.load_runs(_write_run(tmp_path / "run", reps, top5=False))
  lines = table2.table_lines(table2.table(runs))
  assert lines[2].startswith("| true labels | no | no | no | 1 | 97.00 | 50.00 | – | – |")


def test_dropout_is_a_regularizer_axis_with_the_papers_imagenet_pairs(tmp_path):
  reps = [_rep(0.0, s, 0.9, 0.60 + 0.01 * s, 1, 1) for s in (0, 1)]
  reps += [_rep(0.0, s, 0.9, 0.63 + 0.02 * s, 1, 1, dropout=DROP) for s in (0, 1)]
  reps += [_rep(0.0, s, 0.9, 0.70, 1, 1, aug="crop+flip") for s in (0, 1)]
  eff = regularization.effects(analysis.load_runs(_write_run(tmp_path / "run", reps)))
  drop = eff[eff.regularizer == "dropout 0.2"].iloc[0]
  assert drop.n == 2 and drop["with"] == "no augmentation, no weight decay"
  assert drop["diff"] == pytest.approx(np.mean([0.03, 0.04]))
  assert (drop.diff_min, drop.diff_max) == pytest.approx((0.03, 0.04))
  assert np.isnan(drop.paper_diff)  # the paper's Table 2 numbers here have no dropout pair
  aug = eff[eff.regularizer == "augmentation crop+flip"].iloc[0]
  assert aug["with"] == "no weight decay, no dropout"
  assert (aug.paper_on, aug.paper_off) == pytest.approx((0.7295, 0.5980))


def test_runs_without_a_dropout_field_keep_their_regularizer_pairs(tmp_path):
  reps = [_rep(0.0, s, 1.0, 0.50 + 0.01 * s, 1, 1) for s in (0, 1)]
  reps += [_rep(0.0, s, 1.0, 0.52, 1, 1, wd=5e-4) for s in (0, 1)]
  run = _write_run(tmp_path / "run", reps, dataset="cifar10", model="mlp_1x512",
                   num_classes=10, top5=False, dropout_field=False)
  runs = analysis.load_runs(run)
  assert (runs.replicas.dropout == 0.0).all()
  eff = regularization.effects(runs)
  assert eff.regularizer.tolist() == ["weight decay 0.0005"]
  e = eff.iloc[0]
  assert e["with"] == "no augmentation" and e["diff"] == pytest.approx(0.015)
  assert (e.paper_on, e.paper_off) == pytest.approx((0.5039, 0.5051))
