"""Studies: several models in one workdir, each its own run, resumed as one."""

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest

from zhang import analysis, cli
from zhang.analysis import regularization, report
from zhang.experiment import config as config_lib
from zhang.experiment import loop, train

MODELS = ["mlp_1x512", "mlp_3x512"]


@pytest.fixture
def study(tiny_config):
  c = tiny_config
  c.models = list(MODELS)
  c.max_steps, c.eval_every, c.checkpoint_every = 40, 20, 20
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0], weight_decays=[0.0, 1e-3]),
            dict(models=["mlp_1x512"], kinds=["labels"], corruptions=[0.0], seeds=[0],
                 augmentations=["crop"])]
  return c


def _rows(run_dir):
  rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  return {(r["step"], r["replica"]): r for r in rows}


def _files(folder):
  return {p: p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file() and "checkpoints" not in p.parts
          and p.name not in ("library.log", "lock")}


@pytest.mark.slow
def test_study_is_its_models_runs_and_resumes_to_the_same_results(study, tmp_path,
                                                                 monkeypatch):
  clean = train.run(study, tmp_path / "clean", progress=False)
  assert clean["status"] == "complete" and clean["models"] == MODELS
  # Each model's sub-directory is the run of that model alone (grid entries of other models
  # left out), row for row.
  alone = config_lib.for_model(study, "mlp_1x512")
  assert len(alone.grid) == 2 and "models" not in alone.grid[1]
  train.run(alone, tmp_path / "alone", progress=False)
  assert _rows(tmp_path / "alone") == _rows(tmp_path / "clean" / "mlp_1x512")
  assert json.loads((tmp_path / "clean" / "mlp_3x512" / "config.json").read_text())[
      "grid"] == [study.grid[0]]
  # The study's summary: every model's replicas, each naming its model (5 + 4 replicas).
  models = [r["model"] for r in clean["replicas"]]
  assert models == ["mlp_1x512"] * 5 + ["mlp_3x512"] * 4
  assert all(r["model"] == m for m in MODELS
             for r in _rows(tmp_path / "clean" / m).values())
  # The study's own files are of the run-file format too.
  for name in ("config.json", "summary.json"):
    assert json.loads((tmp_path / "clean" / name).read_text())["format"] == 1

  _preempt_in_the_second_model_and_resume(study, tmp_path, monkeypatch)
  _check_the_analysis_of(tmp_path / "clean", clean, tmp_path)


def _preempt_in_the_second_model_and_resume(study, tmp_path, monkeypatch):
  """Preempted while the second model trains, then resumed: the same rows as the clean
  study's (in ``tmp_path / "clean"``); rerun once complete, nothing changes."""
  real = train.metrics_lib.Timing.time_call
  runs, sent = [], []  # each model's run times its calls with a Timing of its own

  def time_call(self, what, seconds, steps=0):
    real(self, what, seconds, steps)
    if self not in runs:
      runs.append(self)
    if (what == "train" and runs.index(self) == 1  # the second model's run: mlp_3x512
        and self.totals["train_steps"] >= 10 and not sent):
      sent.append(True)
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train.metrics_lib.Timing, "time_call", time_call)
  monkeypatch.setattr(loop.CallSizer, "steps", lambda self, remaining: min(remaining, 5))
  stopped = train.run(study, tmp_path / "run", progress=False)
  assert stopped["status"] == "preempted"
  assert stopped["runs"]["mlp_1x512"]["status"] == "complete"
  assert stopped["runs"]["mlp_3x512"]["status"] == "preempted"
  on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert on_disk["status"] == "preempted"
  monkeypatch.undo()
  resumed = train.run(study, tmp_path / "run", progress=False)
  assert resumed["status"] == "complete" and not resumed.get("already_complete")
  for m in MODELS:
    a, b = _rows(tmp_path / "run" / m), _rows(tmp_path / "clean" / m)
    assert a.keys() == b.keys()
    for key in a:
      for field in ("train_loss", "train_acc", "test_acc", "test_loss", "batch_loss"):
        assert a[key].get(field) == b[key].get(field), (m, key, field)
  # A complete study: nothing to do, its files unchanged byte for byte.
  before = _files(tmp_path / "run")
  again = train.run(study, tmp_path / "run", progress=False)
  assert again.get("already_complete") and _files(tmp_path / "run") == before


