"""What the device layout changes: 1 device, 8 fake devices, 2 processes x 2 devices.

A layout compiles another program. The replicas per device pick the execution plan's kernels
(``zhang/runtime/plan.py``: Eigen's from 8 per device, so 15 replicas on 1 device but not 2 on 8), a
vmap over 15 replicas is blocked differently from one over 2, and a ``data`` axis above 1
splits each batch's gradient sum. Float rounding then differs from the first steps on and
grows: the README's digits run ends with fit steps up to 1,000 steps apart on 1 and 8
devices. The tests pin what holds:

- one layout gives bit-identical results, killed and resumed or not (one device:
  tests/test_checkpoint.py; two processes here);
- other layouts agree to float tolerance on a short run, fit steps within one evaluation;
- with the plan fixed (``ZHANG_PLAN=replicas=map,cpu_kernels=default``) and every device on
  ``replica``, training is bit-identical on 1 and 8 devices; evaluation to float rounding.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from zhang.errors import UsageError
from zhang.runtime import mesh as mesh_lib

ROOT = pathlib.Path(__file__).parent.parent
# The digits grid (15 replicas: not a multiple of 2, 4 or 8, so it is padded) on 128 images,
# batch 32, learning rate 0.03: every replica fits by step 125 (random labels at 75-125).
ARGS = ["--config", "configs/digits.py", "--set", "n_train=128", "--set", "batch_size=32",
        "--set", "learning_rate=0.03", "--set", "max_steps=300", "--set", "eval_every=25",
        "--no_progress"]
EVAL_EVERY, N_TEST = 25, 359
FIXED_PLAN = "replicas=map,cpu_kernels=default"
# Largest differences from 1 device at any evaluation, measured for ARGS under
# tests/conftest.py's XLA flags on 8 devices (-1, 1) and (4, 2), 4 devices and 2 processes x
# 2 devices: train loss 1.7e-6, test loss 5.2e-5, test confidence 1.7e-5; accuracies and fit
# steps equal.
TOLERANCE = {"final_train_loss": 1e-4, "final_test_loss": 1e-3, "test_confidence": 5e-4}


def _env(devices: int, plan: str = ""):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  env["ZHANG_PLAN"] = plan  # empty: the automatic plan, whatever the caller's shell says
  env["JAX_PLATFORMS"] = "cpu"  # fake devices are CPU devices, on a GPU machine too
  return env


def _train(workdir, devices=1, extra=(), plan="", **kw):
  return subprocess.Popen([sys.executable, "-m", "zhang", "train", *ARGS, *extra,
                           "--workdir", str(workdir)], cwd=ROOT, env=_env(devices, plan),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(*procs):
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err
  return outs


def _run(workdir, devices=1, extra=(), plan=""):
  _finish(_train(workdir, devices, extra, plan))
  return _results(workdir)


def _results(workdir):
  """summary.json without wall times, and the metrics.jsonl rows in order."""
  workdir = pathlib.Path(workdir)
  summary = json.loads((workdir / "summary.json").read_text())
  summary.pop("wall_seconds")
  summary.pop("timing")  # seconds, and calls counted per process (first calls compile)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return summary, rows


def _replicas(results):
  summary, _ = results
  assert len(summary["replicas"]) == 15  # padding never appears
  return summary["replicas"]


def _assert_close(a, b):
  """What another layout keeps: the grid, the randomizations, fit steps within one
  evaluation, accuracies within one example, losses within ``TOLERANCE``."""
  for x, y in zip(_replicas(a), _replicas(b)):
    assert (x["replica"], x["kind"], x["corruption"], x["seed"]) == (
        y["replica"], y["kind"], y["corruption"], y["seed"])
    assert x["label_noise"] == y["label_noise"]  # labels are drawn the same way
    assert x["fit_step"] is not None and y["fit_step"] is not None
    assert abs(x["fit_step"] - y["fit_step"]) <= EVAL_EVERY
    for key, tol in TOLERANCE.items():
      assert x[key] == pytest.approx(y[key], abs=tol), key
    assert abs(x["final_train_acc"] - y["final_train_acc"]) <= 1.01 / 128
    assert abs(x["final_test_acc"] - y["final_test_acc"]) <= 1.01 / N_TEST


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("one_device"))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir):
  """A pair of processes with 2 devices each, checkpointing every 50 steps."""
  port = _free_port()
  return [_train(workdir, devices=2, extra=[
      "--set", "checkpoint_every=50", "--num_processes", "2", "--process_id", str(i),
      "--coordinator_address", f"127.0.0.1:{port}"]) for i in range(2)]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two_processes")
  _finish(*_two_processes(workdir))
  return _results(workdir)


@pytest.mark.parametrize("mesh", ["(-1, 1)", pytest.param("(4, 2)", marks=pytest.mark.slow)])
def test_eight_fake_devices_agree_to_float_tolerance(one_device, tmp_path, mesh):
  result = _run(tmp_path, devices=8, extra=["--set", f"mesh_shape={mesh}"])
  assert result[0]["device_count"] == 8
  _assert_close(one_device, result)


@pytest.mark.slow
def test_two_processes_agree_to_float_tolerance(one_device, two_processes):
  assert two_processes[0]["device_count"] == 4
  _assert_close(one_device, two_processes)


@pytest.mark.slow
def test_two_processes_kill_and_resume_is_bit_identical(two_processes, tmp_path):
  """Two processes on loopback, killed after a checkpoint and started again, end exactly as
  an uninterrupted pair (the same layout: the same program)."""
  procs = _two_processes(tmp_path)
  deadline = time.time() + 300
  while not (tmp_path / "checkpoints" / "50").exists():
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.02)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  outs = _finish(*_two_processes(tmp_path))
  assert "resuming" in outs[0][1]
  # Process 0 alone reports and writes run files: one row per (step, replica), the rows of
  # the killed pair's steps after its checkpoint dropped.
  assert "Results in" in outs[0][0] and "Results in" not in outs[1][0]
  summary, rows = _results(tmp_path)
  assert len(rows) == len({(r["step"], r["replica"]) for r in rows}) == 15 * (
      summary["steps_run"] // EVAL_EVERY + 1)
  assert (summary, rows) == two_processes


@pytest.mark.slow
def test_a_fixed_plan_trains_bit_identically_on_1_and_8_devices(tmp_path):
  """The plan fixed and every device on ``replica``: each device runs the same loop over
  its replicas with the same kernels, so training is the same bits (every batch loss, the
  fit steps, the accuracies); the evaluation's sums outside that loop are partitioned
  differently and its losses differ in the last bits (under 1e-6 measured)."""
  one = _run(tmp_path / "one", plan=FIXED_PLAN)
  eight = _run(tmp_path / "eight", devices=8, plan=FIXED_PLAN)
  assert one[0]["plan"] == eight[0]["plan"] == (
      "replicas=map,gradients=explicit,cpu_kernels=default")
  assert [r["fit_step"] for r in _replicas(one)] == [r["fit_step"] for r in _replicas(eight)]
  assert len(one[1]) == len(eight[1])
  for x, y in zip(*(rows for _, rows in (one, eight))):
    assert (x["step"], x["replica"], x["batch_loss"], x["train_acc"], x["test_acc"]) == (
        y["step"], y["replica"], y["batch_loss"], y["train_acc"], y["test_acc"])
    for key in ("train_loss", "test_loss", "test_confidence", "test_entropy"):
      assert x[key] == pytest.approx(y[key], abs=1e-5), key


@pytest.mark.slow
def test_mesh_that_does_not_match_the_devices(tmp_path):
  proc = _train(tmp_path / "w", devices=8, extra=["--set", "mesh_shape=(3, 1)"])
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  assert err.strip().splitlines() == [
      "zhang train: error: mesh_shape=(3, 1) needs 3 devices but 8 are available: use sizes "
      "whose product is 8, or -1 for one axis"]
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_missing_coordinator_address(tmp_path):
  proc = _train(tmp_path / "w", extra=["--num_processes", "2", "--process_id", "0"])
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "needs --coordinator_address" in lines[0]
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("extra,line", [
    (["--num_processes", "2", "--process_id", "0", "--coordinator_address", "127.0.0.1:1",
      "--set", "batch_size=-1"], "batch_size=-1 must be a positive integer"),
    (["--num_processes", "2", "--process_id", "0", "--coordinator_address", "localhost"],
     "--coordinator_address=localhost must be HOST:PORT, e.g. 10.0.0.2:8476"),
    (["--num_processes", "2", "--process_id", "2", "--coordinator_address", "127.0.0.1:1"],
     "--process_id=2 must be in [0, 2)"),
    (["--distributed"], "--distributed found no cluster to join ("),
    # The workdir and the dataset too, not only the config.
    (["--num_processes", "2", "--process_id", "0", "--coordinator_address", "127.0.0.1:1",
      "--set", "dataset='fashion_mnist'", "--data_dir", "/no/such/folder"],
     "no fashion_mnist IDX files"),
    (["--num_processes", "2", "--process_id", "0", "--coordinator_address", "127.0.0.1:1",
      "--set", "n_train=5", "--set", "batch_size=128"], "batch_size=128 is larger than"),
])
def test_multi_host_flags_are_checked_before_any_peer_is_waited_for(tmp_path, capsys,
                                                                   monkeypatch, extra, line):
  """A config error must not wait for peers (they would wait for it in turn): every local
  check comes before ``jax.distributed.initialize`` connects, which here connects nowhere."""
  import jax

  from zhang import cli
  real = jax.distributed.initialize
  connected = []

  def initialize(*args, **kwargs):
    if kwargs.get("coordinator_address"):
      connected.append(kwargs)
      raise AssertionError("connected")
    return real(*args, **kwargs)  # auto-detection: finds no TPU here, connects nowhere

  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  workdir = tmp_path / "w"
  assert cli.main(["train", *ARGS, "--workdir", str(workdir), *extra]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"zhang train: error: {line}") and err.count("\n") == 1, err
  assert not connected and not workdir.exists()


def test_resolve_shape_and_pad():
  assert mesh_lib.resolve_shape((-1, 1), 8) == (8, 1)
  assert mesh_lib.resolve_shape((2, -1), 8) == (2, 4)
  with pytest.raises(UsageError, match="does not divide"):
    mesh_lib.resolve_shape((3, -1), 8)
  with pytest.raises(UsageError, match="must be"):
    mesh_lib.resolve_shape((0, 1), 8)
  from zhang.experiment.config import Replica
  grid = [Replica(i, "labels", 0.0, i, 0.01, 0.0) for i in range(5)]
  padded = mesh_lib.pad(grid, 4)
  assert len(padded) == 8 and [r.index for r in padded] == list(range(8))
  assert all(r.seed == 4 for r in padded[5:])
  assert mesh_lib.pad(grid, 5) == grid
