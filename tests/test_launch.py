"""The launch scripts' --dry-run output: what they would run, with nothing actually run.

Every script runs with a PATH whose gcloud, gsutil, git, ssh, scp, tar, curl and pip are stubs
that record the call and fail, so a test fails if a dry run calls any of them. The commands
meant for the remote machines are also run here, with sh, in a throwaway HOME whose
~/zhang-venv/bin/python is a stand-in for the training process.
"""

import os
import pathlib
import shlex
import signal
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STUBS = ("gcloud", "gsutil", "git", "ssh", "scp", "tar", "curl", "pip", "python3")
TPU_FLAGS = ["--name", "zhang-t", "--zone", "us-west4-a", "--accelerator-type",
             "v5litepod-16", "--workdir", "gs://my-bucket/runs/fig1"]


@pytest.fixture
def launch(tmp_path):
  """Runs ``bash launch/NAME.sh ARGS`` with stubbed tools; returns (rc, commands, stderr)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  called = tmp_path / "called"
  for name in STUBS:
    stub = bin_dir / name
    stub.write_text(f"#!/bin/sh\necho {name} >> '{called}'\nexit 1\n")
    stub.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp_path))

  def call(script, *args):
    proc = subprocess.run(["bash", str(REPO / "launch" / f"{script}.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=30, cwd=tmp_path)
    assert not called.exists(), f"a dry run called {called.read_text().split()}"
    commands = ([shlex.split(line) for line in proc.stdout.splitlines()]
                if "--dry-run" in args else proc.stdout)
    return proc.returncode, commands, proc.stderr

  return call


def _find(commands, *words):
  """The commands that start with ``words``."""
  return [c for c in commands if c[:len(words)] == list(words)]


def _remote(command):
  """The --command=... of a gcloud ssh command."""
  (value,) = [w[len("--command="):] for w in command if w.startswith("--command=")]
  return value


def _syntax_ok(script):
  return subprocess.run(["bash", "-n", "-c", script], capture_output=True).returncode == 0


def test_tpu_all(launch):
  rc, cmds, err = launch("tpu", "--dry-run", "all", *TPU_FLAGS, "--spot",
                         "--set", "max_steps=100", "--set", "name='a b'")
  assert rc == 0, err
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  qr = ["gcloud", "compute", "tpus", "queued-resources"]
  assert not _find(cmds, *tpu, "create")  # a queued resource by default
  (create,) = _find(cmds, *qr, "create")
  assert create[5] == "zhang-t"
  assert {"--zone=us-west4-a", "--node-id=zhang-t", "--accelerator-type=v5litepod-16",
          "--spot", "--runtime-version=v2-alpha-tpuv5-lite"} <= set(create)
  (archive,) = _find(cmds, "git")
  assert "archive" in archive
  tarball = archive[archive.index("-o") + 1]
  (scp,) = _find(cmds, *tpu, "scp")
  assert scp[5] == tarball and "--worker=all" in scp
  setup, train, attach = _find(cmds, *tpu, "ssh")
  assert "--worker=all" in setup and "--worker=all" in train and "--worker=0" in attach
  assert "pip install" in _remote(setup) and "jax[tpu]" in _remote(setup)
  assert "zhang[gcs]" in _remote(setup)  # gcsfs: the workers' gs:// access
  remote = _remote(train)
  # One command, the same for every worker, with --distributed, a gs:// workdir and the data.
  assert "-m zhang train --config configs/fig1.py --workdir gs://my-bucket/runs/fig1" in remote
  assert "--distributed" in remote
  assert "TFDS_DATA_DIR=gs://my-bucket/tfds" in remote
  assert "--set max_steps=100" in remote
  assert "setsid nohup" in remote and "~/zhang-run/train.log" in remote and "tee" not in remote
  assert "tail" in _remote(attach)
  assert all(_syntax_ok(_remote(c)) for c in (setup, train, attach))
  (fetch,) = _find(cmds, "gcloud", "storage", "rsync")
  assert "gs://my-bucket/runs/fig1" in fetch and fetch[-1].endswith("runs/fig1")
  (delete,) = _find(cmds, *qr, "delete")
  assert delete[5] == "zhang-t" and "--zone=us-west4-a" in delete and "--force" in delete
  # The phases in order.
  order = [cmds.index(c) for c in (create, archive, scp, setup, train, attach, fetch, delete)]
  assert order == sorted(order)


def test_tpu_legacy_create(launch):
  rc, cmds, err = launch("tpu", "--dry-run", "create", "delete", *TPU_FLAGS, "--legacy-create",
                         "--preemptible")
  assert rc == 0, err
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  (create,) = _find(cmds, *tpu, "create")
  assert {"--version=v2-alpha-tpuv5-lite", "--preemptible"} <= set(create)
  assert _find(cmds, *tpu, "delete") and not [c for c in cmds if "queued-resources" in c]


def test_tpu_remote_command_shell_words(launch):
  """A --set value with quotes and spaces reaches zhang train as one word."""
  value = "grid=[dict(kinds=['labels'], corruptions=[0.5], seeds=[0])]"
  rc, cmds, err = launch("tpu", "--dry-run", "run", *TPU_FLAGS, "--set", value)
  assert rc == 0, err
  train, _ = _find(cmds, "gcloud", "compute", "tpus", "tpu-vm", "ssh")
  remote = _remote(train)
  words = shlex.split(remote.split(" zhang-run env ", 1)[1].split(" >> ", 1)[0])
  assert words[words.index("--set") + 1] == value


def test_tpu_keep_queued_project(launch):
  rc, cmds, err = launch("tpu", "--dry-run", "all", "--keep", "--queued", "--project", "proj",
                         *TPU_FLAGS, "--data-dir", "gs://data/tfds", "--results", "out")
  assert rc == 0, err
  assert not [c for c in cmds if "delete" in c]
  (create,) = _find(cmds, "gcloud", "compute", "tpus", "queued-resources", "create")
  assert {"--node-id=zhang-t", "--runtime-version=v2-alpha-tpuv5-lite",
          "--accelerator-type=v5litepod-16", "--project=proj"} <= set(create)
  assert all("--project=proj" in c for c in cmds if c[0] == "gcloud" and c[1] == "compute")
  (train,) = [c for c in cmds if "--distributed" in " ".join(c)]
  assert "TFDS_DATA_DIR=gs://data/tfds" in _remote(train)
  assert _find(cmds, "gcloud", "storage", "rsync")[0][-1] == "out"


def test_tpu_phases(launch):
  rc, cmds, err = launch("tpu", "--dry-run", "run", "fetch", *TPU_FLAGS)
  assert rc == 0, err
  assert [c[:5] for c in cmds][0] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  assert not [c for c in cmds if "create" in c]
  rc, cmds, err = launch("tpu", "--dry-run", "attach", "--name", "x", "--zone", "z")
  assert rc == 0, err
  assert len(cmds) == 1 and "--worker=0" in cmds[0] and "tail" in _remote(cmds[0])
  rc, cmds, err = launch("tpu", "--dry-run", "delete", "--queued", "--name", "x", "--zone", "z")
  assert rc == 0, err
  assert cmds == [["gcloud", "compute", "tpus", "queued-resources", "delete", "x", "--zone=z",
                   "--force", "--quiet"]]
  rc, cmds, err = launch("tpu", "--dry-run", "stop", "--name", "x", "--zone", "z")
  assert rc == 0 and "kill -TERM" in _remote(cmds[0]) and "--worker=all" in cmds[0]


# --- the remote commands, run here ---------------------------------------------------------------

# Stands in for ~/zhang-venv/bin/python: logs its arguments and environment, then trains until
# SIGTERM, which it records before exiting 0 (as zhang train saves and exits); "--set fail"
# makes it exit 3 at once.
FAKE_PYTHON = """#!/bin/sh
echo "train: $*"
echo "mem: ${XLA_CLIENT_MEM_FRACTION-} old: ${XLA_PYTHON_CLIENT_MEM_FRACTION-unset}"
case "$*" in *"--set fail"*) exit 3 ;; esac
trap 'echo "got SIGTERM"; exit 0' TERM
while :; do sleep 0.1; done
"""


@pytest.fixture
def remote_home(tmp_path):
  """A HOME as setup leaves it (~/zhang, ~/zhang-venv); yields a runner of sh commands there."""
  home = tmp_path / "home"
  (home / "zhang").mkdir(parents=True)
  (home / "zhang-venv" / "bin").mkdir(parents=True)
  python = home / "zhang-venv" / "bin" / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  env = dict(os.environ, HOME=str(home), XLA_PYTHON_CLIENT_MEM_FRACTION="0.5")

  def sh(command, background=False):
    args = dict(env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if background:
      return subprocess.Popen(["sh", "-c", command], **args)
    return subprocess.run(["sh", "-c", command], timeout=60, **args)

  yield home, sh
  pid_file = home / "zhang-run" / "train.pid"
  if pid_file.exists():  # a run that a failed test left going (and only that one)
    pid = pid_file.read_text().strip()
    args = subprocess.run(["ps", "-ww", "-o", "args=", "-p", pid], capture_output=True,
                          text=True)
    if str(home) in args.stdout:
      os.killpg(int(pid), signal.SIGKILL)


def _wait_for(predicate, what):
  deadline = time.monotonic() + 30
  while not predicate():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.1)


def _remote_commands(launch, script, *extra):
  """(setup, start, attach, stop): the commands the script would run on the machine."""
  if script == "tpu":
    flags = TPU_FLAGS + list(extra)
    _, cmds, _ = launch("tpu", "--dry-run", "setup", "run", *flags)
    _, stop, _ = launch("tpu", "--dry-run", "stop", *flags)
    return [_remote(c) for c in [*cmds[-3:], *stop]]
  flags = ["--host", "me@box", "--workdir", "runs/g", *extra]
  _, cmds, _ = launch("gpu", "--dry-run", *flags)
  _, stop, _ = launch("gpu", "--dry-run", "--stop", *flags)
  return [c[2] for c in _find(cmds, "ssh", "me@box")] + [stop[0][2]]


@pytest.mark.parametrize("script", ["tpu", "gpu"])
@pytest.mark.slow
def test_remote_run_detached_attach_stop(launch, remote_home, script):
  """The run outlives the ssh command that started it, in a session of its own, logging to
  ~/zhang-run/train.log; a second start and setup leave it alone; attach follows it until it
  ends; stop's SIGTERM reaches the training process, and attach exits with its status."""
  home, sh = remote_home
  setup, start, attach, stop = _remote_commands(launch, script)
  run_dir = home / "zhang-run"
  done = sh(start)
  assert done.returncode == 0 and "started" in done.stdout, done.stdout
  pid = int((run_dir / "train.pid").read_text())
  log = run_dir / "train.log"
  _wait_for(lambda: "train: -m zhang train" in log.read_text(), "the run's first output")
  assert os.getsid(pid) == pid  # setsid: not in the ssh session
  again = sh(start)
  assert again.returncode == 0 and "not starting another" in again.stdout
  assert sh(setup).stdout.count("setup skipped") == 1  # the code is not replaced under it
  follow = sh(attach, background=True)
  time.sleep(0.5)
  assert follow.poll() is None  # following while the run goes on
  stopped = sh(stop)
  assert stopped.returncode == 0 and "stopped" in stopped.stdout
  out, _ = follow.communicate(timeout=60)
  assert follow.returncode == 0 and "got SIGTERM" in out and "exit status 0" in out, out
  assert log.read_text().count("train:") == 1  # started once
  if script == "gpu":
    assert "mem: 0.9 old: unset" in log.read_text()
  # Ended: start runs it again (it resumes from the checkpoint); stop finds nothing.
  assert "no run going" in sh(stop).stdout
  assert "started" in sh(start).stdout
  _wait_for(lambda: log.read_text().count("train:") == 2, "the second run")
  sh(stop)


