"""The workdir as a resource: writable before anything runs, one run at a time, quiet
libraries, and what a run prints while it trains."""

import io
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import warnings

import pytest

from zhang.errors import UsageError
from zhang.experiment import train
from zhang.rundir import progress as progress_lib
from zhang.rundir import workdir as workdir_lib
from zhang.rundir.metrics import workdir_path

ROOT = pathlib.Path(__file__).parent.parent


@pytest.mark.slow
def test_a_held_workdir_refuses_a_second_run_and_names_the_holder(tiny_config, tmp_path):
  with workdir_lib.Lock(workdir_path(tmp_path)):
    holder = (tmp_path / "lock").read_text()
    assert f"process {os.getpid()}" in holder
    with pytest.raises(UsageError, match=f"is in use by zhang train, process {os.getpid()} "
                       f"on .*: wait for that run"):
      train.run(tiny_config, tmp_path, progress=False)
    assert not (tmp_path / "config.json").exists()  # refused before anything was written
  # Released: the same workdir trains.
  assert train.run(tiny_config, tmp_path, progress=False)["status"] == "complete"


def test_a_stale_lock_of_a_killed_run_blocks_nothing(tmp_path):
  """The lock is the kernel's flock, dropped when its process dies: a killed run's lock
  file, still naming it, does not block a resume."""
  script = ("import sys, os; from zhang.rundir import workdir as w; from zhang.rundir.metrics "
            "import workdir_path; w.Lock(workdir_path(sys.argv[1])).acquire(); "
            "os.kill(os.getpid(), 9)")
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT)
  assert proc.returncode == -9
  assert "zhang train, process" in (tmp_path / "lock").read_text()
  lock = workdir_lib.Lock(workdir_path(tmp_path))
  lock.acquire()
  assert f"process {os.getpid()}" in (tmp_path / "lock").read_text()
  lock.release()


def _without_dac_override(script: str, *args):
  """Runs a Python snippet as root without the capability to ignore file permissions, as
  a user who does not own the files would."""
  if os.geteuid() != 0 or not shutil.which("setpriv"):
    pytest.skip("needs root and setpriv to drop the permission override")
  return subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--",
                         sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True,
                        text=True)


@pytest.mark.parametrize("sub", ["", "new/run"])
@pytest.mark.slow
def test_a_workdir_that_cannot_be_written_is_one_line_before_any_data(tmp_path, sub):
  parent = tmp_path / "read_only"
  parent.mkdir()
  parent.chmod(0o555)
  workdir = parent / sub if sub else parent
  script = ("import sys\nfrom zhang.experiment import config, train\n"
            "from zhang.errors import UsageError\n"
            "c = config.base_config(); c.dataset = 'fashion_mnist'; c.data_dir = '/no/such/dir'\n"
            "try:\n  train.prepare(c, sys.argv[1])\n"
            "except UsageError as e:\n  print(e)\n")
  proc = _without_dac_override(script, str(workdir))
  assert proc.returncode == 0, proc.stderr
  # The workdir is checked before the dataset (not in that data_dir) is looked for.
  what = (f"cannot write in workdir {workdir}" if not sub else
          f"cannot create workdir {workdir}: {parent} cannot be written")
  assert proc.stdout == f"{what} (permission denied): choose a `workdir` you can write to, " \
                        "or fix its permissions\n"
  assert os.listdir(parent) == []


SMALL = ["--config", "configs/digits.py", "--config.n_train=256", "--config.n_test=128",
         "--config.batch_size=32", "--config.max_steps=20", "--config.eval_every=20",
         "--config.grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0])]", "--no_progress"]


@pytest.mark.parametrize("written", [None, 0, 2])
@pytest.mark.slow
def test_a_run_of_another_format_is_refused_in_one_line_untouched(tmp_path, capsys, written):
  """A workdir whose config.json is of another run-file format (none: written before files
  carried one) is refused with exit 2, naming the version and what to do, its files as they
  were; ``--restart`` trains it anew in this format."""
  from zhang import cli
  from zhang.rundir import format as format_lib
  workdir = tmp_path / "run"
  assert cli.main(["train", *SMALL, "--workdir", str(workdir)]) == 0
  config = json.loads((workdir / "config.json").read_text())
  assert config["format"] == format_lib.FORMAT == 1
  del config["format"]
  if written is not None:
    config["format"] = written
  (workdir / "config.json").write_text(json.dumps(config))
  before = _files(workdir)
  capsys.readouterr()
  code = cli.main(["train", *SMALL, "--workdir", str(workdir)])
  err = capsys.readouterr().err
  assert code == 2 and len(err.splitlines()) == 1, err
  found = {None: "0 (no format field", 0: "0 (no format field", 2: "2 (written by a newer"}
  assert (f"zhang train: error: {workdir / 'config.json'} is in run-file format "
          f"{found[written]}") in err
  assert ("this zhang reads format 1: rerun `zhang train --restart` in that workdir to train "
          "it again, or read it with the version of zhang that wrote it") in err
  assert _files(workdir) == before
  assert cli.main(["train", *SMALL, "--workdir", str(workdir), "--restart"]) == 0
  assert json.loads((workdir / "config.json").read_text())["format"] == 1
  assert json.loads((workdir / "summary.json").read_text())["format"] == 1


