"""The launch scripts' --dry-run output: what they would run, with nothing actually run.

Every script runs with a PATH whose gcloud, gsutil, git, ssh, scp, tar, curl and pip are stubs
that record the call and fail, so a test fails if a dry run calls any of them.
"""

import os
import pathlib
import shlex
import subprocess

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
  (create,) = _find(cmds, *tpu, "create")
  assert create[5] == "zhang-t"
  assert {"--zone=us-west4-a", "--accelerator-type=v5litepod-16", "--spot",
          "--version=v2-alpha-tpuv5-lite"} <= set(create)
  (archive,) = _find(cmds, "git")
  assert "archive" in archive
  tarball = archive[archive.index("-o") + 1]
  (scp,) = _find(cmds, *tpu, "scp")
  assert scp[5] == tarball and "--worker=all" in scp
  setup, train = _find(cmds, *tpu, "ssh")
  assert "--worker=all" in setup and "--worker=all" in train
  assert "pip install" in _remote(setup) and "jax[tpu]" in _remote(setup)
  remote = _remote(train)
  # One command, the same for every worker, with --distributed, a gs:// workdir and the data.
  assert "-m zhang train --config configs/fig1.py --workdir gs://my-bucket/runs/fig1" in remote
  assert "--distributed" in remote
  assert "TFDS_DATA_DIR=gs://my-bucket/tfds" in remote
  assert "--set max_steps=100" in remote
  assert _syntax_ok(_remote(setup)) and _syntax_ok(remote)
  (fetch,) = _find(cmds, "gcloud", "storage", "rsync")
  assert "gs://my-bucket/runs/fig1" in fetch and fetch[-1].endswith("runs/fig1")
  (delete,) = _find(cmds, *tpu, "delete")
  assert delete[5] == "zhang-t" and "--zone=us-west4-a" in delete
  # The phases in order.
  order = [cmds.index(c) for c in (create, archive, scp, setup, train, fetch, delete)]
  assert order == sorted(order)


def test_tpu_remote_command_shell_words(launch):
  """A --set value with quotes and spaces reaches zhang train as one word."""
  value = "grid=[dict(kinds=['labels'], corruptions=[0.5], seeds=[0])]"
  rc, cmds, err = launch("tpu", "--dry-run", "run", *TPU_FLAGS, "--set", value)
  assert rc == 0, err
  (train,) = _find(cmds, "gcloud", "compute", "tpus", "tpu-vm", "ssh")
  remote = _remote(train)
  words = shlex.split(remote.split("; env ", 1)[1].split(" > ", 1)[0])
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
  assert not _find(cmds, "gcloud", "compute", "tpus", "tpu-vm", "create")
  rc, cmds, err = launch("tpu", "--dry-run", "delete", "--queued", "--name", "x", "--zone", "z")
  assert rc == 0, err
  assert cmds == [["gcloud", "compute", "tpus", "queued-resources", "delete", "x", "--zone=z",
                   "--force", "--quiet"]]
  rc, cmds, err = launch("tpu", "--dry-run", "stop", "--name", "x", "--zone", "z")
  assert rc == 0 and "kill -TERM" in _remote(cmds[0]) and "--worker=all" in cmds[0]


@pytest.mark.parametrize("args", [
    [],                                                            # no --name
    ["--name", "t", "--workdir", "gs://b/w"],                      # no --zone
    ["--name", "t", "--zone", "z"],                                # run without a workdir
    ["--name", "t", "--zone", "z", "--workdir", "runs/fig1"],      # not gs://
    ["--name", "t", "--zone", "z", "--workdir", "gs://bucket"],    # no path in the bucket
    ["--name", "T_1", "--zone", "z", "--workdir", "gs://b/w"],     # not a TPU name
    ["--name", "t", "--zone", "z", "--workdir", "gs://b/w", "--spot", "--preemptible"],
    ["--name", "t", "--zone", "z", "--workdir", "gs://b/w", "--queued", "--preemptible"],
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


def test_gpu_local(launch, tmp_path):
  rc, cmds, err = launch("gpu", "--dry-run", "--venv", str(tmp_path / "v"), "--gpus", "0",
                         "--data-dir", "/data/tfds")
  assert rc == 0, err
  (install,) = [c for c in cmds if "install" in c]
  assert install[-3:] == ["-e", ".", "jax[cuda12]"]
  train = cmds[-1]
  assert train[0] == "env"
  assert {"XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "CUDA_VISIBLE_DEVICES=0",
          "TFDS_DATA_DIR=/data/tfds"} <= set(train)
  assert train[-7:] == ["-m", "zhang", "train", "--config", "configs/fig1.py", "--workdir",
                        "runs/fig1"]


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
  setup, train = _find(cmds, "ssh", "me@box")
  assert "jax[cuda12]" in setup[2] and _syntax_ok(setup[2])
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in train[2] and _syntax_ok(train[2])
  assert "-m zhang train --config configs/fig1.py --workdir runs/g" in train[2]
  assert cmds[-1] == ["scp", "-q", "me@box:zhang/runs/g/config.json",
                      "me@box:zhang/runs/g/metrics.jsonl", "me@box:zhang/runs/g/summary.json",
                      "got/"]


@pytest.mark.parametrize("script,args", [
    ("gpu", ["--host"]),
    ("gpu", ["--mem-fraction", "1.5"]),
    ("gpu", ["--gpus", "first"]),
    ("gpu", ["--bogus"]),
    ("local", ["--bogus"]),
    ("local", ["extra"]),
    ("local", ["--config"]),
])
def test_bad_input(launch, script, args):
  rc, cmds, err = launch(script, "--dry-run", *args)
  assert (rc, cmds) == (2, [])
  assert len(err.splitlines()) == 1 and err.startswith(f"{script}.sh: error: ")
