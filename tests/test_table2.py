"""configs/table2.py's quick run: ImageNet's whole streaming path on tfds's fake ImageNet."""

import json
import shutil

import pytest

from zhang import analysis, cli
from zhang.analysis import table2


@pytest.mark.slow
def test_quick_table2_streams_mock_imagenet_trains_resumes_and_reports(tmp_path, capsys):
  workdir = tmp_path / "run"
  args = ["train", "--config", "configs/table2.py:quick", "--workdir", str(workdir),
          "--no_progress"]
  assert cli.main(args) == 0
  config = json.loads((workdir / "config.json").read_text())
  assert (config["dataset"], config["stream"], config["batch_order"]) == (
      "imagenet2012", True, "shared")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {r["step"] for r in rows} == {0, 1, 2} and len(rows) == 3 * 6
  for r in rows:
    assert 0 <= r["test_acc"] <= r["test_top5"] <= 1 and 0 <= r["train_top5"] <= 1
  assert {(r["corruption"], r["augmentation"], r["dropout"], r["weight_decay"])
          for r in rows} == {(0.0, "inception", 0.2, 4e-5), (0.0, "inception", 0.0, 0.0),
                             (0.0, "none", 0.0, 4e-5), (0.0, "none", 0.0, 0.0),
                             (1.0, "none", 0.2, 4e-5), (1.0, "none", 0.0, 0.0)}
  # The augmented replicas trained on other images than their twins without augmentation.
  last = {(r["augmentation"], r["dropout"]): r for r in rows if r["step"] == 2
          and r["corruption"] == 0.0 and r["weight_decay"] == 0.0}
  assert last[("inception", 0.0)]["train_loss"] != last[("none", 0.0)]["train_loss"]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["n_train"] == 64 and summary["status"] == "complete"
  assert [r["label_noise"] for r in summary["replicas"]][-1] > 0.9  # random labels
  # Killed after the checkpoint of step 1: resumed, the stream and the rest as uninterrupted.
  reference = (workdir / "metrics.jsonl").read_text()
  shutil.rmtree(workdir / "checkpoints" / "2")
  assert cli.main(args) == 0
  assert (workdir / "metrics.jsonl").read_text() == reference
  out = tmp_path / "report"
  assert cli.main(["report", str(workdir), "--out", str(out), "--n_boot", "0"]) == 0
  runs = analysis.load_runs(workdir)
  t = table2.table(runs)  # one seed: a row per replica
  assert len(t) == len(runs.replicas) == 6 and t[list(table2.METRICS)].notna().all().all()
  doc = (out / "table2.md").read_text()
  assert "**Not a result: fake data.**" in doc and "| 59.80 |" in doc
  assert (out / "report.md").exists()


def test_the_host_augmentation_on_a_dataset_held_on_the_device_gets_one_line(tmp_path, capsys):
  workdir = tmp_path / "run"
  grid = "[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], augmentations=['inception'])]"
  assert cli.main(["train", "--config", "configs/digits.py", "--workdir", str(workdir),
                   f"--config.grid={grid}"]) == 2
  err = capsys.readouterr().err.strip()
  assert "augmentation 'inception' is made on the host for a dataset streamed from it" in err
  assert len(err.splitlines()) == 1 and not workdir.exists()


@pytest.mark.slow
def test_a_small_dataset_takes_the_same_streaming_path(tmp_path):
  """``configs/table2.py:dataset=...,model=...,quick`` on a dataset held in memory (digits):
  streamed, shared order, the paper's rows with the device's crop for augmentation and no
  dropout for a model without it."""
  workdir = tmp_path / "run"
  assert cli.main(["train", "--config", "configs/table2.py:dataset=digits,model=mlp_1x512,"
                   "quick", "--workdir", str(workdir), "--no_progress"]) == 0
  config = json.loads((workdir / "config.json").read_text())
  assert (config["stream"], config["batch_order"]) == (True, "shared")
  summary = json.loads((workdir / "summary.json").read_text())
  assert {(r["corruption"], r["augmentation"], r["dropout"], r["weight_decay"])
          for r in summary["replicas"]} == {
      (0.0, "crop", 0.0, 4e-5), (0.0, "crop", 0.0, 0.0), (0.0, "none", 0.0, 4e-5),
      (0.0, "none", 0.0, 0.0), (1.0, "none", 0.0, 4e-5), (1.0, "none", 0.0, 0.0)}
  assert summary["steps_run"] == 200
