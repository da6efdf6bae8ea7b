"""Results do not depend on the device layout: 1 device, 8 fake devices, 2 processes."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from zhang import mesh as mesh_lib
from zhang.errors import UsageError

ROOT = pathlib.Path(__file__).parent.parent
# 15 replicas (not a multiple of 2, 4 or 8: the grid is padded), 150 steps on 512 digits.
ARGS = ["--config", "configs/digits.py", "--set", "max_steps=150", "--set", "eval_every=25",
        "--set", "checkpoint_every=50", "--set", "n_train=512", "--no_progress"]


def _env(devices: int):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  return env


def _train(workdir, devices=1, extra=(), **kw):
  return subprocess.Popen([sys.executable, "-m", "zhang", "train", *ARGS, *extra,
                           "--workdir", str(workdir)], cwd=ROOT, env=_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _summary(workdir):
  return json.loads((pathlib.Path(workdir) / "summary.json").read_text())


def _assert_same_results(a, b, n_test=359):
  assert len(a["replicas"]) == len(b["replicas"]) == 15  # padding never appears
  for x, y in zip(a["replicas"], b["replicas"]):
    assert (x["replica"], x["kind"], x["corruption"], x["seed"]) == (
        y["replica"], y["kind"], y["corruption"], y["seed"])
    assert x["fit_step"] == y["fit_step"]
    assert x["label_noise"] == y["label_noise"]
    for key in ("final_train_loss", "final_test_loss", "test_confidence"):
      assert x[key] == pytest.approx(y[key], abs=5e-4)
    # Float summation order differs between layouts: a borderline example may flip.
    for key in ("final_train_acc", "final_test_acc"):
      assert abs(x[key] - y[key]) <= 1.01 / n_test


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  proc = _train(workdir)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  return _summary(workdir)


@pytest.mark.parametrize("mesh", ["(-1, 1)", "(4, 2)"])
def test_eight_fake_devices_give_the_same_results(one_device, tmp_path, mesh):
  proc = _train(tmp_path, devices=8, extra=["--set", f"mesh_shape={mesh}"])
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  _assert_same_results(one_device, _summary(tmp_path))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir):
  port = _free_port()
  return [_train(workdir, devices=2, extra=[
      "--num_processes", "2", "--process_id", str(i),
      "--coordinator_address", f"127.0.0.1:{port}"]) for i in range(2)]


def test_two_processes_kill_and_resume(one_device, tmp_path):
  """Two processes on loopback, killed after a checkpoint and started again, end as one
  process on one device does (the resumed pair runs the rest of the way on its own)."""
  procs = _two_processes(tmp_path)
  deadline = time.time() + 300
  while not (tmp_path / "checkpoints" / "50").exists():
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.02)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  procs = _two_processes(tmp_path)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err
  assert "resuming" in outs[0][1]
  # Process 0 alone reports and writes run files: one row per (step, replica), the rows of
  # the killed pair's steps after its checkpoint dropped.
  assert "Results in" in outs[0][0] and "Results in" not in outs[1][0]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == len({(r["step"], r["replica"]) for r in rows}) == 15 * 7
  _assert_same_results(one_device, _summary(tmp_path))


def test_mesh_that_does_not_match_the_devices(tmp_path):
  proc = _train(tmp_path / "w", devices=8, extra=["--set", "mesh_shape=(3, 1)"])
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  assert err.strip().splitlines() == [
      "zhang train: error: mesh_shape=(3, 1) needs 3 devices but 8 are available: use sizes "
      "whose product is 8, or -1 for one axis"]
  assert not (tmp_path / "w").exists()


def test_missing_coordinator_address(tmp_path):
  proc = _train(tmp_path / "w", extra=["--num_processes", "2", "--process_id", "0"])
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "needs --coordinator_address" in lines[0]
  assert not (tmp_path / "w").exists()


def test_resolve_shape_and_pad():
  assert mesh_lib.resolve_shape((-1, 1), 8) == (8, 1)
  assert mesh_lib.resolve_shape((2, -1), 8) == (2, 4)
  with pytest.raises(UsageError, match="does not divide"):
    mesh_lib.resolve_shape((3, -1), 8)
  with pytest.raises(UsageError, match="must be"):
    mesh_lib.resolve_shape((0, 1), 8)
  from zhang.config import Replica
  grid = [Replica(i, "labels", 0.0, i) for i in range(5)]
  padded = mesh_lib.pad(grid, 4)
  assert len(padded) == 8 and [r.index for r in padded] == list(range(8))
  assert all(r.seed == 4 for r in padded[5:])
  assert mesh_lib.pad(grid, 5) == grid
