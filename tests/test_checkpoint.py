"""Preemption and resume: a killed run ends exactly as an uninterrupted one."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from zhang.errors import UsageError
from zhang.experiment import loop, train
from zhang.rundir import checkpoint

ROOT = pathlib.Path(__file__).parent.parent
# The digits grid (15 replicas), short: checkpoints at 100, 200, 300 and 400 (the end), the
# learning rate decayed every 150 steps, so a run resumed from 200 resumes past a decay too.
# A kill lands 200 steps (a few seconds) before the end, not in a race with it.
ARGS = ["--config", "configs/digits.py", "--set", "max_steps=400", "--set", "eval_every=50",
        "--set", "checkpoint_every=100", "--set", "lr_decay_every=150",
        "--set", "keep_checkpoints=10", "--no_progress"]


def _start(workdir):
  return subprocess.Popen([sys.executable, "-m", "zhang", "train", *ARGS, "--workdir",
                           str(workdir)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(path: pathlib.Path, proc, timeout=300):
  deadline = time.time() + timeout
  while not path.exists():
    assert proc.poll() is None, f"run ended before {path} appeared: {proc.stderr.read()}"
    assert time.time() < deadline
    time.sleep(0.02)


def _final(workdir):
  summary = json.loads((workdir / "summary.json").read_text())
  summary.pop("wall_seconds")
  summary.pop("timing")  # seconds, and calls counted per process (first calls compile)
  rows = (workdir / "metrics.jsonl").read_text().splitlines()
  with np.load(workdir / "fit_times.npz") as f:
    fit_times = {k: f[k] for k in f.files}
  return summary, rows, dict(checkpoint.load(workdir), fit_times=fit_times)


def _assert_same(a, b):
  (sa, ra, ca), (sb, rb, cb) = a, b
  assert sa == sb
  assert ca["fit_times"].keys() == cb["fit_times"].keys() == {"fit_step", "noisy", "step"}
  for k in ca["fit_times"]:
    np.testing.assert_array_equal(ca["fit_times"][k], cb["fit_times"][k])
  assert ra == rb  # every (step, replica) row once, in order, with the same values
  assert ca["step"] == cb["step"]
  for x, y in zip(jax.tree.leaves(ca["params"]), jax.tree.leaves(cb["params"])):
    np.testing.assert_array_equal(x, y)  # bit-identical
  for x, y in zip(jax.tree.leaves(ca["opt_state"]), jax.tree.leaves(cb["opt_state"])):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _start(workdir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  return _final(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [100, 200])
def test_sigkill_and_resume_is_bit_identical(uninterrupted, tmp_path, kill_after):
  proc = _start(tmp_path)
  _wait_for(tmp_path / "checkpoints" / str(kill_after), proc)
  proc.kill()
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert json.loads((tmp_path / "summary.json").read_text())["status"] == "running"
  resumed = _start(tmp_path)
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err
  assert "resuming" in err
  timing = json.loads((tmp_path / "summary.json").read_text())["timing"]
  _assert_same(_final(tmp_path), uninterrupted)
  # Timing adds up over both sessions; each session's first train call (1 step) and first
  # evaluation compile and count apart.
  steps = uninterrupted[0]["steps_run"]
  assert timing["train_steps"] == steps - 2 * 1
  assert timing["evaluations"] == steps // 50 + 1 - 2


def _wait_for_write(checkpoints: pathlib.Path, proc, timeout=300):
  """Until Orbax is writing a checkpoint (its temporary folder exists), polled tightly."""
  deadline = time.time() + timeout
  while True:
    try:
      if any(".orbax-checkpoint-tmp" in name for name in os.listdir(checkpoints)):
        return
    except FileNotFoundError:
      pass
    assert proc.poll() is None, "run ended before a checkpoint write was caught"
    assert time.time() < deadline
    time.sleep(0.001)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["during_a_checkpoint_write", "after_complete"])
def test_sigkill_anywhere_and_resume_is_bit_identical(uninterrupted, tmp_path, when):
  """Fault injection: a kill while a checkpoint is being written, and after the run wrote
  "complete" (before it exited); the resumed (or re-run) workdir equals an uninterrupted
  run's, sorted rows and summary bit for bit."""
  proc = _start(tmp_path)
  if when == "during_a_checkpoint_write":
    _wait_for(tmp_path / "checkpoints" / "100", proc)
    _wait_for_write(tmp_path / "checkpoints", proc)
  else:
    deadline = time.time() + 600
    while '"status": "complete"' not in _text(tmp_path / "summary.json"):
      assert time.time() < deadline
      time.sleep(0.005)
  proc.kill()
  proc.wait()
  resumed = _start(tmp_path)
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err
  if when == "after_complete":
    assert "nothing to do" in err and "resuming" not in err
  a, b = _final(tmp_path), uninterrupted
  assert sorted(a[1]) == sorted(b[1])
  _assert_same(a, b)