def _files(folder: pathlib.Path) -> dict:
  return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_library_noise_goes_to_the_workdir_log(tmp_path, capsys):
  with workdir_lib.library_log(tmp_path) as path:
    logging.getLogger("absl").error("a background save failed:\nTraceback ...")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    thread = threading.Thread(target=lambda: 1 / 0, name="async_save")
    thread.start()
    thread.join()
  err = capsys.readouterr().err
  assert err == ""
  text = pathlib.Path(path).read_text()
  assert path == str(tmp_path / "library.log")
  assert "a background save failed" in text and "Task exception" in text
  assert "uncaught exception in thread async_save" in text and "ZeroDivisionError" in text
  # Afterwards the loggers are as they were.
  assert logging.getLogger("absl").propagate


def test_library_warnings_go_to_the_log_and_ours_to_the_terminal(tmp_path, capsys):
  library = "/venv/lib/python3.11/site-packages/orbax/checkpoint/_src/asyncio_utils.py"
  with warnings.catch_warnings():
    warnings.simplefilter("always")
    # As outside pytest, which records warnings: they are printed to stderr.
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
    # Loading a checkpoint raises absl's level to ERROR for the rest of the process.
    absl, level = logging.getLogger("absl"), logging.getLogger("absl").level
    absl.setLevel(logging.ERROR)
    try:
      with workdir_lib.library_log(tmp_path) as path:
        warnings.warn_explicit("coroutine 'Store._get_array_metadatas' was never awaited",
                               RuntimeWarning, library, 129)
        warnings.warn_explicit("a config's own warning", UserWarning,
                               str(tmp_path / "my_config.py"), 3)
        warnings.warn_explicit("zhang's own warning", UserWarning, workdir_lib.__file__, 1)
    finally:
      absl.setLevel(level)
    warnings.warn_explicit("after the run", RuntimeWarning, library, 130)
  err = capsys.readouterr().err
  text = pathlib.Path(path).read_text()
  assert "was never awaited" in text and "was never awaited" not in err
  assert "a config's own warning" in err and "zhang's own warning" in err
  assert "after the run" in err and "after the run" not in text


class _Tracker:
  def __init__(self, fitted, acc):
    self.fitted, self.acc = fitted, acc

  def num_fitted(self):
    return self.fitted

  def min_train_acc(self):
    return self.acc


def test_progress_off_a_terminal_is_a_plain_line_every_few_evaluations(tiny_config):
  tiny_config.max_steps, tiny_config.eval_every = 4000, 100  # 40 evaluations: every 2nd
  out = io.StringIO()
  show = progress_lib.Progress(tiny_config, 7, stream=out)
  for i, step in enumerate(range(0, 1100, 100)):
    show.update(step, _Tracker(min(i, 7), 0.5 + i / 100), final=step == 1000)
  show.close()
  lines = out.getvalue().splitlines()
  steps = [int(line.split("step ")[1].split("/")[0].replace(",", "")) for line in lines]
  assert steps == [0, 200, 400, 600, 800, 1000]  # and the last one, the run's end
  assert lines[-1].startswith("zhang: 7/7 replicas fitted, step 1,000/4,000, lowest train "
                              "accuracy 0.6000")


def test_progress_on_a_terminal_counts_replicas_fitted(tiny_config):
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  out = Terminal()
  show = progress_lib.Progress(tiny_config, 7, stream=out)
  show.update(20, _Tracker(3, 0.9))
  show.update(40, _Tracker(7, 1.0), final=True)
  show.close()
  last = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
  assert last.startswith("mlp_1x512/digits step 40/60, lowest train accuracy 1.0000 |")
  assert last.endswith("| 7/7 replicas fitted [00:00]")
