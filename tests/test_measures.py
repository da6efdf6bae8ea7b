"""`zhang measures` on a real (tiny) run: each replica's row against its checkpoint and its
recorded evaluation by independent computations, and bad input as one line."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang import cli
from zhang.experiment import train
from zhang.probes import run as run_lib
from zhang.probes.measures import compute, probe
from zhang.rundir import checkpoint as checkpoint_lib

pytestmark = pytest.mark.slow  # a trained run (about 15 s on 2 cores) for the module


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fitting_config):
  path = tmp_path_factory.mktemp("measures") / "run"
  train.run(fitting_config(), str(path))
  return path


@pytest.fixture(scope="module")
def measured(run_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("measures_out")
  result = probe.measure(str(run_dir), str(out), None, "norms,margin,run",
                         log=lambda msg: None)
  return out, result


def _files(path) -> dict:
  return {os.path.relpath(os.path.join(d, f), path):
          hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
          for d, _, names in os.walk(path) for f in names if f != "lock"}


def test_each_row_is_its_replica_as_it_fitted(run_dir, measured):
  """Rows follow the grid; each replica is measured at its own fit step with the
  evaluation the run recorded there (its parameters stopped changing at the fit)."""
  _, result = measured
  summary = json.loads((run_dir / "summary.json").read_text())
  recorded = {}
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    recorded[(row["replica"], row["step"])] = row
  assert [e["replica"] for e in result["replicas"]] == [0, 1, 2, 3]
  for entry, want in zip(result["replicas"], summary["replicas"]):
    assert (entry["corruption"], entry["learning_rate"]) == (want["corruption"],
                                                             want["learning_rate"])
    assert entry["step"] == want["fit_step"] and entry["measures"]["fit_step"] == entry["step"]
    row = recorded[(entry["replica"], entry["step"])]
    for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
      assert entry[k] == pytest.approx(row[k], rel=1e-6, abs=1e-7)
    assert entry["gap"] == pytest.approx(row["train_acc"] - row["test_acc"], abs=1e-7)
  assert len({e["step"] for e in result["replicas"]}) > 1  # fits at different steps


def test_norms_and_margins_against_numpy(run_dir, measured):
  """The norms from the checkpoint's arrays and the initialization's, the margin from a
  float64 numpy forward pass of each replica's own training inputs and labels."""
  _, result = measured
  run = run_lib.open(str(run_dir))
  saved = checkpoint_lib.load(str(run_dir), run.steps[-1])["params"]
  init = jax.device_get(run.state(0).params)
  for i, (r, entry) in enumerate(zip(run.replicas, result["replicas"])):
    w = [np.asarray(saved[f"Dense_{k}"]["kernel"][i], np.float64) for k in range(2)]
    b = [np.asarray(saved[f"Dense_{k}"]["bias"][i], np.float64) for k in range(2)]
    w0 = [np.asarray(init[f"Dense_{k}"]["kernel"][i], np.float64) for k in range(2)]
    m = entry["measures"]
    squared = [np.sum(a ** 2) for a in w]
    assert m["params"] == sum(a.size for a in w + b)
    assert m["frobenius_sum"] == pytest.approx(sum(squared), rel=1e-5)
    assert m["frobenius_product"] == pytest.approx(np.prod(squared), rel=1e-5)
    assert m["init_distance"] == pytest.approx(
        sum(np.sum((a - a0) ** 2) for a, a0 in zip(w, w0)), rel=1e-4)
    x = np.asarray(run.inputs(r, run_lib.TRAIN), np.float64).reshape(run.n, -1)
    logits = np.maximum(x @ w[0] + b[0], 0) @ w[1] + b[1]
    y = run.labels[i]
    own = logits[np.arange(run.n), y]
    other = np.max(np.where(np.eye(10, dtype=bool)[y], -np.inf, logits), axis=1)
    gamma = np.percentile(own - other, 10)
    assert gamma > 0  # a fitted replica: every training margin is positive
    assert entry["search"]["margin"] == pytest.approx(gamma, rel=1e-4)
    assert m["inverse_margin"] == pytest.approx(1 / gamma ** 2, rel=2e-4)
    assert m["frobenius_sum_over_margin"] == pytest.approx(sum(squared) / gamma ** 2,
                                                           rel=2e-4)