def _text(path):
  try:
    return path.read_text()
  except FileNotFoundError:
    return ""


@pytest.mark.slow
def test_sigterm_saves_exits_cleanly_and_resumes(uninterrupted, tmp_path):
  proc = _start(tmp_path)
  _wait_for(tmp_path / "checkpoints" / "100", proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert "preempted" in err and "Traceback" not in err
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["status"] == "preempted"
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved[-1] == summary["steps_run"] > 0
  resumed = _start(tmp_path)
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err
  _assert_same(_final(tmp_path), uninterrupted)


def _small(tiny_config):
  tiny_config.max_steps = 60
  tiny_config.checkpoint_every = 20
  return tiny_config


@pytest.fixture(scope="module")
def clean_small(tmp_path_factory):
  """A finished run of a small config (60 steps, checkpoints every 20): the config and the
  run's workdir."""
  from zhang.experiment import config as config_lib
  config = config_lib.load("configs/digits.py", [
      "n_train=256", "n_test=128", "batch_size=32", "max_steps=60", "eval_every=20",
      "checkpoint_every=20", "lr_decay_every=25",
      "grid=[dict(kinds=['labels', 'random_pixels'], corruptions=[0.0, 0.5], seeds=[0])]"])
  workdir = tmp_path_factory.mktemp("clean_small") / "run"
  train.run(config, workdir, progress=False)
  return config, workdir


def _remove_state_data(step_dir: pathlib.Path) -> str:
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and "ocdbt" in str(f.relative_to(step_dir)):
      f.unlink()
  return "ValueError"  # Orbax: the arrays cannot be read


def _remove_fit_times_item(step_dir: pathlib.Path) -> str:
  import shutil
  shutil.rmtree(step_dir / checkpoint.FIT_TIMES)
  return "its fit_times item is missing"


def _drop_a_meta_field(step_dir: pathlib.Path) -> str:
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  del meta["loss_sum"]
  (step_dir / "meta" / "metadata").write_text(json.dumps(meta))
  return "its meta lacks loss_sum"


def _flip_bytes(item: pathlib.Path) -> None:
  """XORs 64 bytes in the middle of the largest data file of a checkpoint item (arrays
  stored out of line: TensorStore checks its index nodes, not the arrays' bytes)."""
  f = max((item / "ocdbt.process_0" / "d").iterdir(), key=lambda f: f.stat().st_size)
  data = bytearray(f.read_bytes())
  start = max(0, len(data) // 2 - 32)
  data[start:start + 64] = bytes(b ^ 0x5A for b in data[start:start + 64])
  f.write_bytes(bytes(data))


def _flip_state_bytes(step_dir: pathlib.Path) -> str:
  _flip_bytes(step_dir / "state")
  return "do not match the checksums"


@pytest.mark.parametrize("damage", [_remove_state_data, _remove_fit_times_item,
                                    _drop_a_meta_field, _flip_state_bytes])
@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous(clean_small, tmp_path, capsys,
                                                              damage):
  """Arrays that cannot be read and an item that is missing are the same damage: the
  checkpoint is named unreadable and the run resumes from the previous one, to the same
  results."""
  config, clean = clean_small
  damaged = tmp_path / "damaged"
  train.run(config, damaged, progress=False)
  reason = damage(damaged / "checkpoints" / "60")
  capsys.readouterr()
  summary = train.run(config, damaged, progress=False)
  err = capsys.readouterr().err
  assert "checkpoints/60 is unreadable" in err and reason in err
  assert "resuming" in err and "step 40" in err
  assert summary["status"] == "complete"
  _assert_same(_final(damaged), _final(clean))


SMALL = ["--config", "configs/digits.py", "--set", "n_train=256", "--set", "n_test=128",
         "--set", "batch_size=32", "--set", "max_steps=60", "--set", "eval_every=20",
         "--set", "checkpoint_every=20", "--no_progress"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("small_run") / "run"
  proc = subprocess.run([sys.executable, "-m", "zhang", "train", *SMALL, "--workdir",
                         str(workdir)], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  return workdir


def _damage(state: pathlib.Path, how: str) -> None:
  store = state / "ocdbt.process_0"
  if how == "data_removed":
    for f in (store / "d").iterdir():
      f.unlink()
  elif how == "data_truncated":
    for f in (store / "d").iterdir():
      os.truncate(f, 10)
  else:  # the OCDBT manifests overwritten
    for f in (store / "manifest.ocdbt", state / "manifest.ocdbt"):
      f.write_text("garbage")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["data_removed", "data_truncated", "manifest_garbage"])
def test_a_damaged_checkpoint_is_one_line_without_library_noise(small_run, tmp_path, how):
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(small_run, workdir)
  _damage(workdir / "checkpoints" / "60" / "state", how)
  proc = subprocess.run([sys.executable, "-m", "zhang", "train", *SMALL, "--workdir",
                         str(workdir)], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stderr.splitlines()
  assert len(lines) == 3 and all(line.startswith("zhang: ") for line in lines), proc.stderr
  assert f"checkpoints/60 is unreadable ({'ValueError: '}" in lines[0]
  assert "<" not in lines[0] and "removed unreadable checkpoint(s) 60" in lines[1]
  assert "from the checkpoint of step 40" in lines[2]
  # The libraries' own account is kept in the workdir.
  assert (workdir / "library.log").stat().st_size > 0


@pytest.mark.slow
def test_no_readable_checkpoint_is_refused(tiny_config, tmp_path):
  config = _small(tiny_config)
  train.run(config, tmp_path, progress=False)
  for step in ("20", "40", "60"):
    for f in (tmp_path / "checkpoints" / step / "state").rglob("*"):
      if f.is_file():
        f.unlink()
  before = (tmp_path / "metrics.jsonl").read_bytes()
  with pytest.raises(UsageError, match="no readable checkpoint.*start over with `restart`"):
    train.run(config, tmp_path, progress=False)
  assert (tmp_path / "metrics.jsonl").read_bytes() == before
  # Starting over explicitly works.
  assert train.run(config, tmp_path, restart=True, progress=False)["status"] == "complete"


@pytest.mark.slow
def test_resume_drops_rows_written_after_the_checkpoint(tiny_config, tmp_path):
  config = _small(tiny_config)
  train.run(config, tmp_path, progress=False)
  reference = (tmp_path / "metrics.jsonl").read_text()
  # As if the run had died after writing the step-60 rows (and half a line) but before
  # its final checkpoint.
  import shutil
  shutil.rmtree(tmp_path / "checkpoints" / "60")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 80, "replica": 0, "trai')
  train.run(config, tmp_path, progress=False)
  assert (tmp_path / "metrics.jsonl").read_text() == reference


def _cut_last_metrics_line(workdir: pathlib.Path) -> None:
  text = (workdir / "metrics.jsonl").read_text()
  (workdir / "metrics.jsonl").write_text(text[:text.rindex("\n", 0, -1) + 1] + '{"step": 6')


def _garble_fit_times(workdir: pathlib.Path) -> None:
  data = bytearray((workdir / "fit_times.npz").read_bytes())
  data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
  (workdir / "fit_times.npz").write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [
    _cut_last_metrics_line, _garble_fit_times,
    lambda workdir: (workdir / "fit_times.npz").unlink()])
def test_a_finished_run_restores_its_damaged_files(clean_small, tmp_path, capsys, damage):
  """A complete run's files are checked against its final checkpoint on a rerun; the last
  rows and the fit times are restored from it, to the same bytes."""
  import shutil
  config, clean = clean_small
  shutil.copytree(clean, tmp_path / "run")
  damage(tmp_path / "run")
  capsys.readouterr()
  summary = train.run(config, tmp_path / "run", progress=False)
  assert "is damaged or missing; restoring from the checkpoint of step 60" in (
      capsys.readouterr().err)
  assert summary["status"] == "complete"
  for name in ("metrics.jsonl", "fit_times.npz"):
    assert (tmp_path / "run" / name).read_bytes() == (clean / name).read_bytes(), name
  # Repaired, the run is complete again, with nothing to do.
  train.run(config, tmp_path / "run", progress=False)
  assert "nothing to do" in capsys.readouterr().err


def test_a_finished_run_rerun_changes_nothing(tiny_config, tmp_path, capsys):
  config = _small(tiny_config)
  first = train.run(config, tmp_path, progress=False)
  files = {name: (tmp_path / name).read_bytes()
           for name in ("metrics.jsonl", "summary.json", "config.json")}
  capsys.readouterr()
  again = train.run(config, tmp_path, progress=False)
  assert "is complete (0/7 replicas fitted, 60 steps); nothing to do" in capsys.readouterr().err
  # Untouched: the summary's wall_seconds too (nothing was trained).
  assert {name: (tmp_path / name).read_bytes() for name in files} == files
  assert again.pop("already_complete") and first == again


@pytest.mark.slow
def test_sigterm_between_evaluations_stops_within_a_call_and_resumes_bit_identical(
    tiny_config, tmp_path, monkeypatch):
  """The notice lands mid-interval: the run saves at the call's end (step 26, not the
  next evaluation at 40), and the resumed run, trained in calls of other lengths, ends with
  the same rows (batch losses included), summary and parameters as an uninterrupted one."""
  config = _small(tiny_config)
  clean = tmp_path / "clean"
  train.run(config, clean, progress=False)
  monkeypatch.setattr(loop.CallSizer, "steps", lambda self, remaining: min(remaining, 3))
  real = train.metrics_lib.Timing.time_call
  sent = []

  def time_call(self, what, seconds, steps=0):
    real(self, what, seconds, steps)
    # Calls of 3 steps, cut at evaluations, end at 3, 6, ..., 18, 20, 23, 26; the first is
    # timed apart, so 23 steps are timed when the call ending at 26 returns: notice then.
    if what == "train" and self.totals["train_steps"] >= 22 and not sent:
      sent.append(True)
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train.metrics_lib.Timing, "time_call", time_call)
  stopped = train.run(config, tmp_path / "run", progress=False)
  assert stopped["status"] == "preempted" and stopped["steps_run"] == 26
  monkeypatch.undo()
  resumed = train.run(config, tmp_path / "run", progress=False)
  assert resumed["status"] == "complete"
  _assert_same(_final(tmp_path / "run"), _final(clean))


@pytest.mark.slow
def test_ctrl_c_saves_like_sigterm_and_a_second_stops_at_once(tiny_config, tmp_path,
                                                              monkeypatch, capsys):
  """A first SIGINT saves at the end of the call in flight, like SIGTERM, in one line each;
  a second raises KeyboardInterrupt at once. A resumed run whose summary still says running
  (as a SIGKILL leaves it) is said to have been killed: its lock was free."""
  from zhang.rundir import workdir as workdir_lib
  config = _small(tiny_config)
  monkeypatch.setattr(loop.CallSizer, "steps", lambda self, remaining: min(remaining, 3))
  real = train.metrics_lib.Timing.time_call
  signals = []

  def time_call(self, what, seconds, steps=0):
    real(self, what, seconds, steps)
    if what == "train" and self.totals["train_steps"] >= 22 and signals:
      for _ in range(signals.pop()):
        os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(train.metrics_lib.Timing, "time_call", time_call)
  signals.append(1)
  stopped = train.run(config, tmp_path, progress=False)
  err = capsys.readouterr().err.splitlines()
  assert stopped["status"] == "preempted" and stopped["steps_run"] == 26
  assert err[0].startswith("zhang: interrupted (Ctrl-C): saving a checkpoint")
  assert err[1].startswith("zhang: interrupted (Ctrl-C) at step 26; the checkpoint is saved")
  assert len(err) == 2
  assert workdir_lib.is_locked(tmp_path) is False
  signals.append(2)
  with pytest.raises(KeyboardInterrupt):
    train.run(config, tmp_path, progress=False)
  assert checkpoint.Checkpointer(tmp_path, create=False).steps()[-1] == 26
  monkeypatch.undo()
  summary = json.loads((tmp_path / "summary.json").read_text())
  (tmp_path / "summary.json").write_text(json.dumps(dict(summary, status="running")))
  capsys.readouterr()
  assert train.run(config, tmp_path, progress=False)["status"] == "complete"
  assert "from the checkpoint of step 26 (its summary said running at step" in (
      capsys.readouterr().err)


def test_a_second_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
  from zhang.cli import main

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(train, "run", interrupted)
  assert main(["train", "--config", "configs/digits.py", "--workdir", str(tmp_path)]) == 130
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and "stopped (Ctrl-C)" in err[0]


def test_complete_is_written_only_once_the_last_checkpoint_is_on_disk(tiny_config, tmp_path,
                                                                     monkeypatch):
  from zhang.rundir import metrics
  seen = []
  real = metrics.Writer.summary

  def summary(self, s):
    if s["status"] == "complete":
      names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
      seen.append((s["steps_run"], names))
    real(self, s)

  monkeypatch.setattr(metrics.Writer, "summary", summary)
  train.run(_small(tiny_config), tmp_path, progress=False)
  # The final checkpoint (60) is finalized (no Orbax temporary folder) when "complete" is
  # first written.
  assert seen == [(60, ["20", "40", "60"])]


@pytest.mark.parametrize("cut", ["last_row", "earlier_row"])
@pytest.mark.slow
def test_a_damaged_metrics_line_is_restored_or_named_on_resume(tiny_config, tmp_path, capsys,
                                                              cut):
  """As if a kill at the checkpoint of step 40 had cut a line of metrics.jsonl in half: the
  last evaluation's rows are in the checkpoint and come back; an earlier row cannot, and the
  resume says which."""
  config = _small(tiny_config)
  train.run(config, tmp_path, progress=False)
  reference = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
  import shutil
  shutil.rmtree(tmp_path / "checkpoints" / "60")
  rows = [json.loads(line) for line in reference]
  upto40 = [line for line, row in zip(reference, rows) if row["step"] <= 40]
  victim = len(upto40) - 1 if cut == "last_row" else 3  # (step 40, last) or (step 0, #3)
  damaged = upto40[:victim] + [upto40[victim][:len(upto40[victim]) // 2]]
  damaged += ["\n"] + upto40[victim + 1:] if cut == "earlier_row" else []
  (tmp_path / "metrics.jsonl").write_text("".join(damaged))
  capsys.readouterr()
  train.run(config, tmp_path, progress=False)
  err = capsys.readouterr().err
  resumed = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
  if cut == "last_row":
    assert "restored 1 damaged or missing row(s) of metrics.jsonl" in err
    assert resumed == reference  # bit for bit, in order
  else:
    assert "metrics.jsonl lacks 1 row(s) at step(s) 0 that the checkpoint cannot restore" in err
    assert sorted(resumed) == sorted(reference[:3] + reference[4:])


def test_load_for_analysis(tiny_config, tmp_path):
  config = _small(tiny_config)
  summary = train.run(config, tmp_path, progress=False)
  ckpt = checkpoint.load(tmp_path, step=40)
  assert ckpt["step"] == 40
  kernel = ckpt["params"]["Dense_0"]["kernel"]
  assert isinstance(kernel, np.ndarray) and kernel.shape == (7, 64, 512)
  assert ckpt["meta"]["fit_step"] is not None
  with pytest.raises(UsageError, match="no checkpoint of step 30"):
    checkpoint.load(tmp_path, step=30)
  assert checkpoint.load(tmp_path)["step"] == summary["steps_run"]


def test_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tiny_config, tmp_path):
  """A 3 MB tmpfs holds one checkpoint of this grid (about 2 MB) but not two."""
  mount = tmp_path / "small_disk"
  mount.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)],
      capture_output=True).returncode != 0:
    pytest.skip("needs root to mount a small tmpfs")
  try:
    config = _small(tiny_config)
    from zhang.errors import RunError
    # Reported at the save that does not fit (40), with the space the run needs.
    with pytest.raises(RunError, match=r"checkpoint of step 40 .*\(no space left on device: "
                       r"a checkpoint of this run takes 2\.\d MiB, 3 are kept \(\d+\.\d MiB "
                       r"while a new one is written\), \d\.\d MiB free\); earlier checkpoints 20 "
                       "are intact"):
      train.run(config, mount / "run", progress=False)
    assert checkpoint.load(mount / "run")["step"] == 20
    # The run's files stay readable.
    assert json.loads((mount / "run" / "summary.json").read_text())["steps_run"] == 40
    assert {json.loads(line)["step"] for line in
            (mount / "run" / "metrics.jsonl").read_text().splitlines()} == {0, 20, 40}
  finally:
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_load_a_checkpoint_written_on_more_devices(tmp_path):
  """A notebook on one device reads a run saved from 8 (each replica's shard put together)."""
  script = (
      "import sys, jax; jax.config.update('jax_num_cpu_devices', 8)\n"
      "from zhang.experiment import config as C, train\n"
      "c = C.base_config(); c.model = 'mlp_1x512'; c.dataset = 'digits'\n"
      "c.n_train, c.n_test, c.batch_size, c.max_steps, c.eval_every = 128, 64, 32, 20, 10\n"
      "c.grid = [dict(kinds=['labels'], corruptions=[0.0, 1.0], seeds=[0, 1, 2, 3])]\n"
      "s = train.run(c, sys.argv[1], progress=False)\n"
      "assert s['device_count'] == 8\n")
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  ckpt = checkpoint.load(tmp_path)
  kernel = ckpt["params"]["Dense_0"]["kernel"]
  assert ckpt["step"] == 20 and kernel.shape == (8, 64, 512) and np.isfinite(kernel).all()
  assert len(ckpt["meta"]["fit_step"]) == 8
  # One replica per device: every shard is its own replica (different seeds or labels).
  assert all(not np.allclose(kernel[i], kernel[j]) for i in range(8) for j in range(i))


def test_a_truncated_config_is_rewritten_when_the_checkpoint_vouches_for_it(clean_small,
                                                                            tmp_path, capsys):
  """config.json cut off: the checkpoint's config hash tells whether this config wrote the
  run; if so config.json is written again (the same bytes), else the damage is refused."""
  import shutil
  config, clean = clean_small
  shutil.copytree(clean, tmp_path / "run")
  text = (clean / "config.json").read_text()
  (tmp_path / "run" / "config.json").write_text(text[:len(text) // 2])
  other = config.copy_and_resolve_references()
  other.learning_rate = 0.5 * config.learning_rate
  with pytest.raises(UsageError, match="not valid JSON.*newest checkpoint was written by "
                     "another config"):
    train.run(other, tmp_path / "run", progress=False)
  capsys.readouterr()
  assert train.run(config, tmp_path / "run", progress=False)["status"] == "complete"
  err = capsys.readouterr().err
  assert "config.json was damaged; its checkpoint of step 60 was written by this config" in err
  assert "nothing to do" in err
  assert (tmp_path / "run" / "config.json").read_text() == text
