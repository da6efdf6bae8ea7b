"""`zhang bound` on a real (tiny) two-class run: each replica's row against the run's grid
and recorded evaluation, its bound against the certificate recomputed from the row's own
numbers, bad input as one line, and `zhang report`'s section of bound.json."""

import hashlib
import json
import math
import os

import matplotlib.image
import numpy as np
import pytest

from zhang import cli
from zhang.analysis import bound as bound_report
from zhang.errors import UsageError
from zhang.experiment import train
from zhang.probes.bounds import kl, posterior, probe

pytestmark = pytest.mark.slow  # a trained run (about 15 s on 2 cores) for the module

SETTINGS = posterior.Settings(steps=200, draws=50, trace_every=50)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fitting_config):
  path = tmp_path_factory.mktemp("bound") / "run"
  train.run(fitting_config(binary=True, max_steps=300), str(path))
  return path


@pytest.fixture(scope="module")
def bounded(run_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("bound_out")
  result = probe.bound(str(run_dir), str(out), None, SETTINGS, log=lambda msg: None)
  return out, result


def _files(path) -> dict:
  return {os.path.relpath(os.path.join(d, f), path):
          hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
          for d, _, names in os.walk(path) for f in names if f != "lock"}


def test_each_row_is_its_replica_as_it_fitted(run_dir, bounded):
  """Rows follow the grid; each replica is bounded at its fit step beside the evaluation
  the run recorded there; the file is the result."""
  out, result = bounded
  assert json.loads((out / "bound.json").read_text()) == json.loads(json.dumps(result))
  summary = json.loads((run_dir / "summary.json").read_text())
  recorded = {}
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    recorded[(row["replica"], row["step"])] = row
  assert [e["replica"] for e in result["replicas"]] == [0, 1, 2, 3]
  for entry, want in zip(result["replicas"], summary["replicas"]):
    assert (entry["corruption"], entry["learning_rate"]) == (want["corruption"],
                                                             want["learning_rate"])
    assert entry["step"] == want["fit_step"]
    row = recorded[(entry["replica"], entry["step"])]
    for k in ("train_acc", "test_acc"):
      assert entry[k] == pytest.approx(row[k], rel=1e-6, abs=1e-7)
    assert entry["test_error"] == pytest.approx(1 - row["test_acc"], abs=1e-7)
    assert entry["train_acc"] == 1.0 and not entry["diverged"]
    trace = entry["objective_trace"]
    assert len(trace) == SETTINGS.steps // SETTINGS.trace_every and all(map(math.isfinite,
                                                                             trace))


def test_settings_record_every_field_and_the_run(run_dir, bounded):
  _, result = bounded
  s = result["settings"]
  for name, value in vars(SETTINGS).items():
    assert s[name] == value
  assert s["confidence"] == pytest.approx(1 - 0.025 - 0.01, abs=1e-12)
  assert s["examples"] == 128 and s["step"] == "fit" and s["seed"] == 0
  assert s["run"] == str(run_dir) and s["runs"][0]["config_hash"] == s["config_hash"]


def test_bound_is_the_certificate_of_the_rows_own_numbers(bounded):
  """bound = kl^-1(kl^-1(mc_error, log(2 / mc_delta) / draws), (KL + log J + log(2 sqrt(n)
  / delta)) / n) with n = every training example (128), by Brent's method in float64."""
  from scipy import optimize

  def inverse(q, c):
    f = lambda p: ((q * math.log(q / p) if q > 0 else 0.0)
                   + (1 - q) * math.log((1 - q) / (1 - p)) - c)
    return 1.0 if f(1 - 1e-15) < 0 else optimize.brentq(f, q, 1 - 1e-15, xtol=1e-15)

  _, result = bounded
  s = result["settings"]
  for e in result["replicas"]:
    j = round(100 * (math.log(0.1) - math.log(e["lambda"])))
    assert e["prior_index"] == j and e["lambda"] == pytest.approx(0.1 * math.exp(-j / 100),
                                                                  rel=1e-12)
    train_bound = inverse(e["mc_error"], math.log(2 / 0.01) / SETTINGS.draws)
    c = (e["kl"] + math.log(SETTINGS.prior_count) + math.log(2 * math.sqrt(128) / 0.025)) / 128
    assert e["mc_error_bound"] == pytest.approx(train_bound, abs=1e-9)
    assert e["bound"] == pytest.approx(inverse(train_bound, c), abs=1e-9)
    _, same = kl.certified(e["mc_error"], s["draws"], e["kl"], s["examples"], s["delta"],
                           s["mc_delta"], kl.union_cost(j, s["prior_count"], s["union"]))
    assert e["bound"] == float(same)
    assert e["mc_error"] <= e["mc_error_bound"] <= e["bound"] <= 1.0
    assert e["kl"] > 0


