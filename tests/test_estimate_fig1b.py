"""benchmarks/estimate_fig1b.py: the Figure 1b wall-time arithmetic, checked independently.

The throughput rows are genuine benchmarks/throughput.py output (mlp_1x512, R = 1, 2, run
once here), copied with other models, replica counts and step times where a case needs them;
the summary.json files are written by the trainer's own ``metrics.FitTracker``.
"""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from zhang import config as config_lib
from zhang import metrics as metrics_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "estimate_fig1b.py"
_spec = importlib.util.spec_from_file_location("estimate_fig1b", SCRIPT)
est = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(est)

FIT = "inception_small=16.6k,alexnet_small=16000,mlp_1x512=16000"


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
  """benchmarks/throughput.py's own rows: mlp_1x512 at R = 1, 2, batch 128 (about 10 s)."""
  path = tmp_path_factory.mktemp("rows") / "throughput_mlp_1x512.jsonl"
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--models", "mlp_1x512",
       "--replicas", "1,2", "--steps", "1", "--repeats", "1", "--n_train", "256",
       "--batch_size", "128", "--matmul_n", "128", "--quick"],
      capture_output=True, text=True, timeout=180, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  path.write_text(proc.stdout)
  rows = read(path)
  assert [r["replicas"] for r in rows] == [1, 2] and rows[0]["batch_size"] == 128
  return path


