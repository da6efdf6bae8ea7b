"""zhang.probes.run: a finished run rebuilt as it trained, against the run's own records."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import step, train
from zhang.probes import run as run_lib
from zhang.rundir import checkpoint

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """MLP on 256 digits, 60 steps: labels at corruption 0, 0.5 and 1, shuffled and random
  pixels and gaussian inputs; evaluated and checkpointed every 20 steps (about 15 s)."""
  c = config_lib.base_config()
  c.model, c.dataset = "mlp_1x512", "digits"
  c.n_train, c.n_test = 256, 128
  c.batch_size, c.learning_rate, c.max_steps = 32, 0.05, 60
  c.eval_every, c.checkpoint_every, c.eval_batch_size, c.lr_decay_every = 20, 20, 100, 25
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 0.5, 1.0], seeds=[0]),
            dict(kinds=["shuffled_pixels", "random_pixels", "gaussian"], corruptions=[0.0],
                 seeds=[1])]
  workdir = tmp_path_factory.mktemp("probes_run") / "run"
  summary = train.run(c, workdir, progress=False)
  assert summary["status"] == "complete" and summary["steps_run"] == 60
  return workdir


def _recorded(workdir) -> dict:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {(r["step"], r["replica"]): r for r in rows}


@pytest.mark.slow
def test_the_rebuilt_run_reproduces_its_recorded_evaluations(run_dir):
  """Every replica's train and test loss and accuracy at initialization and at the end, as
  training wrote them to metrics.jsonl."""
  run = run_lib.open(run_dir)
  assert run.steps == [20, 40, 60]
  assert [(r.kind, r.corruption) for r in run.replicas] == [
      ("labels", 0.0), ("labels", 0.5), ("labels", 1.0), ("shuffled_pixels", 0.0),
      ("random_pixels", 0.0), ("gaussian", 0.0)]
  recorded = _recorded(run_dir)
  for at in (0, 60):
    rows = run.evaluate(at)
    assert [(r["step"], r["replica"]) for r in rows] == [(at, i) for i in range(6)]
    for row in rows:
      want = recorded[(at, row["replica"])]
      for key in METRICS:
        assert row[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (at, key, row)
    assert run.recorded(at) == {i: recorded[(at, i)] for i in range(6)}
  # Training moved them: the final numbers are not the initial ones.
  assert all(recorded[(60, i)]["train_loss"] < recorded[(0, i)]["train_loss"] for i in range(6))
  assert recorded[(60, 0)]["train_acc"] > 0.9 and recorded[(0, 0)]["train_acc"] < 0.3


def test_one_replica_by_hand_gives_the_recorded_train_loss(run_dir):
  """The per-replica pieces (parameters, inputs, labels, logits) make the run's training
  loss and accuracy with a cross-entropy written out in numpy."""
  run = run_lib.open(run_dir)
  state = run.state(40)
  recorded = _recorded(run_dir)
  for r in run.replicas:
    params, other = run.variables(state, r)
    assert other == {}
    logits = run.logits(params, other, run.inputs(r, run_lib.TRAIN))
    labels = run.labels[r.index]
    top = logits.max(1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    want = recorded[(40, r.index)]
    assert -logp[np.arange(256), labels].mean() == pytest.approx(want["train_loss"], rel=1e-4)
    assert np.mean(logits.argmax(1) == labels) == pytest.approx(want["train_acc"], abs=1e-6)
  # The corrupted replicas' labels, as summary.json records their noise.
  summary = json.loads((run_dir / "summary.json").read_text())
  noise = [r["label_noise"] for r in summary["replicas"]]
  np.testing.assert_allclose(run.label_noise, noise, atol=1e-6)
  assert noise[0] == 0 and 0.3 < noise[1] < 0.6 and noise[2] > 0.8


@pytest.mark.slow
def test_the_initialization_labels_and_inputs_are_the_trainers(run_dir):
  """``state(0)``, ``labels`` and ``inputs`` are ``train.build``'s for the same config."""
  run = run_lib.open(run_dir)
  _, d, reps, states, _ = train.build(run.config, run.replicas, run.dataset)
  init = run.state(0)
  for a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(states.params)):
    np.testing.assert_array_equal(np.asarray(a)[:6], np.asarray(b)[:6])
  np.testing.assert_array_equal(run.labels, np.asarray(reps.labels)[:6])
  for r in run.replicas:
    want = step.grid_inputs(run.settings, reps, d, d.train_images,
                            jnp.arange(d.train_images.shape[0]), 0)[r.index]
    np.testing.assert_allclose(np.asarray(run.inputs(r, run_lib.TRAIN)), np.asarray(want),
                               rtol=1e-6, atol=1e-6)
  pixels = [np.asarray(run.inputs(r, run_lib.TEST)) for r in run.replicas[2:]]
  assert not any(np.allclose(pixels[i], pixels[j]) for i in range(4) for j in range(i))