@pytest.mark.parametrize("script", ["tpu", "gpu"])
def test_remote_run_exit_status_and_shutdown_signal(launch, remote_home, script):
  """attach exits with a failed run's status; a SIGTERM sent to the training process alone
  (as a shutdown does to every process) ends it cleanly, and the wrapper still records it."""
  home, sh = remote_home
  _, start, attach, _ = _remote_commands(launch, script, "--set", "fail")
  sh(start)
  rc = home / "zhang-run" / "train.rc"
  _wait_for(rc.exists, "the failed run's exit status")
  done = sh(attach)
  assert done.returncode == 3 and "exit status 3" in done.stdout
  _, start, attach, _ = _remote_commands(launch, script)
  sh(start)
  log = home / "zhang-run" / "train.log"
  _wait_for(lambda: log.read_text().count("train:") == 2, "the run")
  assert not rc.exists()
  wrapper = int((home / "zhang-run" / "train.pid").read_text())
  (python,) = subprocess.run(["ps", "-o", "pid=", "--ppid", str(wrapper)], capture_output=True,
                             text=True).stdout.split()
  os.kill(int(python), signal.SIGTERM)
  _wait_for(rc.exists, "the exit status")
  assert rc.read_text().strip() == "0" and "got SIGTERM" in log.read_text()
  assert sh(attach).returncode == 0


