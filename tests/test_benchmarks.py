"""Smoke runs of the benchmark scripts a user runs, as a user runs them: subprocesses, tiny.

The library's tests do not import benchmarks/; these only check that the scripts still run
against the library and print sensible numbers.
"""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_throughput_rows_report_the_plans_asked_for():
  done = script("throughput.py", "--models", "mlp_1x512", "--replicas", "2", "--steps", "1",
                "--repeats", "1", "--n_train", "64", "--batch_size", "4", "--matmul_n", "64",
                "--quick", "--plan", "replicas=vmap", "--plan", "replicas=map,gradients=jax")
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in done.stdout.splitlines()]
  assert [(r["model"], r["replicas"], r["plan_asked"]) for r in rows] == [
      ("mlp_1x512", 2, "replicas=vmap"), ("mlp_1x512", 2, "replicas=map,gradients=jax")]
  # The plan run is the one asked for, the choices left out filled in automatically.
  assert rows[0]["plan"].startswith("replicas=vmap,gradients=")
  assert rows[1]["plan"].startswith("replicas=map,gradients=jax")
  for r in rows:
    assert r["step_ms"] > 0 and r["compile_s"] > 0
    # R x 3 (training = 3 x forward) x 2 FLOPs per multiply-add x batch x multiply-adds.
    assert r["flops_per_step"] == 2 * 3 * 2 * 4 * (2352 * 512 + 512 * 10)
    assert 0 < r["fraction_of_matmul"] and r["memory_bytes_per_s"] > 0
  bad = script("throughput.py", "--plan", "replicas=loop")
  assert bad.returncode == 2
  assert "--plan replicas=loop: replicas='loop' must be one of vmap, map" in bad.stderr