def test_the_loss_sum_to_the_fit_is_the_trainers(run_dir, measured, fitting_config):
  """loss_sum_to_fit (from metrics.jsonl) equals the train chunk's own float32 sum of the
  minibatch losses over the steps before each replica's fit, retrained here."""
  _, result = measured
  config = fitting_config(freeze_at_fit=False)  # no replica is frozen before its fit anyway
  run = run_lib.open(str(run_dir))
  program, d, reps, states, _ = train.build(config, run.replicas, run.dataset)
  done, sums = 0, {}
  for fit in sorted({e["step"] for e in result["replicas"]}):
    states, loss = program.train_chunk(states, reps, d, jnp.asarray(done),
                                       jnp.asarray(fit - done), sums.get(done))
    done, sums[fit] = fit, loss
  for i, entry in enumerate(result["replicas"]):
    want = float(np.asarray(sums[entry["step"]])[i])
    assert entry["measures"]["loss_sum_to_fit"] == pytest.approx(want, rel=1e-4)


def test_the_command_writes_and_replaces_its_own_file(run_dir, measured, capsys):
  out, result = measured
  before = _files(run_dir)
  assert cli.main(["measures", str(run_dir), "--out", str(out), "--measures",
                   "params,inverse_margin"]) == 0
  printed = capsys.readouterr().out
  assert "inverse_margin" in printed and "measures.json" in printed
  again = json.loads((out / probe.JSON).read_text())
  assert [sorted(e["measures"]) for e in again["replicas"]] == [
      ["inverse_margin", "params"]] * 4
  assert again["settings"]["config_hash"] == result["settings"]["config_hash"]
  assert _files(run_dir) == before


def _error(capsys, *args) -> str:
  assert cli.main(["measures", *map(str, args)]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  return lines[0]


def test_bad_input_is_one_line_and_changes_nothing(run_dir, measured, tmp_path, capsys,
                                                   fitting_config):
  out, _ = measured
  before, written = _files(run_dir), (out / probe.JSON).read_bytes()
  line = _error(capsys, run_dir, "--out", tmp_path / "a", "--measures", "spectral,sharp")
  assert "unknown measure 'sharp'" in line and "sharpness" in line and "--measures" in line
  line = _error(capsys, run_dir, "--out", tmp_path / "a", "--step", "70")
  assert "no checkpoint of --step 70" in line and "100, 120" in line
  # Another run's measures.json in OUT: refused, the file kept.
  other = tmp_path / "other"
  train.run(fitting_config(freeze_at_fit=False), str(other))
  capsys.readouterr()  # the training's progress
  line = _error(capsys, other, "--out", out, "--step", "final")
  assert "holds the measures of another run" in line
  assert (out / probe.JSON).read_bytes() == written
  # Without freeze_at_fit the fit steps have no checkpoints: say which, and what to do.
  line = _error(capsys, other, "--out", tmp_path / "b", "--step", "fit")
  assert "freeze_at_fit=True" in line and "no checkpoint of fit step" in line
  line = _error(capsys, run_dir, "--out", run_dir / "inside")
  assert "inside the run's directory" in line
  assert _files(run_dir) == before and not (tmp_path / "a").exists()


def test_replicas_that_never_fitted_are_named(tmp_path, capsys, fitting_config):
  config = fitting_config(max_steps=40)  # the random-label replicas have not fitted by then
  train.run(config, str(tmp_path / "run"))
  capsys.readouterr()  # the training's progress
  line = _error(capsys, tmp_path / "run", "--out", tmp_path / "out", "--step", "fit")
  assert "replica(s) 2 (labels 1, seed 0), 3 (labels 1, seed 0)" in line
  assert "never fitted" in line


def test_measure_names_and_groups():
  assert compute.parse_measures("spectral,hessian_top") == (
      "spectral_product", "spectral_sum", "spectral_complexity", "hessian_top")
  assert compute.groups_for(["path_norm_over_margin"]) == ("norms", "margin")
  assert set(compute.NAMES) == {n for names in compute.GROUPS.values() for n in names}


def test_without_freeze_each_replica_is_read_from_its_fit_checkpoint(tmp_path, fitting_config):
  """A run that kept training past the fits but saved every fit step: each replica's row is
  its own checkpoint's (its norms, its recorded evaluation), several steps in one state."""
  config = fitting_config(freeze_at_fit=False, checkpoint_every=10, keep_checkpoints=20)
  train.run(config, str(tmp_path / "run"))
  result = probe.measure(str(tmp_path / "run"), None, "fit", "frobenius_sum",
                         log=lambda msg: None)
  recorded = {}
  for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    recorded[(row["replica"], row["step"])] = row
  assert len({e["step"] for e in result["replicas"]}) > 1
  for i, entry in enumerate(result["replicas"]):
    saved = checkpoint_lib.load(str(tmp_path / "run"), entry["step"])["params"]
    want = sum(np.sum(np.asarray(saved[f"Dense_{k}"]["kernel"][i], np.float64) ** 2)
               for k in range(2))
    assert entry["measures"]["frobenius_sum"] == pytest.approx(want, rel=1e-5)
    assert entry["test_acc"] == pytest.approx(recorded[(i, entry["step"])]["test_acc"],
                                              abs=1e-7)