def test_tpu_setup_installs_gcs_extra(launch, tmp_path):
  """The setup command, run by sh, passes pip ~/zhang[gcs] as one word with ~ expanded."""
  rc, cmds, err = launch("tpu", "--dry-run", "setup", *TPU_FLAGS)
  assert rc == 0, err
  home = tmp_path / "home"
  venv_bin = home / "zhang-venv" / "bin"
  venv_bin.mkdir(parents=True)
  calls = tmp_path / "pip-calls"
  (venv_bin / "pip").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{calls}'\n")
  (venv_bin / "pip").chmod(0o755)
  tools = tmp_path / "tools"  # tar: unpacks nothing
  tools.mkdir()
  (tools / "tar").write_text("#!/bin/sh\nexit 0\n")
  (tools / "tar").chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH=f"{tools}:{os.environ['PATH']}")
  done = subprocess.run(["sh", "-c", _remote(cmds[-1])], env=env, capture_output=True,
                        text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert calls.read_text().splitlines()[-1] == f"install -q -U -e {home}/zhang[gcs] jax[tpu]"


@pytest.mark.parametrize("args", [
    [],                                                            # no --name
    ["--name", "t", "--workdir", "gs://b/w"],                      # no --zone
    ["--name", "t", "--zone", "z"],                                # run without a workdir
    ["--name", "t", "--zone", "z", "--workdir", "runs/fig1"],      # not gs://
    ["--name", "t", "--zone", "z", "--workdir", "gs://bucket"],    # no path in the bucket
    ["--name", "T_1", "--zone", "z", "--workdir", "gs://b/w"],     # not a TPU name
    ["--name", "t", "--zone", "z", "--workdir", "gs://b/w", "--spot", "--preemptible"],
    ["--name", "t", "--zone", "z", "--workdir", "gs://b/w", "--queued", "--preemptible"],
    ["--name", "t", "--zone", "z", "--workdir", "gs://b/w", "--preemptible"],  # not queued
    ["--name", "t", "--zone", "z", "--workdir", "gs://b/w", "--accelerator-type", "x9-8"],
    ["--name", "t", "--zone", "z", "--workdir", "gs://b/w", "--bogus"],
    ["--name", "t", "--zone", "z", "--workdir", "gs://b/w", "launch"],
    ["--name"],
])
def test_tpu_bad_input(launch, args):
  rc, cmds, err = launch("tpu", "--dry-run", *args)
  assert (rc, cmds) == (2, [])
  assert len(err.splitlines()) == 1 and err.startswith("tpu.sh: error: ")


@pytest.mark.parametrize("script", ["tpu", "gpu", "local"])
def test_help(launch, script):
  rc, out, err = launch(script, "-h")
  assert rc == 0 and err == "" and out.startswith(f"Usage: launch/{script}.sh")
  assert "--dry-run" in out


def test_local_defaults(launch, tmp_path):
  rc, cmds, err = launch("local", "--dry-run", "--venv", str(tmp_path / "venv"))
  assert rc == 0, err
  py = str(tmp_path / "venv" / "bin" / "python")
  assert cmds == [
      ["cd", str(REPO)],
      ["python3", "-m", "venv", str(tmp_path / "venv")],
      [str(tmp_path / "venv" / "bin" / "pip"), "install", "-q", "-e", "."],
      [py, "-m", "zhang", "train", "--config", "configs/digits.py", "--workdir", "runs/digits"],
  ]


def test_local_options(launch, tmp_path):
  rc, cmds, err = launch("local", "--dry-run", "--venv", str(tmp_path / "v"), "--config",
                         "configs/fig1.py:quick", "--workdir=runs/q", "--set", "seed=3",
                         "--", "--restart")
  assert rc == 0, err
  assert cmds[-1][1:] == ["-m", "zhang", "train", "--config", "configs/fig1.py:quick",
                          "--workdir", "runs/q", "--set", "seed=3", "--restart"]


def test_local_gcs_extra(launch, tmp_path):
  rc, cmds, err = launch("local", "--dry-run", "--venv", str(tmp_path / "v"), "--workdir",
                         "gs://b/runs/d")
  assert rc == 0, err
  assert cmds[2] == [str(tmp_path / "v" / "bin" / "pip"), "install", "-q", "-e", ".[gcs]"]


def test_gpu_local(launch, tmp_path):
  rc, cmds, err = launch("gpu", "--dry-run", "--venv", str(tmp_path / "v"), "--gpus", "0",
                         "--data-dir", "/data/tfds")
  assert rc == 0, err
  (install,) = [c for c in cmds if "install" in c]
  assert install[-3:] == ["-e", ".", "jax[cuda12]"]
  train = cmds[-1]
  assert train[:3] == ["env", "-u", "XLA_PYTHON_CLIENT_MEM_FRACTION"]  # jaxlib refuses both
  assert {"XLA_CLIENT_MEM_FRACTION=0.9", "CUDA_VISIBLE_DEVICES=0",
          "TFDS_DATA_DIR=/data/tfds"} <= set(train)
  assert train[-7:] == ["-m", "zhang", "train", "--config", "configs/fig1.py", "--workdir",
                        "runs/fig1"]


def test_gpu_gcs_extra(launch, tmp_path):
  """A gs:// workdir or data dir installs the gcs extra, here and on a host."""
  rc, cmds, err = launch("gpu", "--dry-run", "--venv", str(tmp_path / "v"), "--workdir",
                         "gs://b/runs/g")
  assert rc == 0, err
  (install,) = [c for c in cmds if "install" in c]
  assert install[-3:] == ["-e", ".[gcs]", "jax[cuda12]"]
  rc, cmds, err = launch("gpu", "--dry-run", "--host", "me@box", "--data-dir", "gs://b/tfds")
  assert rc == 0, err
  setup = _find(cmds, "ssh", "me@box")[0][2]
  assert "install -q -U -e ~/'zhang[gcs]' 'jax[cuda12]'" in setup
  rc, cmds, err = launch("gpu", "--dry-run", "--host", "me@box")
  assert "zhang[gcs]" not in _find(cmds, "ssh", "me@box")[0][2]


def test_gpu_preinstalled_jax(launch, tmp_path):
  rc, cmds, err = launch("gpu", "--dry-run", "--venv", str(tmp_path / "v"), "--jax", "none")
  assert rc == 0, err
  assert "--system-site-packages" in cmds[1]
  (install,) = [c for c in cmds if "install" in c]
  assert not [w for w in install if w.startswith("jax")]


def test_gpu_over_ssh(launch):
  rc, cmds, err = launch("gpu", "--dry-run", "--host", "me@box", "--workdir", "runs/g",
                         "--results", "got")
  assert rc == 0, err
  assert _find(cmds, "scp", "-q")[0][-1] == "me@box:zhang.tar.gz"
  setup, train, attach = _find(cmds, "ssh", "me@box")
  assert "jax[cuda12]" in setup[2] and _syntax_ok(setup[2])
  assert "! -name runs" in setup[2]  # the workdir under ~/zhang survives a new setup
  assert "XLA_CLIENT_MEM_FRACTION=0.9" in train[2] and _syntax_ok(train[2])
  assert "-m zhang train --config configs/fig1.py --workdir runs/g" in train[2]
  assert "setsid nohup" in train[2] and "tail" in attach[2] and _syntax_ok(attach[2])
  assert cmds[-1] == ["scp", "-q", "me@box:zhang/runs/g/config.json",
                      "me@box:zhang/runs/g/metrics.jsonl", "me@box:zhang/runs/g/summary.json",
                      "got/"]


def test_gpu_attach_and_stop(launch):
  rc, cmds, err = launch("gpu", "--dry-run", "--host", "me@box", "--workdir", "runs/g", "--attach")
  assert rc == 0, err
  assert len(_find(cmds, "ssh")) == 1 and "tail" in cmds[0][2]  # no setup, no start
  assert cmds[-1][0] == "scp"  # then fetch
  rc, cmds, err = launch("gpu", "--dry-run", "--host", "me@box", "--stop")
  assert rc == 0, err
  assert len(cmds) == 1 and "kill -TERM" in cmds[0][2]


@pytest.mark.parametrize("script,args", [
    ("gpu", ["--host"]),
    ("gpu", ["--mem-fraction", "1.5"]),
    ("gpu", ["--gpus", "first"]),
    ("gpu", ["--bogus"]),
    ("gpu", ["--attach"]),                                # needs --host
    ("gpu", ["--host", "h", "--attach", "--stop"]),
    ("local", ["--bogus"]),
    ("local", ["extra"]),
    ("local", ["--config"]),
])
def test_bad_input(launch, script, args):
  rc, cmds, err = launch(script, "--dry-run", *args)
  assert (rc, cmds) == (2, [])
  assert len(err.splitlines()) == 1 and err.startswith(f"{script}.sh: error: ")


def test_tpu_data_dir_takes_either_spelling(launch):
  for flag in ("--data-dir", "--data_dir"):
    rc, cmds, err = launch("tpu", "--dry-run", "all", *TPU_FLAGS, "--config",
                           "configs/table2.py", flag, "gs://data/tfds/")
    assert rc == 0, err
    (train,) = [c for c in cmds if "--distributed" in " ".join(c)]
    assert "TFDS_DATA_DIR=gs://data/tfds" in _remote(train), flag
