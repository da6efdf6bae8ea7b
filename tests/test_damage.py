"""A full disk outside the checkpoint save: one line, nothing partial left."""

import os
import pathlib

import pytest

from zhang.errors import RunError
from zhang.rundir import metrics

SMALL = ["--config", "configs/digits.py", "--set", "n_train=256", "--set", "n_test=128",
         "--set", "batch_size=32", "--set", "max_steps=40", "--set", "eval_every=20",
         "--set", "checkpoint_every=20", "--no_progress"]


def _full_disk_at(path: pathlib.Path) -> None:
  """The next write through ``path`` hits a full disk: /dev/full answers every write with
  ENOSPC."""
  path.symlink_to("/dev/full")


def test_an_atomic_write_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
  target = tmp_path / "summary.json"
  target.write_text("old")
  _full_disk_at(tmp_path / "summary.json.tmp")
  with pytest.raises(RunError, match=r"could not write .*summary.json \(no space left on "
                     r"device, [\d.]+ MiB free\): free space"):
    metrics.write_json(target, {"a": 1})
  assert target.read_text() == "old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_appending_metrics_on_a_full_disk_is_a_run_error(tmp_path):
  writer = metrics.Writer(tmp_path)
  writer._metrics.close()
  writer._metrics = open("/dev/full", "a")  # noqa: SIM115 - closed by the writer
  with pytest.raises(RunError, match="could not write .*metrics.jsonl"):
    writer.rows([{"step": 0, "replica": 0, "train_acc": 0.5}])
  writer.close()  # the unwritten rows do not raise again


@pytest.mark.parametrize("name", ["summary.json", "metrics.jsonl"])
def test_train_on_a_full_disk_says_one_line_and_exits_1(tmp_path, capsys, name):
  from zhang.cli import main
  workdir = tmp_path / "run"
  workdir.mkdir()
  # metrics.jsonl is first written empty (nothing to write: no error), through its
  # temporary file, renamed into place; the rows appended then hit the full disk.
  _full_disk_at(workdir / (name + ".tmp"))
  assert main(["train", *SMALL, "--workdir", str(workdir)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("zhang train: error: could not write"), err
  assert "no space left on device" in err[0] and name in err[0]
  assert not [p for p in workdir.iterdir() if p.name.endswith(".tmp")]


def test_free_space_is_checked_before_a_long_write(tmp_path, monkeypatch):
  free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
  metrics.check_free_space(tmp_path / "out", 1 << 20, "writing x")  # room: nothing raised
  with pytest.raises(RunError, match=r"writing x takes about .* MiB free: free space"):
    metrics.check_free_space(tmp_path / "out", free * 2, "writing x")


@pytest.mark.parametrize("name", ["report.md", "fig1a.png"])
def test_report_on_a_full_disk_says_one_line_and_exits_1(tmp_path, capsys, name):
  from zhang.analysis import synthetic
  from zhang.cli import main
  run = synthetic.write_example_run(tmp_path / "run")
  out = tmp_path / "report"
  out.mkdir()
  _full_disk_at(out / f"{name}.tmp")
  assert main(["report", str(run), "--out", str(out), "--n_boot", "5"]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  assert f"could not write {out / name} (no space left on device" in err
  assert not (out / name).exists() and not (out / f"{name}.tmp").exists()