def test_the_command_prints_the_table_and_report_shows_it(run_dir, bounded, tmp_path,
                                                          capsys):
  """`zhang bound` writes bound.json and prints a row per corruption level; `zhang report`
  adds the section (the table's means of bound.json) and the figure; the run is untouched."""
  before = _files(run_dir)
  out = tmp_path / "out"
  assert cli.main(["bound", str(run_dir), "--out", str(out), "--steps", "200", "--draws",
                   "50"]) == 0
  printed = capsys.readouterr().out
  assert "bound.json" in printed and "true labels" in printed and "random labels" in printed
  result = json.loads((out / "bound.json").read_text())
  assert result["settings"]["steps"] == 200 and result["settings"]["draws"] == 50
  assert cli.main(["report", str(run_dir), "--out", str(out)]) == 0
  text = (out / "report.md").read_text()
  assert "## PAC-Bayes bounds" in text and f"({bound_report.FIGURE})" in text
  for p, name in ((0.0, "true labels"), (1.0, "random labels")):
    rows = [e for e in result["replicas"] if e["corruption"] == p]
    bound = np.mean([e["bound"] for e in rows])
    error = np.mean([e["test_error"] for e in rows])
    certified = sum(e["bound"] < 0.5 for e in rows)
    assert (f"| mlp_1x64 | {name} | 2 | {error:.3f} | {bound:.3f} | {certified} of 2 |"
            in text)
  assert matplotlib.image.imread(out / bound_report.FIGURE)[..., :3].std() > 0.05
  assert _files(run_dir) == before


def _error(capsys, *args, ran: bool = False) -> str:
  """The one line of a refused command (``ran``: after the program's progress line)."""
  assert cli.main(["bound", *map(str, args)]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  if ran:
    assert "replicas at step fit in" in lines[0]
    lines = lines[1:]
  assert len(lines) == 1, lines
  return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(run_dir, bounded, tmp_path, capsys):
  before = _files(run_dir)
  line = _error(capsys, run_dir, "--out", tmp_path / "a", "--delta", "1.5")
  assert "--delta must be a number in (0, 1)" in line
  with pytest.raises(UsageError, match="prior variance grid is empty"):
    probe.bound(str(run_dir), str(tmp_path / "a"), None, posterior.Settings(prior_count=0))
  line = _error(capsys, run_dir, "--out", tmp_path / "a", "--step", "70")
  assert "no checkpoint of --step 70" in line
  line = _error(capsys, run_dir, "--out", run_dir / "inside")
  assert "inside the run's directory" in line
  # Another run's bound.json in OUT: refused, the file kept.
  other = tmp_path / "other"
  other.mkdir()
  _, result = bounded
  theirs = dict(result, settings=dict(result["settings"], run="runs/x", runs=[
      dict(result["settings"]["runs"][0], config_hash="0123456789abcdef")]))
  (other / "bound.json").write_text(json.dumps(theirs))
  written = (other / "bound.json").read_bytes()
  line = _error(capsys, run_dir, "--out", other)
  assert "holds the bounds of another run (runs/x)" in line
  assert (other / "bound.json").read_bytes() == written
  # A diverging optimization: after the program, the learning rate named, nothing written.
  line = _error(capsys, run_dir, "--out", tmp_path / "a", "--learning_rate", "1e4",
                "--variance_learning_rate", "1e4", "--steps", "20", "--draws", "2", ran=True)
  assert "diverged" in line and "lower --learning_rate (now 10000, e.g. 1000)" in line
  assert "--variance_learning_rate (now 10000, e.g. 1000)" in line
  assert not (tmp_path / "a").exists() and _files(run_dir) == before


def test_a_ten_class_run_is_refused(tmp_path, capsys, fitting_config):
  train.run(fitting_config(max_steps=10), str(tmp_path / "run"))
  capsys.readouterr()  # the training's progress
  line = _error(capsys, tmp_path / "run", "--out", tmp_path / "out")
  assert "with 10 classes" in line and "--config.binary=true" in line
  assert not (tmp_path / "out").exists()