def test_provenance_is_the_runs(run_dir):
  run = run_lib.open(run_dir)
  summary = json.loads((run_dir / "summary.json").read_text())
  assert run.path == str(run_dir) and run.config_hash == summary["config_hash"]
  saved = checkpoint.load(run_dir, 60)
  assert saved["meta"]["config_hash"] == run.config_hash
  assert run.config_hash == checkpoint.config_hash(config_lib.identity(run.config))


def _copy(run_dir, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy)
  return copy


def _edit(path, **changes):
  fields = json.loads(path.read_text())
  fields.update(changes)
  path.write_text(json.dumps(fields))


def test_bad_input_is_one_line(run_dir, tmp_path):
  def error(*args, **kwargs) -> str:
    with pytest.raises(UsageError) as e:
      run_lib.open(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)

  assert "is not a directory" in error(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  assert "config.json is missing" in error(tmp_path / "empty")
  for name in ("config.json", "summary.json"):
    shutil.copy(run_dir / name, tmp_path / "empty" / name)
  assert "has no checkpoints/ folder" in error(tmp_path / "empty")
  (tmp_path / "empty" / "checkpoints").mkdir()
  assert "holds no complete checkpoint" in error(tmp_path / "empty")
  study = tmp_path / "study"
  study.mkdir()
  shutil.copy(run_dir / "config.json", study / "config.json")
  _edit(study / "config.json", models=["mlp_1x512", "mlp_3x512"])
  assert f"holds a study of several models: pass one model's run, e.g. {study}/mlp_1x512" in (
      error(study))
  copy = _copy(run_dir, tmp_path)
  _edit(copy / "config.json", learning_rate=0.01)
  assert "the files come from different runs" in error(copy)
  with pytest.raises(UsageError, match="no checkpoint of step 50 in this run: saved steps are "
                                       "20, 40, 60"):
    run_lib.open(run_dir).state(50)


def test_a_checkpoint_of_another_config_is_refused(run_dir, tmp_path):
  """config.json and summary.json agree, the checkpoints were written by another config."""
  copy = _copy(run_dir, tmp_path)
  _edit(copy / "config.json", learning_rate=0.01)
  config = run_lib.open(run_dir).config
  config.learning_rate = 0.01
  _edit(copy / "summary.json", config_hash=checkpoint.config_hash(config_lib.identity(config)))
  run = run_lib.open(copy)
  assert run.evaluate(0)[0]["train_loss"] == pytest.approx(_recorded(run_dir)[(0, 0)]
                                                           ["train_loss"], rel=1e-5)
  with pytest.raises(UsageError, match="checkpoint of step 60 .* was written by another config"):
    run.state(60)


def test_a_config_not_on_disk_rebuilds_its_initialization(run_dir):
  run = run_lib.open(run_dir)
  fresh = run_lib.from_config(run.config)
  assert fresh.path is None and fresh.steps == [] and fresh.config_hash == run.config_hash
  assert fresh.recorded(0) == {}
  for a, b in zip(jax.tree.leaves(fresh.state(0)), jax.tree.leaves(run.state(0))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(UsageError, match="saved steps are none"):
    fresh.state(20)