@pytest.mark.slow
def test_modadd_rate_is_the_configs_grid_against_the_matmul_rate(tmp_path):
  done = script("modadd.py", "--config", "configs/modadd.py:quick", "--steps", "20",
                "--repeats", "3", "--matmul_n", "64", "--matmul_repeats", "1")
  assert done.returncode == 0, done.stderr
  row = json.loads(done.stdout)
  # quick: modulus 23, 70% of the 529 pairs in one batch, corruption {0, 1} x 2 seeds.
  assert (row["model"], row["n_train"], row["batch_size"], row["replicas"]) == (
      "mlp_tokens", 370, 370, 4)
  # 4 replicas x 3 x 2 FLOPs per multiply-add x batch x (2 x 512 + 512 x 23) multiply-adds:
  # the first layer adds one kernel row of 512 per token (models.OneHotDense), no product
  # over the 46 one-hot entries.
  assert row["flops_per_step"] == 4 * 3 * 2 * 370 * (2 * 512 + 512 * 23)
  # XLA's own count of the compiled step agrees (it skips the first layer's input gradient).
  assert 0.5 < row["xla_flops_per_step"] / row["flops_per_step"] < 1.5
  # The estimate against the run itself: zhang train times its train calls apart from
  # compilation and evaluation (summary.json's timing); one checkpoint, at the end, so that
  # background saves do not slow its steps. A factor of 2 either way is the shared machine.
  run = subprocess.run([sys.executable, "-m", "zhang", "train", "--config",
                        "configs/modadd.py:quick", "--workdir", str(tmp_path / "run"),
                        "--no_progress", "--config.checkpoint_every=1000"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["steps_run"] == row["max_steps"] == 1000
  measured = summary["timing"]["train_ms_per_step"] / 1e3 * summary["steps_run"]
  assert 0.5 < row["run_seconds_estimate"] / measured < 2, (row, summary["timing"])
  bad = script("modadd.py", "--config", "configs/digits.py")
  assert bad.returncode == 2 and "not modadd" in bad.stderr


@pytest.mark.slow
def test_quick_device_check_writes_one_json_of_results(tmp_path):
  # A budget beyond need: on a loaded machine the default 60 s could stop the run early.
  done = script("device_check.py", "--quick", "--budget_s", "600", "--out", str(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  assert [p.name for p in tmp_path.iterdir()] == ["device_check.json"]
  result = json.loads((tmp_path / "device_check.json").read_text())
  assert result["ok"] and result["quick"] and result["machine"]["backend"] == "cpu"
  assert set(result["parts"]) == {"throughput mlp_1x512", "throughput inception_small",
                                  "throughput alexnet_small", "fig1", "estimate"}
  assert {r["model"] for r in result["throughput"]} == {"mlp_1x512", "inception_small",
                                                        "alexnet_small"}
  assert all(r["step_ms"] > 0 and r["plan"].startswith("replicas=")
             for r in result["throughput"])
  run = result["fig1"]
  assert run["status"] == "complete" and 0 < run["steps_run"] <= 20
  assert len(run["replicas"]) == 5 and run["plan"].startswith("replicas=")
  for key in ("estimate", "estimate_unfitted"):
    est = result[key]
    assert est["total_seconds"] == pytest.approx(
        sum(m["seconds"] for m in est["models"].values()))
    assert set(est["models"]) == {"inception_small", "alexnet_small", "mlp_1x512"}
  # The unfitted case runs AlexNet and the MLP to max_steps; Inception is the same in both.
  models, unfitted = result["estimate"]["models"], result["estimate_unfitted"]["models"]
  assert unfitted["alexnet_small"]["steps"] == 60_000 > models["alexnet_small"]["steps"]
  assert unfitted["inception_small"] == models["inception_small"]
  # The run measured the MLP's evaluation cost; the others are assumed.
  assert models["mlp_1x512"]["eval_cost_measured"]
  assert not models["alexnet_small"]["eval_cost_measured"]
  # The estimator reads the check's rows again.
  again = script("estimate_fig1b.py", str(tmp_path / "device_check.json"), "--fit_steps",
                 "inception_small=100,alexnet_small=100,mlp_1x512=100")
  assert again.returncode == 0 and "Total:" in again.stdout, again.stderr


def test_estimate_fig1b_adds_up_the_models(tmp_path):
  rows = tmp_path / "rows.jsonl"
  # One row per model at R = 66: scaled to 33 replicas, half the step.
  rows.write_text("".join(json.dumps(dict(
      model=m, replicas=66, batch_size=128, step_ms=ms, step_ms_median=ms, compile_s=5.0,
      plan="replicas=map,gradients=jax", device_kind="test-chip")) + "\n"
                          for m, ms in (("inception_small", 200.0), ("alexnet_small", 20.0),
                                        ("mlp_1x512", 2.0))))
  out = tmp_path / "estimate.json"
  done = script("estimate_fig1b.py", str(rows), "--fit_steps",
                "inception_small=1500,alexnet_small=1000,mlp_1x512=70000",
                "--eval_cost", "0.5", "--json", str(out))
  assert done.returncode == 0, done.stderr
  e = json.loads(out.read_text())
  by_model = {m["model"]: m for m in e["models"]}
  # Inception: 2,000 steps (1,500 rounded up to eval_every 1,000) x 100 ms = 200 s; 3
  # evaluations of 60,000 / 128 batches x 100 ms x 0.5 = 70.3125 s each; compile 2 x 5 s.
  inception = by_model["inception_small"]
  assert (inception["steps"], inception["evaluations"]) == (2000, 3)
  assert inception["step_ms"] == pytest.approx(100.0)
  assert inception["seconds"] == pytest.approx(10 + 200 + 3 * 60_000 / 128 * 0.1 * 0.5)
  # The MLP never fits within max_steps: capped at 60,000, a lower bound.
  mlp = by_model["mlp_1x512"]
  assert mlp["steps"] == 60_000 and mlp["capped_at_max_steps"] and e["lower_bound"]
  assert e["total_seconds"] == pytest.approx(sum(m["seconds"] for m in e["models"]))
  assert "**Total: >= " in done.stdout
  missing = script("estimate_fig1b.py", str(rows), "--fit_steps", "inception_small=1")
  assert missing.returncode == 2 and "no steps-to-fit for alexnet_small" in missing.stderr


@pytest.mark.slow
def test_preemption_saves_the_step_in_flight_and_resumes_from_it():
  every, last = 20, 600
  done = script("preemption.py", "--config", "configs/digits.py", "--after_step", str(every),
                "--after", "0.5", "--resume", "--", f"--config.max_steps={last}",
                f"--config.eval_every={every}", f"--config.checkpoint_every={last}")
  assert done.returncode == 0, done.stderr
  (row,) = [json.loads(line) for line in done.stdout.splitlines()]
  # The notice came after the evaluation at `evaluated_step_at_notice` was written. The run
  # answers it when the train call in flight ends, at the next evaluation at the latest (one
  # more if the notice raced the run's check after an evaluation): not at a checkpoint
  # (there is none before step 600) nor at the end.
  noticed = row["evaluated_step_at_notice"]
  assert noticed >= every and noticed < row["step"] <= noticed + 2 * every, row
  assert row["notice_to_exit_s"] < 30  # the time a Spot VM gives
  # The same command resumes from the checkpoint the notice saved and completes, with every
  # replica's row at every evaluation (0, 20, ..., 600) once: none lost, none repeated.
  assert row["resumed_from"] == row["step"]
  assert (row["resumed_status"], row["resumed_steps_run"]) == ("complete", last)
  assert row["metrics_rows"] == row["metrics_keys"] == 15 * (last // every + 1)


@pytest.mark.slow
def test_eval_cost_times_both_evaluations_against_known_work():
  done = script("eval_cost.py", "--repeats", "2", "--matmul_n", "512")
  assert done.returncode == 0, done.stderr
  (row,) = [json.loads(line) for line in done.stdout.splitlines()]
  assert (row["replicas"], row["n_train"], row["n_test"]) == (15, 1438, 359)
  assert len(row["plain_all"]) == len(row["track_all"]) == 2
  # One evaluation: 15 replicas x (1,438 + 359) images x 2 FLOPs per multiply-add x the MLP's
  # (8 x 8 x 1 -> 512 -> 10) multiply-adds.
  assert row["eval_flops"] == 15 * (1438 + 359) * 2 * (64 * 512 + 512 * 10)
  # Neither evaluation runs those FLOPs faster than the same process's fp32 matmul: a timer
  # that did not wait for the work would report a hundred times that rate.
  for name in ("plain", "track"):
    assert row[f"{name}_seconds"] * row["matmul_flops_per_s"] >= row["eval_flops"], row
