"""benchmarks/device_check.sh --quick: every step of the accelerator check, tiny, on CPU."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quick_device_check_writes_parsable_results(tmp_path):
  env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable,
             TMPDIR=str(tmp_path))
  proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--quick"],
                        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = tmp_path / "out"

  result = json.loads((out / "device_check.json").read_text())
  assert result["ok"] and result["quick"] and result["env"]["backend"] == "cpu"
  required = ["throughput_mlp_1x512", "throughput_inception_small", "throughput_alexnet_small",
              "fig1_synthetic_cifar10", "fig1b_estimate", "fig1b_estimate_unfitted", "roofline"]
  optional = ["throughput_bf16", "fig1b_estimate_bf16", "fig1b_estimate_unfitted_bf16",
              "profile_mlp", "profile_conv"]
  assert list(result["steps"]) == required + optional
  assert [s["optional"] for s in result["steps"].values()] == [False] * 7 + [True] * 5
  assert all(s["rc"] == 0 and not s["skipped"] for s in result["steps"].values())
  # The estimate reads a few files (well under 0.05 s, which rounds to 0.0).
  assert all(s["seconds"] > 0 for n, s in result["steps"].items()
             if not n.startswith("fig1b_estimate"))
  assert [s["limit_s"] for s in result["steps"].values()][4:7] == [20, 10, 30]

  for model, replicas in (("mlp_1x512", [1, 4]), ("inception_small", [1]),
                          ("alexnet_small", [1])):
    rows = [json.loads(line) for line in
            (out / f"throughput_{model}.jsonl").read_text().splitlines()]
    assert [r["replicas"] for r in rows] == replicas
    assert all(r["model"] == model and r["step_ms"] > 0 and r["examples_per_s"] > 0
               for r in rows)

  summary = json.loads((out / "fig1_summary.json").read_text())
  assert summary["status"] == "complete" and summary["steps_run"] == 20
  assert len(summary["replicas"]) == 5  # labels p = 0, 1 and the three pixel kinds, 1 seed
  assert json.loads((out / "fig1_config.json").read_text())["dataset"] == "synthetic_cifar10"
  steps = [json.loads(line)["step"] for line in (out / "fig1_metrics.jsonl").open()]
  assert steps == [0] * 5 + [10] * 5 + [20] * 5  # 5 replicas, evaluated at 0, 10 and 20
  # Its timing: the chunk 10-20 and the evaluations at 10 and 20 (the first ones compile).
  timing = summary["timing"]
  assert (timing["train_steps"], timing["evaluations"]) == (10, 2) and timing["eval_cost"] > 0
  assert result["fig1"]["timing"] == timing

  # The Figure 1b estimate from the rows above (CPU rows at batch 2 and 4: extrapolated to
  # 33 replicas and scaled to batch 128), with the script's assumed steps-to-fit.
  estimate = json.loads((out / "fig1b_estimate.json").read_text())
  assert [m["model"] for m in estimate["models"]] == ["inception_small", "alexnet_small",
                                                      "mlp_1x512"]
  assert [m["fit_steps"] for m in estimate["models"]] == [16_600, 16_000, 16_000]
  assert estimate["extrapolated"] and estimate["batch_scaled"] and not estimate["lower_bound"]
  assert estimate["total_seconds"] == sum(m["seconds"] for m in estimate["models"])
  assert estimate["device_kind"] == "cpu" and estimate["under_budget"] is False
  # The run's model (mlp_1x512) is evaluated at the cost its run measured; the others at
  # the assumed 1/3 of a training example per image.
  cost = {m["model"]: (m["eval_cost_measured"], m["eval_cost"]) for m in estimate["models"]}
  assert cost == {"inception_small": (False, 1 / 3), "alexnet_small": (False, 1 / 3),
                  "mlp_1x512": (True, timing["eval_cost"])}
  short = result["fig1b_estimate"]
  assert short["total_seconds"] == estimate["total_seconds"] and set(short["models"]) == {
      "inception_small", "alexnet_small", "mlp_1x512"}
  assert f"**{estimate['total_seconds']:,.0f}**" in (out / "fig1b_estimate.md").read_text()
  # The case where AlexNet's and the MLP's replicas never fit: their grids run 60,000 steps.
  unfitted = json.loads((out / "fig1b_estimate_unfitted.json").read_text())
  steps = {m["model"]: m["steps"] for m in unfitted["models"]}
  assert steps == {"inception_small": 17_000, "alexnet_small": 60_000, "mlp_1x512": 60_000}
  assert unfitted["total_seconds"] > estimate["total_seconds"]
  assert short["if_alexnet_and_mlp_never_fit"]["total_seconds"] == unfitted["total_seconds"]
  # Every row against its floor, at the bandwidth measured in the row's process.
  roofline = json.loads((out / "roofline.json").read_text())
  assert [(r["model"], r["replicas"]) for r in roofline] == [
      ("mlp_1x512", 1), ("mlp_1x512", 4), ("inception_small", 1), ("alexnet_small", 1)]
  assert all(r["bandwidth_measured"] and 0 < r["of_floor"] and r["floor_ms"] > 0
             for r in roofline)
  assert [r["of_floor"] for r in result["roofline"]] == [r["of_floor"] for r in roofline]
  assert "| mlp_1x512 |" in (out / "roofline.md").read_text()
  # Steps 7-9: mlp_1x512's bf16 row, the estimates with it, and two profiles.
  (bf16,) = [json.loads(line) for line in (out / "throughput_bf16.jsonl").open()]
  assert (bf16["model"], bf16["compute_dtype"], bf16["replicas"]) == ("mlp_1x512", "bfloat16", 1)
  for name, fitted in (("fig1b_estimate_bf16", estimate), ("fig1b_estimate_unfitted_bf16",
                                                           unfitted)):
    low = json.loads((out / f"{name}.json").read_text())
    dtypes = {m["model"]: m["step"]["compute_dtype"] for m in low["models"]}
    assert dtypes == {"inception_small": "float32", "alexnet_small": "float32",
                      "mlp_1x512": "bfloat16"}
    # Only the MLP's term changes, to its bf16 row's step time.
    assert [m["seconds"] for m in low["models"][:2]] == [
        m["seconds"] for m in fitted["models"][:2]]
    step = low["models"][2]["step"]
    assert step["row_replicas"] == 1 and step["row_step_ms"] == bf16["step_ms_median"]
    assert low["models"][2]["seconds"] != fitted["models"][2]["seconds"]
  assert short["with_bf16"]["bf16_models"] == ["mlp_1x512"]
  assert short["with_bf16_if_never_fit"]["total_seconds"] == json.loads(
      (out / "fig1b_estimate_unfitted_bf16.json").read_text())["total_seconds"]
  for name, head in (("profile_mlp", "mlp_1x512, R = 2, batch 4, strategy vmap, cpu"),
                     ("profile_conv", "alexnet_small, R = 1, batch 2, strategy map, cpu")):
    profile = (out / f"{name}.txt").read_text()
    assert profile.startswith(head)
    assert ("\nconvs:" in profile) == (name == "profile_conv")  # the MLP has no convolution
    assert result["profiles"][name]["headline"] == profile.splitlines()[0]
  log = (out / "device_check.log").read_text()
  assert "device_check summary" in log and "fig1b estimate (CIFAR-10" in log
  assert "eval cost 0.333 assumed" in log and "training examples per image" in log
  assert not list(tmp_path.glob("zhang_device_check.*"))  # its scratch folder is removed


def test_quick_followup_measures_what_the_first_check_left(tmp_path):
  env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable,
             TMPDIR=str(tmp_path))
  proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--quick",
                         "--followup"],
                        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = tmp_path / "out"
  result = json.loads((out / "device_check.json").read_text())
  assert result["ok"] and result["quick"] and result["followup"]
  assert list(result["steps"]) == ["throughput_alexnet_small", "throughput_bf16", "profile_mlp",
                                   "profile_conv", "fit_fashion_mnist"]
  assert [s["optional"] for s in result["steps"].values()] == [False] * 4 + [True]
  assert all(s["rc"] == 0 for s in result["steps"].values())
  # alexnet_small's rows under both strategies, then the bf16 row.
  assert [(r["model"], r["strategy"], r["compute_dtype"]) for r in result["throughput"]] == [
      ("alexnet_small", "map", "float32"), ("alexnet_small", "vmap", "float32"),
      ("mlp_1x512", "vmap", "bfloat16")]
  assert set(result["profiles"]) == {"profile_mlp", "profile_conv"}
  # The Fashion-MNIST grid: 2 label replicas (p = 0, 1) and the 3 pixel kinds, 1 seed.
  summary = json.loads((out / "fit_summary.json").read_text())
  assert summary["status"] == "complete" and summary["steps_run"] == 20
  assert [(r["kind"], r["corruption"]) for r in summary["replicas"]] == [
      ("labels", 0.0), ("labels", 1.0), ("shuffled_pixels", 0.0), ("random_pixels", 0.0),
      ("gaussian", 0.0)]
  assert json.loads((out / "fit_config.json").read_text())["dataset"] == "fashion_mnist"
  assert result["fit"]["replicas"] == [
      {k: r[k] for k in ("kind", "corruption", "seed", "fit_step", "final_train_acc",
                         "final_test_acc")} for r in summary["replicas"]]
  assert result["fig1"] is None and result["fig1b_estimate"] is None
  assert not (out / "fig1b_estimate.json").exists()


def test_full_check_refuses_cpu(tmp_path):
  env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable,
             TMPDIR=str(tmp_path), JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh")],
                        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
  assert proc.returncode == 2 and "--quick" in proc.stdout + proc.stderr
