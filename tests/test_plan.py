"""zhang/runtime/plan.py: the execution plan follows its measured tables, takes one override, and
stays out of the experiment."""

import json
import shutil

import jax
import pytest

from zhang import cli
from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import train
from zhang.runtime import plan


def test_the_plan_follows_the_measured_tables():
  cases = [("mlp_1x512", 1, "cpu", plan.Plan("vmap", "explicit", "default", "cpu")),
           ("mlp_3x512", plan.MLP_EIGEN_FROM - 1, "cpu",
            plan.Plan("vmap", "explicit", "default", "cpu")),
           ("mlp_1x512", plan.MLP_EIGEN_FROM, "cpu",
            plan.Plan("vmap", "explicit", "eigen", "cpu")),
           ("alexnet_small", 1, "cpu", plan.Plan("map", "explicit", "eigen", "cpu")),
           ("inception_small", 64, "gpu", plan.Plan("map", "jax", "default", "gpu")),
           ("mlp_1x512", 64, "gpu", plan.Plan("vmap", "jax", "default", "gpu")),
           ("inception_small", 8, "tpu", plan.Plan("vmap", "jax", "default", "tpu"))]
  for model, per_device, backend, expected in cases:
    assert plan.choose(model, per_device, backend, override="") == expected, (model, backend)
  # Off CPU no XLA CPU options, and str() leaves the CPU kernels out.
  gpu = plan.choose("inception_small", 64, "gpu", override="")
  assert gpu.compiler_options() == {} and str(gpu) == "replicas=map,gradients=jax"


def test_one_override_from_the_environment_or_an_argument(monkeypatch):
  monkeypatch.setenv(plan.ENV, "replicas=map")
  assert plan.choose("mlp_1x512", 1, "cpu") == plan.Plan("map", "explicit", "default", "cpu")
  assert plan.choose("mlp_1x512", 1, "cpu", override="gradients=jax").replicas == "vmap"
  assert plan.choose("mlp_1x512", 1, "cpu", override={"cpu_kernels": "eigen"}).cpu_kernels \
      == "eigen"
  for bad, message in (("replicas=pmap", "replicas='pmap' must be one of vmap, map"),
                       ("strategy=map", "unknown plan choice 'strategy'")):
    with pytest.raises(UsageError, match=message):
      plan.choose("mlp_1x512", 1, "cpu", override=bad)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU compiler options")
def test_options_this_jaxlib_refuses(monkeypatch):
  """An XLA option a future jaxlib drops: the automatic plan falls back to XLA's default
  kernels, an explicit choice is one UsageError line."""
  assert plan.accepted(plan.COMPILER_OPTIONS["eigen"])  # this jaxlib takes it
  gone = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_GONE"}
  assert not plan.accepted(gone)
  monkeypatch.setitem(plan.COMPILER_OPTIONS, "eigen", gone)
  assert plan.choose("alexnet_small", 1, "cpu", override="").cpu_kernels == "default"
  with pytest.raises(UsageError, match="cpu_kernels=eigen needs the XLA option"):
    plan.choose("alexnet_small", 1, "cpu", override="cpu_kernels=eigen")


@pytest.mark.slow
def test_a_run_resumes_under_another_plan(tiny_config, tmp_path, monkeypatch):
  """The plan is not in config.json nor its hash: the same workdir resumes under another
  plan and records which one each run used; a bad $ZHANG_PLAN is one line before anything
  is written."""
  tiny_config.max_steps, tiny_config.checkpoint_every = 60, 20
  tiny_config.fit_threshold = 1.0
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[1.0], seeds=[0])]
  run = tmp_path / "run"
  first = train.run(tiny_config, run, progress=False)
  assert first["plan"] == "replicas=vmap,gradients=explicit,cpu_kernels=default"
  config = json.loads((run / "config.json").read_text())
  assert not {"replica_strategy", "conv_gradient", "cpu_kernels", "plan"} & set(config)
  shutil.rmtree(run / "checkpoints" / "60")  # as if killed after the step-40 checkpoint
  monkeypatch.setenv(plan.ENV, "replicas=map,gradients=jax")
  second = train.run(tiny_config, run, progress=False)
  assert second["plan"] == "replicas=map,gradients=jax,cpu_kernels=default"
  assert second["steps_run"] == 60
  # Another plan: the same results to float rounding (not bit for bit).
  a, b = first["replicas"][0], second["replicas"][0]
  assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-4)
  monkeypatch.setenv(plan.ENV, "replicas=sometimes")
  with pytest.raises(UsageError, match="ZHANG_PLAN: replicas='sometimes'"):
    train.prepare(tiny_config, tmp_path / "other")
  assert not (tmp_path / "other").exists()


def test_the_plan_is_no_config_field(tmp_path, capsys):
  """How a device runs the grid is the plan's ($ZHANG_PLAN), not the experiment's: a config
  field of that name is unknown, one line."""
  code = cli.main(["train", "--config", "configs/digits.py", "--workdir", str(tmp_path / "w"),
                   "--config.replica_strategy=map"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1
  assert "unknown config field 'replica_strategy'" in err
  c = config_lib.load("configs/digits.py")
  with c.unlocked():
    c.conv_gradient = "jax"
  with pytest.raises(UsageError, match=r"unknown config field\(s\) conv_gradient"):
    config_lib.validate(c)