def _check_the_analysis_of(study_dir, clean, tmp_path):
  """The analysis sees the study as one table, and the regularizer table pairs twins."""
  runs = analysis.load_runs(study_dir)
  assert sorted(runs.replicas.model.unique()) == MODELS and len(runs.replicas) == 9
  eff = regularization.effects(runs)
  summary = pd.DataFrame(clean["replicas"])
  for _, e in eff.iterrows():
    s = summary[(summary.model == e.model) & (summary.corruption == e.corruption)]
    if e.regularizer.startswith("weight decay"):
      on, off = s[s.weight_decay > 0], s[(s.weight_decay == 0) & (s.augmentation == "none")]
    else:
      on, off = s[s.augmentation == "crop"], s[(s.augmentation == "none")
                                              & (s.weight_decay == 0)]
    assert e.n == 1 and e.test_on == pytest.approx(on.final_test_acc.iloc[0])
    assert e["diff"] == pytest.approx(on.final_test_acc.iloc[0] - off.final_test_acc.iloc[0])
  assert set(eff.regularizer) == {"weight decay 0.001", "augmentation crop"}
  assert len(eff[eff.regularizer == "weight decay 0.001"]) == 4  # 2 models x 2 labels
  written = report.write_report([study_dir], tmp_path / "report", n_boot=0)
  names = {p.name for p in written}
  assert {"table1.md", "fig2a.png", "early_stopping.png", "report.md"} <= names
  text = (tmp_path / "report" / "table1.md").read_text()
  assert "augmentation crop" in text and "## Early stopping" in text
  es = regularization.early_stopping(runs)
  assert len(es) == 9
  assert (es.best_test_acc >= es.final_test_acc).all() and (es.gain_over_final >= 0).all()
  best = runs.metrics.groupby(["run", "replica"]).test_acc.max()
  np.testing.assert_allclose(es.set_index(["run", "replica"]).best_test_acc.sort_index(),
                             best.sort_index())


def _main(*args, capsys):
  code = cli.main(list(args))
  return code, capsys.readouterr().err


def test_a_study_with_an_unknown_model_fails_in_one_line_creating_nothing(tmp_path, capsys):
  workdir = tmp_path / "study"
  code, err = _main("train", "--config",
                    "configs/table1.py:dataset=digits,quick,models=mlp_1x512+vgg_9",
                    "--workdir", str(workdir), capsys=capsys)
  assert code == 2 and len(err.strip().splitlines()) == 1
  assert "vgg_9" in err and "mlp_1x512" in err  # the unknown name and the known ones
  assert not workdir.exists()


def test_grid_entries_must_name_the_studys_models(study):
  study.grid[1]["models"] = ["alexnet_small"]
  with pytest.raises(config_lib.UsageError, match="alexnet_small.*study's models"):
    config_lib.validate(study)
  study.grid = [dict(models=["mlp_1x512"], kinds=["labels"], corruptions=[0.0], seeds=[0])]
  with pytest.raises(config_lib.UsageError, match="no grid entry applies to model mlp_3x512"):
    config_lib.validate(study)
  study.models = ["mlp_1x512", "mlp_1x512"]
  with pytest.raises(config_lib.UsageError, match="more than once"):
    config_lib.validate(study)


def test_a_study_whose_sub_directory_holds_another_run_is_refused_untouched(
    study, tiny_config, tmp_path):
  other = config_lib.for_model(study, "mlp_3x512")
  other.max_steps, other.eval_every = 20, 20
  train.run(other, tmp_path / "study" / "mlp_3x512", progress=False)
  before = _files(tmp_path / "study")
  with pytest.raises(config_lib.UsageError,
                     match=r"study/mlp_3x512 holds a run with a different config .*max_steps"):
    train.run(study, tmp_path / "study", progress=False)
  assert _files(tmp_path / "study") == before
  assert not (tmp_path / "study" / "config.json").exists()
  assert not (tmp_path / "study" / "mlp_1x512").exists()