def read(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def variant(base, **changes):
  """A copy of a genuine row; ``step_ms`` also sets the median, 1.1x slower."""
  row = dict(base, **changes)
  if "step_ms" in changes:
    row["step_ms_median"] = round(1.1 * changes["step_ms"], 3)
  return row


def conv_file(tmp_path, base):
  """inception_small: vmap/jax at R = 1, 8, 64, 128 and vmap/explicit at 64 (slower): the
  R = 64 jax row is the one to use. alexnet_small: jax only at R = 1, 2 (fast but too few
  replicas), explicit at 1, 2, 64: the measured explicit R = 64 row wins."""
  rows = []
  for r, ms in ((1, 30.0), (8, 60.0), (64, 400.0), (128, 700.0)):
    rows.append(variant(base, model="inception_small", replicas=r, conv_gradient="jax",
                        step_ms=ms, compile_s=20.0 + r / 100))
  rows.append(variant(base, model="inception_small", replicas=64, conv_gradient="explicit",
                      step_ms=900.0, compile_s=11.0))
  for r, ms in ((1, 2.0), (2, 3.0)):
    rows.append(variant(base, model="alexnet_small", replicas=r, conv_gradient="jax",
                        step_ms=ms, compile_s=3.0))
  for r, ms in ((1, 5.0), (2, 8.0), (64, 120.0)):
    rows.append(variant(base, model="alexnet_small", replicas=r, conv_gradient="explicit",
                        step_ms=ms, compile_s=4.0 + r / 64))
  return write(tmp_path / "throughput_conv.jsonl", rows)


def expected_seconds(step_ms, compile_s, fit_steps, eval_every=1000, batch=128,
                     images=60_000, eval_cost=1 / 3):
  """The estimate's arithmetic, written out again."""
  steps = -(-fit_steps // eval_every) * eval_every
  step_s = step_ms / 1000
  evaluations = steps // eval_every + 1
  return 2 * compile_s + steps * step_s + evaluations * images / batch * step_s * eval_cost


def test_cli_total_is_the_sum_of_the_models(tmp_path, mlp_file):
  mlp = read(mlp_file)
  conv = conv_file(tmp_path, mlp[0])
  out_json = tmp_path / "estimate.json"
  proc = subprocess.run([sys.executable, str(SCRIPT), str(mlp_file), str(conv),
                         "--fit_steps", FIT, "--json", str(out_json)],
                        capture_output=True, text=True, timeout=60, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  e = json.loads(out_json.read_text())

  # inception_small: the smallest R >= 33 (64, not 128), jax (faster than explicit),
  # median step time, scaled by 33/64; 16.6k steps -> 17,000 (a multiple of 1,000).
  inc = expected_seconds(1.1 * 400.0 * 33 / 64, 20.64, 16_600)
  # alexnet_small: explicit at R = 64, measured, beats jax extrapolated from R = 2.
  alex = expected_seconds(1.1 * 120.0 * 33 / 64, 5.0, 16_000)
  # mlp_1x512: the genuine R = 2 row, extrapolated to 33.
  mlp2 = mlp[1]
  mlp_s = expected_seconds(mlp2["step_ms_median"] * 33 / 2, mlp2["compile_s"], 16_000)
  by_model = {m["model"]: m for m in e["models"]}
  assert list(by_model) == ["inception_small", "alexnet_small", "mlp_1x512"]
  assert by_model["inception_small"]["seconds"] == pytest.approx(inc, rel=1e-9)
  assert by_model["alexnet_small"]["seconds"] == pytest.approx(alex, rel=1e-9)
  assert by_model["mlp_1x512"]["seconds"] == pytest.approx(mlp_s, rel=1e-9)
  assert e["total_seconds"] == pytest.approx(inc + alex + mlp_s, rel=1e-9)
  assert e["total_hours"] == pytest.approx(e["total_seconds"] / 3600)

  inception = by_model["inception_small"]
  assert inception["steps"] == 17_000 and inception["evaluations"] == 18
  assert not any(m["eval_cost_measured"] for m in e["models"]) and "0.333 assumed" in proc.stdout
  assert (inception["step"]["row_replicas"], inception["step"]["conv_gradient"]) == (64, "jax")
  assert not inception["extrapolated"] and inception["replicas"] == 33
  assert (by_model["alexnet_small"]["step"]["conv_gradient"], by_model["alexnet_small"][
      "step"]["row_replicas"]) == ("explicit", 64)
  assert by_model["mlp_1x512"]["extrapolated"] and by_model["mlp_1x512"]["step"][
      "row_replicas"] == 2
  assert e["extrapolated"] and not e["lower_bound"] and not e["batch_scaled"]
  assert e["device_kind"] == "cpu" and e["under_budget"] == (e["total_seconds"] < 3600)
  assert all(m["fit_assumed"] for m in e["models"])

  text = proc.stdout
  assert f"**{e['total_seconds']:,.0f}**" in text and f"{e['total_hours']:.2f} h" in text
  assert "(extrapolated)" in text and "x 33/64" in text and "x 33/2" in text
  assert "assumptions, not measurements" in text
  assert ("under 1 hour" if e["under_budget"] else "over 1 hour") in text


def summary_file(path, model, fit_at, steps_run, eval_every=1000, device_kind="cpu",
                 step_s=None, eval_s=None):
  """A summary.json of the Figure 1b grid (11 levels x 3 seeds, and the pixel kinds), written
  by the trainer's FitTracker from simulated evaluations. ``fit_at(replica)``: its fit step,
  or None (never fitted). With ``step_s`` and ``eval_s``, every chunk and evaluation is
  timed as taking those seconds per step and per evaluation (the first of each compiling:
  10 s)."""
  c = config_lib.load(f"{REPO / 'configs' / 'fig1.py'}:model={model},levels=11,seeds=3")
  replicas = config_lib.expand_grid(c)
  tracker = metrics_lib.FitTracker(
      replicas, np.zeros(len(replicas)), 1.0, 128, 50_000,
      header=dict(model=model, dataset="cifar10", num_params=1, n_train=50_000, n_test=10_000,
                  num_classes=10, steps_per_epoch=390, batch_size=128, fit_threshold=1.0,
                  config_hash="0", device_kind=device_kind))
  fits = [fit_at(r) for r in replicas]
  for step in range(0, steps_run + 1, eval_every):
    acc = np.array([1.0 if f is not None and step >= f else 0.5 for f in fits])
    if step_s is not None:
      if step:
        tracker.time_call("train", 10.0 if step == eval_every else eval_every * step_s,
                          eval_every)
      tracker.time_call("eval", 10.0 if step == 0 else eval_s)
    tracker.record(step, dict(train_acc=acc, test_acc=acc / 2, train_loss=1 - acc), 0.01)
  metrics_lib.write_json(metrics_lib.workdir_path(path),
                         tracker.summary(steps_run, "complete", 100.0))
  return path


def test_fit_from_summaries_and_the_lower_bound(tmp_path, mlp_file, capsys):
  mlp = read(mlp_file)
  conv = conv_file(tmp_path, mlp[0])
  more = write(tmp_path / "mlp64.jsonl",
               [variant(mlp[1], replicas=64, step_ms=50.0, compile_s=1.5)])
  # inception_small: every labels replica fits, the last at 15,000 (p = 1, seed 2); the
  # pixel kinds fit later and are not part of the Figure 1b grid.
  inc = summary_file(tmp_path / "inception.json", "inception_small",
                     lambda r: 25_000 if r.kind != "labels" else
                     int(round(4000 + 10_000 * r.corruption, -3)) + 1000 * (r.seed == 2),
                     26_000)
  # alexnet_small: random labels, seed 1 never fits in the 30,000 steps run.
  alex = summary_file(tmp_path / "alexnet.json", "alexnet_small",
                      lambda r: None if (r.kind, r.corruption, r.seed) == ("labels", 1.0, 1)
                      else 8000, 30_000)
  rc = est.main([str(mlp_file), str(conv), str(more), "--fit_from", str(inc), str(alex),
                 "--fit_steps", "mlp_1x512=12000", "--json", str(tmp_path / "e.json"),
                 "--budget_hours", "3"])
  text = capsys.readouterr().out
  assert rc == 0
  e = json.loads((tmp_path / "e.json").read_text())
  by_model = {m["model"]: m for m in e["models"]}

  assert by_model["inception_small"]["fit_steps"] == 15_000
  assert not by_model["inception_small"]["lower_bound"]
  assert not by_model["inception_small"]["fit_assumed"]
  assert by_model["alexnet_small"]["fit_steps"] == 30_000
  assert by_model["alexnet_small"]["lower_bound"]
  assert by_model["alexnet_small"]["unfitted"][0]["corruption"] == 1.0
  assert by_model["mlp_1x512"]["fit_assumed"] and by_model["mlp_1x512"]["fit_steps"] == 12_000
  # Every model has a measured row at R >= 33 now: nothing is extrapolated.
  assert not e["extrapolated"] and by_model["mlp_1x512"]["step"]["row_replicas"] == 64
  # About 2.1 h, a lower bound: below the 3-hour budget given, which says nothing either way.
  assert e["lower_bound"] and e["under_budget"] is None
  expected = (expected_seconds(1.1 * 400.0 * 33 / 64, 20.64, 15_000)
              + expected_seconds(1.1 * 120.0 * 33 / 64, 5.0, 30_000)
              + expected_seconds(1.1 * 50.0 * 33 / 64, 1.5, 12_000))
  assert e["total_seconds"] == pytest.approx(expected, rel=1e-9)
  assert f">= {e['total_seconds']:,.0f} s" in text and "not shown to be under" in text
  assert "Not fitted: corruption 1.0, seed 1" in text
  assert "extrapolated from fewer replicas" not in text
  # The jax alexnet_small rows (R <= 2) are listed as the extrapolated alternative.
  assert "Other variants at R = 33: vmap/jax" in text


def test_batch_scaled_rows(tmp_path, mlp_file, capsys):
  rows = [variant(r, batch_size=4) for r in read(mlp_file)]
  rc = est.main([str(write(tmp_path / "b4.jsonl", rows)), "--models", "mlp_1x512",
                 "--fit_steps", "mlp_1x512=1000", "--json", str(tmp_path / "e.json")])
  assert rc == 0 and "x 128/4" in capsys.readouterr().out
  (m,) = json.loads((tmp_path / "e.json").read_text())["models"]
  assert m["batch_scaled"] and m["extrapolated"]
  assert m["step_ms"] == pytest.approx(rows[1]["step_ms_median"] * 33 / 2 * 128 / 4)


def test_missing_model_rows_exit_2(tmp_path, mlp_file, capsys):
  rc = est.main([str(mlp_file), str(tmp_path / "absent.jsonl"), "--fit_steps", FIT])
  err = capsys.readouterr().err
  assert rc == 2
  assert "absent.jsonl: no such file" in err
  (line,) = [l for l in err.splitlines() if "no throughput rows" in l]
  assert "inception_small" in line
  assert "python benchmarks/throughput.py --models inception_small" in line


def test_mixed_device_kinds_exit_2(tmp_path, mlp_file, capsys):
  mlp = read(mlp_file)
  conv = conv_file(tmp_path, dict(mlp[0], device_kind="NVIDIA H200", backend="gpu"))
  rc = est.main([str(mlp_file), str(conv), "--fit_steps", FIT])
  err = capsys.readouterr().err
  assert rc == 2 and "more than one device kind" in err
  assert "NVIDIA H200" in err and "cpu" in err and len(err.strip().splitlines()) == 1


def test_missing_fit_steps_and_bad_values_exit_2(tmp_path, mlp_file, capsys):
  conv = conv_file(tmp_path, read(mlp_file)[0])
  assert est.main([str(mlp_file), str(conv), "--fit_steps", "mlp_1x512=100"]) == 2
  err = capsys.readouterr().err
  assert "no steps-to-fit for inception_small, alexnet_small" in err
  assert est.main([str(mlp_file), "--models", "mlp_1x512", "--fit_steps", "mlp_1x512"]) == 2
  assert "use model=STEPS" in capsys.readouterr().err
  assert math.isclose(est._count("16.6k"), 16_600)


def test_defaults_are_the_fig1_configs(mlp_file):
  """The estimated grid is what configs/fig1.py runs at levels=11, seeds=3."""
  c = config_lib.resolve(config_lib.load(
      f"{REPO / 'configs' / 'fig1.py'}:model=alexnet_small,levels=11,seeds=3"))
  a = est.parse([str(mlp_file)])
  assert (a.eval_every, a.max_steps, a.batch_size) == (c.eval_every, c.max_steps,
                                                       c.batch_size)
  assert a.n_train // a.batch_size == c.lr_decay_every  # one CIFAR-10 epoch per decay
  labels = [r for r in config_lib.expand_grid(c) if r.kind == "labels"]
  assert len(labels) == a.levels * a.seeds


def test_eval_cost_measured_in_a_summary(tmp_path, mlp_file, capsys):
  mlp = read(mlp_file)
  conv = conv_file(tmp_path, mlp[0])
  # A run of alexnet_small on the rows' device kind: 0.02 s a step (128 examples) and 3 s
  # an evaluation of its 60,000 images: (3 / 60,000) / (0.02 / 128) = 0.32 per image.
  timed = summary_file(tmp_path / "alex_timed.json", "alexnet_small", lambda r: 8000, 10_000,
                       step_s=0.02, eval_s=3.0)
  t = json.loads(timed.read_text())["timing"]
  assert (t["train_steps"], t["evaluations"]) == (9000, 10)
  assert t["eval_cost"] == pytest.approx(0.32)
  out = tmp_path / "e.json"
  rc = est.main([str(mlp_file), str(conv), "--fit_steps", FIT, "--eval_cost_from", str(timed),
                 "--json", str(out)])
  text = capsys.readouterr().out
  assert rc == 0
  by_model = {m["model"]: m for m in json.loads(out.read_text())["models"]}
  alex = by_model["alexnet_small"]
  assert alex["eval_cost_measured"] and alex["eval_cost"] == pytest.approx(0.32)
  assert alex["seconds"] == pytest.approx(
      expected_seconds(1.1 * 120.0 * 33 / 64, 5.0, 16_000, eval_cost=0.32), rel=1e-9)
  assert not by_model["inception_small"]["eval_cost_measured"]
  assert by_model["inception_small"]["seconds"] == pytest.approx(
      expected_seconds(1.1 * 400.0 * 33 / 64, 20.64, 16_600), rel=1e-9)
  assert "x 0.32) =" in text and "alexnet_small 0.32 (measured: timing.eval_cost of" in text

  # The same run as a --fit_from source gives its cost too; from another device kind, it
  # is left out there, and refused when asked for by name.
  rc = est.main([str(mlp_file), str(conv), "--fit_from", str(timed), "--fit_steps",
                 "inception_small=16600,mlp_1x512=16000", "--json", str(out)])
  capsys.readouterr()
  assert rc == 0 and json.loads(out.read_text())["models"][1]["eval_cost"] == pytest.approx(0.32)
  elsewhere = summary_file(tmp_path / "alex_h200.json", "alexnet_small", lambda r: 8000,
                           10_000, device_kind="NVIDIA H200", step_s=0.02, eval_s=3.0)
  rc = est.main([str(mlp_file), str(conv), "--fit_from", str(elsewhere), "--fit_steps",
                 "inception_small=16600,mlp_1x512=16000", "--json", str(out)])
  capsys.readouterr()
  assert rc == 0 and not json.loads(out.read_text())["models"][1]["eval_cost_measured"]
  rc = est.main([str(mlp_file), str(conv), "--fit_steps", FIT, "--eval_cost_from",
                 str(elsewhere)])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "measured on NVIDIA H200" in err[0]
  # A summary with no timed calls (one chunk) is refused with what to do.
  untimed = summary_file(tmp_path / "short.json", "alexnet_small", lambda r: 8000, 1000)
  rc = est.main([str(mlp_file), str(conv), "--fit_steps", FIT, "--eval_cost_from",
                 str(untimed)])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "no timing.eval_cost" in err[0]


def test_compute_dtype_per_model(tmp_path, mlp_file, capsys):
  mlp = read(mlp_file)
  conv = conv_file(tmp_path, mlp[0])
  bf16 = write(tmp_path / "bf16.jsonl", [variant(mlp[0], model="inception_small", replicas=64,
                                                 compute_dtype="bfloat16", conv_gradient="jax",
                                                 step_ms=250.0,
                                                 compile_s=30.0)])
  out = tmp_path / "e.json"
  rc = est.main([str(mlp_file), str(conv), str(bf16), "--fit_steps", FIT, "--compute_dtype",
                 "inception_small=bfloat16", "--json", str(out)])
  text = capsys.readouterr().out
  assert rc == 0
  by_model = {m["model"]: m for m in json.loads(out.read_text())["models"]}
  # Inception from its bfloat16 row; the others float32, as without the flag.
  assert by_model["inception_small"]["seconds"] == pytest.approx(
      expected_seconds(1.1 * 250.0 * 33 / 64, 30.0, 16_600), rel=1e-9)
  assert by_model["alexnet_small"]["seconds"] == pytest.approx(
      expected_seconds(1.1 * 120.0 * 33 / 64, 5.0, 16_000), rel=1e-9)
  assert [by_model[m]["step"]["compute_dtype"] for m in est.MODELS] == [
      "bfloat16", "float32", "float32"]
  assert "conv_gradient jax, bfloat16) x 33/64" in text and "inception_small in bfloat16" in text
  # bfloat16 for every model: alexnet_small has no such rows, and the line says how to
  # measure them; an unknown dtype or model is a usage error.
  rc = est.main([str(mlp_file), str(conv), str(bf16), "--fit_steps", FIT, "--compute_dtype",
                 "bfloat16"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "no bfloat16 throughput rows for alexnet_small" in err[0]
  assert "--compute_dtype bfloat16 >> throughput_alexnet_small.jsonl" in err[0]
  for bad in ("inception_small=fp16", "resnet=bfloat16"):
    with pytest.raises(SystemExit) as exit_info:
      est.main([str(mlp_file), "--fit_steps", FIT, "--compute_dtype", bad])
    assert exit_info.value.code == 2 and "--compute_dtype" in capsys.readouterr().err
