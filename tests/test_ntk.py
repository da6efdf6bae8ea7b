"""The empirical NTK (zhang/probes/ntk/empirical.py), the kernel regime's dynamics
(zhang/probes/ntk/dynamics.py) and `zhang ntk` on a finished run (zhang/probes/ntk/request.py,
predict.py, zhang/analysis/ntk.py, zhang/cli/ntk.py)."""

import json
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from zhang import cli
from zhang.analysis import ntk as ntk_report
from zhang.experiment import config as config_lib
from zhang.experiment import models, step, train
from zhang.probes.ntk import dynamics as dyn
from zhang.probes.ntk import empirical as ntk
from zhang.probes.ntk import request as ntk_request
from zhang.runtime import flops


class _ConvNet(nn.Module):
  """Conv, batch norm, a Dense on (B, H, W, C) (not an outer product per example) and a
  Dense head: every kind of leaf the kernel contracts."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    x = nn.Dense(5)(x)
    return nn.Dense(3)(nn.relu(x.reshape(x.shape[0], -1)))


def _init(module, shape, seed=0):
  variables = module.init(jax.random.key(seed), jnp.zeros((1, *shape)), train=False)
  state = {}
  if "batch_stats" in variables:  # running statistics away from (0, 1), so they matter
    leaves, tree = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    state = {"batch_stats": jax.tree.unflatten(tree, [
        jnp.abs(jax.random.normal(k, leaf.shape)) + 0.5 for k, leaf in zip(keys, leaves)])}
  return variables["params"], state


def _reference(module, params, state, x, x_test):
  """The class-averaged kernel and the full class-by-class one from jax.jacfwd's jacobian of
  every example's logits with respect to the flattened parameters (float64)."""
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    state64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
    flat, unravel = ravel_pytree(params64)

    def jac(xs):
      f = lambda w: module.apply({"params": unravel(w), **state64}, xs, train=False)
      return np.asarray(jax.jacfwd(f)(flat))  # (n, C, P)

    j, jt = jac(jnp.asarray(x, jnp.float64)), jac(jnp.asarray(x_test, jnp.float64))
  c = j.shape[1]
  return (np.einsum("icp,jcp->ij", j, j) / c, np.einsum("icp,jcp->ij", jt, j) / c,
          np.einsum("icp,jdp->icjd", j, j))


@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.slow
def test_kernel_is_the_jacobian_product_of_jacfwd(name):
  """Both methods against J J^T of jax.jacfwd, in float64 (and float32 for the MLP): the MLP
  in one panel and in panels of 3 (held or recomputed), the conv net (batch norm, a Dense
  that is not factored) in panels of 3; and the class coupling against the full kernel."""
  shape = (4, 4, 2)
  module = models.MLP(1, 3, width=16) if name == "mlp" else _ConvNet()
  params, state = _init(module, shape)
  x = jax.random.normal(jax.random.key(3), (7, *shape))
  x_test = jax.random.normal(jax.random.key(4), (4, *shape))
  k_ref, kt_ref, full = _reference(module, params, state, x, x_test)
  assert np.linalg.eigvalsh(k_ref)[0] > 0
  configs = ((100, True), (3, True), (3, False)) if name == "mlp" else ((3, False),)
  for method in ntk.METHODS:
    tk = ntk.TangentKernel(module, 3, shape, method)
    computed = {}
    for block, hold in configs:
      k, kt, stats = tk.matrices(params, state, x, x_test, block=block, hold=hold,
                                 dtype="float64")
      np.testing.assert_allclose(k, k_ref, rtol=1e-10, atol=1e-12 * np.abs(k_ref).max())
      np.testing.assert_allclose(kt, kt_ref, rtol=1e-10, atol=1e-12 * np.abs(k_ref).max())
      np.testing.assert_array_equal(k, k.T)
      computed[block, hold] = (stats.feature_examples, stats.contracted_entries)
    if name == "mlp":
      # Panels of 3: 3 train panels (2 rows of padding), 2 test panels of 2. Blocks on and
      # above the diagonal (6 of 3 x 3) and every test block (6 of 2 x 3); held, each
      # panel's features once, else a row panel's again for every later column panel.
      assert computed[100, True] == (7 + 4, 7 * 7 + 4 * 7)
      assert computed[3, True] == (9 + 4, 6 * 9 + 6 * 6)
      assert computed[3, False] == ((1 + 2 + 3) * 3 + 3 * 2 * 2, 6 * 9 + 6 * 6)
      k32, _, _ = tk.matrices(params, state, x, x_test, block=3)
      np.testing.assert_allclose(k32, k_ref, rtol=1e-4, atol=1e-6 * np.abs(k_ref).max())
    ideal = np.einsum("ij,cd->icjd", np.einsum("icjc->ij", full) / 3, np.eye(3))
    want = np.linalg.norm(full - ideal) / np.linalg.norm(ideal)
    assert 1e-3 < want < 1  # the classes are coupled a little
    assert tk.class_coupling(params, state, x) == pytest.approx(want, rel=1e-4)


def test_the_factored_layers_are_the_dense_ones_on_vectors():
  params, _ = _init(_ConvNet(), (4, 4, 2))
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  found = ntk.dense_layers(_ConvNet(), shapes, (4, 4, 2))
  assert found == (ntk.DenseLayer(("Dense_1",), 80, 3, True),)  # not Dense_0 on (B, 4, 4, 4)
  tk = ntk.TangentKernel(models.get("mlp_1x512").build(10), 10, (8, 8, 1))
  assert [(layer.d_in, layer.d_out) for layer in tk.dense] == [(64, 512), (512, 10)]
  assert tk.num_params == 38410 and tk.generic_params == 0
  assert tk.floats_per_example == 64 + 10 * 512 + 512 + 10 * 10


def test_analytic_contraction_flops_are_xlas():
  """FLOPs of one block's contraction, counted analytically, against XLA's cost analysis."""
  module = models.get("mlp_1x512").build(10)
  params, _ = _init(module, (8, 8, 1))
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  for method in ntk.METHODS:
    tk = ntk.TangentKernel(module, 10, (8, 8, 1), method)
    feats = tk._features(params, {}, x)
    xla = flops.xla_flops(tk._contract_fn, feats, feats)
    stats = ntk.KernelStats(feature_examples=0, contracted_entries=16 * 16)
    assert tk.flops(stats)["contraction"] == pytest.approx(xla, rel=0.02)
  assert ntk.TangentKernel(module, 10, (8, 8, 1), "jacobian").entry_flops == 2 * 10 * 38410


def _linear_problem(n=24, num_classes=3, seed=0):
  shape = (5, 8, 1)  # 40 inputs > 24 examples: the kernel is full rank
  module = models.MLP(0, num_classes)  # flatten, Dense: the kernel is exact, not a model
  with jax.enable_x64(True):
    params, _ = _init(module, shape, seed)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jax.random.normal(jax.random.key(seed + 7), (n, *shape), jnp.float64)
  labels = np.random.default_rng(seed).integers(0, num_classes, n)
  return module, params, x, labels


@pytest.mark.parametrize("momentum,decay", [(0.0, 1.0), (0.9, 0.5)])
@pytest.mark.slow
def test_a_linear_models_gradient_descent_follows_the_prediction(momentum, decay):
  """Full-batch gradient descent on 1/2 |f - y|^2 (mean over examples) with the trainer's
  optimizer and schedule: plain, and with momentum and a staircase decay every 7 steps. The
  residual curve equals the kernel's prediction."""
  module, params, x, labels = _linear_problem()
  n, c, every = len(labels), 3, 7
  tk = ntk.TangentKernel(module, c, x.shape[1:])
  k, _, _ = tk.matrices(params, {}, x, dtype="float64")
  lam, vec = dyn.eigen(k)
  a = dyn.curvature(lam, n, c, "squared")
  base = 0.5 / a.max() * (1 - momentum)
  rate = lambda s: np.asarray(step.learning_rate_at(np.asarray(s), base, decay, every),
                              np.float64)
  steps = np.arange(0, 61, 5)
  with jax.enable_x64(True):
    apply = jax.jit(lambda p: module.apply({"params": p}, x, train=False))
    e0 = dyn.initial_residual(labels, np.asarray(apply(params)), c, "squared")
    psi = dyn.mode_response(a, rate, momentum, steps, np.arange(0, 61, every))
    predicted = dyn.residual_curve(psi, np.sum((vec.T @ e0) ** 2, axis=1))
    y = jnp.eye(c)[labels]
    loss = lambda p: 0.5 * jnp.mean(jnp.sum((module.apply({"params": p}, x, train=False) - y)
                                            ** 2, axis=1))
    opt = step.optimizer(None, momentum)
    p, opt_state, actual = params, opt.init(params), []
    for t in range(61):
      if t in steps:
        actual.append(float(jnp.sum((apply(p) - y) ** 2)))
      updates, opt_state = opt.update(jax.grad(loss)(p), opt_state, p)
      lr = rate(t)
      p = jax.tree.map(lambda w, u, lr=lr: w - lr * u, p, updates)
  actual = np.asarray(actual) / actual[0]
  np.testing.assert_allclose(predicted, actual, rtol=1e-9)
  assert actual[-1] < 0.6 and np.all(np.diff(actual[:3]) < 0)  # it trained


def test_the_cross_entropy_scale_is_the_first_steps():
  """From zero logits, one gradient step on the mean softmax cross-entropy moves a linear
  model's logits exactly as the quadratic with curvature lambda / (n C) and target C y - 1."""
  module, params, x, labels = _linear_problem(num_classes=4)
  n, c, lr = len(labels), 4, 0.3
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.zeros_like, params)
    apply = lambda p: module.apply({"params": p}, x, train=False)
    loss = lambda p: jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(apply(p)),
                                                   jnp.asarray(labels)[:, None], 1))
    p1 = jax.tree.map(lambda w, g: w - lr * g, params, jax.grad(loss)(params))
    f1 = np.asarray(apply(p1))
  k, _, _ = ntk.TangentKernel(module, c, x.shape[1:]).matrices(params, {}, x, dtype="float64")
  lam, vec = dyn.eigen(k)
  psi = dyn.mode_response(dyn.curvature(lam, n, c, "cross_entropy"), lambda s: np.full(
      np.shape(s), lr), 0.9, [0, 1])
  e0 = dyn.initial_residual(labels, np.zeros((n, c)), c, "cross_entropy")
  predicted = dyn.targets(labels, c, "cross_entropy") - vec @ (psi[1][:, None] * (vec.T @ e0))
  np.testing.assert_allclose(f1 - f1.mean(1, keepdims=True), predicted, rtol=1e-9,
                             atol=1e-12)
  assert np.abs(f1).max() > 0.01


def test_mode_response_is_the_recurrence_step_by_step():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 3, 40)
  rate = lambda s: 0.2 * np.asarray(step.schedule(0.5, 7)(np.asarray(s)))
  steps = np.arange(0, 51, 5)
  psi = dyn.mode_response(a, rate, 0.9, steps, np.arange(0, 51, 7))
  e, z, want = np.ones(40), np.zeros(40), [np.ones(40)]
  for t in range(50):
    z = 0.9 * z - a * e
    e = e + float(rate(t)) * z
    if (t + 1) % 5 == 0:
      want.append(e.copy())
  np.testing.assert_allclose(psi, np.asarray(want), rtol=1e-10, atol=1e-12)


def test_accuracy_fit_step_is_the_first_fitting_step():
  rng = np.random.default_rng(1)
  n, c = 30, 3
  x = rng.standard_normal((n, 50))
  lam, vec = dyn.eigen(x @ x.T)
  labels = rng.integers(0, c, n)
  target = dyn.targets(labels, c, "squared")
  proj = vec.T @ target  # from zero outputs
  steps = np.arange(0, 2001, 10)
  psi = dyn.mode_response(dyn.curvature(lam, n, c, "squared"),
                          lambda s: np.full(np.shape(s), 0.05), 0.0, steps)
  acc = [np.mean((target - vec @ (p[:, None] * proj)).argmax(1) == labels) for p in psi]
  want = int(steps[np.flatnonzero(np.asarray(acc) >= 1.0)[0]])
  assert 0 < want < 2000
  assert dyn.accuracy_fit_step(vec, proj, psi, target, labels, steps, 1.0) == want
  assert dyn.accuracy_fit_step(vec, proj, psi[:want // 10], target, labels,
                               steps[:want // 10], 1.0) is None


def test_memory_plan_names_the_largest_n_that_fits():
  plan = ntk.plan_memory(5000, 1000, 10, 5796, 1501, budget_bytes=int(1.8e9))
  assert not plan.fits and 0 < plan.max_n < 5000
  fits = ntk.plan_memory(plan.max_n, 1000, 10, 5796, 1501, budget_bytes=int(1.8e9))
  over = ntk.plan_memory(plan.max_n + 1, 1000, 10, 5796, 1501, budget_bytes=int(1.8e9))
  assert fits.fits and not over.fits
  # Panels of about PANEL_BYTES (352 examples of 384,100 floats: 58 panels of 20,000), all
  # held when they fit beside the host's matrices, else three at a time.
  held = ntk.plan_memory(20000, 0, 10, 384100, 100, budget_bytes=int(100e9))
  assert (held.block, held.panels, held.hold) == (352, 59, True)
  assert held.panel_bytes == 352 * 384100 * 4 <= ntk.PANEL_BYTES * 1.01
  assert held.total_bytes == 1.5e9 + (58 + 1) * held.panel_bytes + held.host_bytes
  tight = ntk.plan_memory(20000, 0, 10, 384100, 100, budget_bytes=int(30e9))
  assert (tight.panels, tight.hold, tight.fits) == (3, False, True)


# --------------------------------------------------------------------------- a finished run

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """MLP 1x512 on 96 digits: true and random labels of seed 0, true labels of seed 1 and
  random pixels; 150 steps at most, evaluated every 10 (about 10 s)."""
  c = config_lib.base_config()
  c.model, c.dataset = "mlp_1x512", "digits"
  c.n_train, c.n_test = 96, 64
  c.batch_size, c.learning_rate = 32, 0.05
  c.max_steps, c.eval_every, c.eval_batch_size = 150, 10, 100
  c.lr_decay_every, c.checkpoint_every = 30, 1000
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0]),
            dict(kinds=["labels"], corruptions=[0.0], seeds=[1]),
            dict(kinds=["random_pixels"], corruptions=[0.0], seeds=[0])]
  workdir = tmp_path_factory.mktemp("ntk_run")
  summary = train.run(c, workdir, progress=False)
  assert summary["status"] == "complete"
  return workdir


@pytest.mark.slow
def test_ntk_end_to_end(finished_run, tmp_path, capsys):
  out = tmp_path / "ntk"
  assert cli.main(["ntk", str(finished_run), "--out", str(out)]) == 0
  captured = capsys.readouterr()
  kernel_lines = [line for line in captured.err.splitlines()
                  if line.startswith("[zhang ntk] kernel")]
  assert len(kernel_lines) == 3  # seed 0 labels, seed 1 labels, seed 0 random pixels
  result = ntk_report.load(out)
  assert sorted(p.name for p in out.iterdir()) == sorted(["ntk.json", *ntk_report.FIGURES])
  for name in ntk_report.FIGURES:
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  s = result["settings"]
  assert (s["n"], s["n_test"], s["criterion"], s["threshold"], s["loss"],
          s["kernel_method"]) == (96, 64, "accuracy", 0.1, "cross_entropy", "structured")
  summary = json.loads((finished_run / "summary.json").read_text())
  # Provenance, as the report checks it: the run's path and config hash.
  assert s["run"] == str(finished_run) and s["config_hash"] == summary["config_hash"]
  fits = [r["fit_step"] for r in summary["replicas"]]
  by = {r["replica"]: r for r in result["replicas"]}
  assert [by[i]["measured_fit_step"] for i in range(4)] == fits
  assert by[1]["measured_slowdown"] == pytest.approx(fits[1] / fits[0])
  assert by[2]["measured_slowdown"] == 1.0
  # Predicted fit steps are evaluation steps, the slowdown their ratio; the primary ones
  # are the run's schedule's by the accuracy criterion.
  for r in result["replicas"]:
    assert r["predicted_fit_step"] == r["predicted_fit_step_run_accuracy"]
    for name in ("run_accuracy", "run_residual", "constant_lr_accuracy",
                 "constant_lr_residual"):
      step_ = r[f"predicted_fit_step_{name}"]
      assert step_ is None or (step_ % 10 == 0 and 0 < step_ <= s["horizon"])
  assert by[1]["predicted_slowdown"] == pytest.approx(
      by[1]["predicted_fit_step"] / by[0]["predicted_fit_step"])
  assert by[1]["predicted_fit_step"] > by[0]["predicted_fit_step"]  # random labels: slower
  # Kernel interpolation's test accuracy, against a direct solve with the jacobian method's
  # kernel of the same initialization.
  setup = ntk_request.prepare(finished_run)
  run = setup.run
  r = run.replicas[1]
  params, state = run.variables(run.state(0), r)
  tk = ntk.TangentKernel(setup.module, 10, (8, 8, 1), "jacobian")
  k, kt, _ = tk.matrices(params, state, run.inputs(r, 0), run.inputs(r, 1), dtype="float64")
  pred = (kt @ np.linalg.solve(k, np.eye(10)[run.labels[1]])).argmax(1)
  assert by[1]["kernel_test_acc"] == pytest.approx(
      np.mean(pred == setup.dataset.test_labels), abs=1e-12)
  assert "Where the prediction fails:" in ntk_report.summary_lines(result)
  assert "replica kind" in captured.out and "Results in" in captured.out
  # `zhang report RUN --out` the same folder embeds the section and its figures.
  from zhang.analysis import report
  written = {q.name for q in report.write_report([finished_run], out, n_boot=0)}
  assert set(ntk_report.FIGURES) <= written
  text = (out / "report.md").read_text()
  assert "## Kernel regime (empirical NTK at initialization)" in text
  assert all(f"({name})" in text for name in ntk_report.FIGURES)


def _copy(run, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(run, copy)
  return copy


def _edit_json(path, **changes):
  d = json.loads(path.read_text())
  for k, v in changes.items():
    if v is None:
      d.pop(k)
    else:
      d[k] = v
  path.write_text(json.dumps(d))


def _set_step0_loss(run):
  lines = (run / "metrics.jsonl").read_text().splitlines()
  row = json.loads(lines[0])
  row["train_loss"] *= 1.05
  (run / "metrics.jsonl").write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")


def test_a_full_disk_is_one_line_before_any_kernel(finished_run, tmp_path, capsys,
                                                   monkeypatch):
  import collections
  import shutil as shutil_lib
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(shutil_lib, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 4096))
  assert cli.main(["ntk", str(finished_run), "--out", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "writing ntk.json and its figures takes about" in err
  assert "0.0 MiB free" in err and not (tmp_path / "out" / "ntk.json").exists()


@pytest.mark.parametrize("case,message", [
    ("empty", "config.json is missing"),
    ("running", "is not finished (summary.json says status 'running'"),
    ("no_model", "the files come from different runs (or config.json was edited)"),
    ("unknown_model", "unknown model 'resnet'"),
    ("shapes", "the files come from different runs (or config.json was edited)"),
    ("n", "--n 97 is out of range: the run's training set has 96 examples"),
    ("memory", "needs"),
    ("threshold", "--threshold 1.5 must be in (0, 1)"),
    ("out_file", "is a file, not a folder"),
    ("step0", "step-0 train loss"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(finished_run, tmp_path, capsys, case,
                                                      message):
  run, out, args = finished_run, tmp_path / "out", []
  if case == "empty":
    run = tmp_path / "empty"
    run.mkdir()
  elif case in ("running", "no_model", "unknown_model", "shapes", "step0"):
    run = _copy(finished_run, tmp_path)
    if case == "running":
      _edit_json(run / "summary.json", status="running")
    elif case == "no_model":
      _edit_json(run / "config.json", model=None)
    elif case == "unknown_model":
      _edit_json(run / "config.json", model="resnet")
    elif case == "shapes":  # another model of the same family: the checkpoint shows it
      _edit_json(run / "config.json", model="mlp_3x512")
      _edit_json(run / "summary.json", model="mlp_3x512")
    else:
      _set_step0_loss(run)
  elif case == "n":
    args = ["--n", "97"]
  elif case == "memory":  # 1.5 GB of overhead, then a few MB: panels of about 96 examples
    plan = ntk.plan_memory(96, 64, 10, 5796, 151, budget_bytes=int(1.5065e9))
    assert not plan.fits and 50 < plan.max_n < 96
    message = f"use --n {plan.max_n} or less (the largest that fits)"
    args = ["--memory_gb", "1.5065"]
  elif case == "threshold":
    args = ["--threshold", "1.5"]
  elif case == "out_file":
    out.write_text("")
  compiles = []  # XLA compilations asked for (tracing for shapes alone is no compilation)

  def listener(name, *args, **kwargs):
    if "backend_compile" in name or "compile_requests" in name:
      compiles.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  jax.monitoring.register_event_listener(listener)
  try:
    code = cli.main(["ntk", str(run), "--out", str(out), *args])
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.monitoring.unregister_event_listener(listener)
  err = capsys.readouterr().err.strip().splitlines()
  errors = [line for line in err if not line.startswith("[zhang ntk]")]
  assert code == 2 and len(errors) == 1 and message in errors[0], err
  assert errors[0].startswith("zhang ntk: error: ")
  assert (out.is_file() and out.read_text() == "") if case == "out_file" else not out.exists()
  if case != "step0":  # found before anything is compiled; step 0 needs the network run
    assert not compiles


def test_the_report_section_is_computed_from_the_numbers():
  """summary_lines on a hand-made ntk.json: the table's means and the words' numbers."""
  base = dict(kind="labels", predicted_slowdown_at_least=None, kernel_test_acc=0.9,
              network_test_acc=0.95, predicted_residual_final_run=0.05)
  reps = []
  for seed in (0, 1):
    reps.append(dict(base, replica=seed, corruption=0.0, seed=seed, measured_fit_step=100,
                     predicted_fit_step=200, measured_slowdown=1.0, predicted_slowdown=1.0,
                     predicted_fit_step_constant_lr_residual=100,
                     predicted_slowdown_constant_lr_residual=1.0))
    reps.append(dict(base, replica=2 + seed, corruption=1.0, seed=seed,
                     measured_fit_step=400 + 100 * seed, predicted_fit_step=None,
                     measured_slowdown=4.0 + seed, predicted_slowdown=None,
                     predicted_fit_step_constant_lr_residual=2000 + 1000 * seed,
                     predicted_slowdown_constant_lr_residual=20.0 + 10 * seed,
                     kernel_test_acc=0.1, network_test_acc=0.12,
                     predicted_residual_final_run=0.4 + 0.1 * seed))
  result = dict(settings=dict(model="mlp", dataset="digits", n=100, threshold=0.1,
                              criterion="residual", loss="cross_entropy", horizon=10000),
                replicas=reps)
  lines = ntk_report.summary_lines(result)
  table = [line for line in lines if line.startswith("| 1 ")]
  assert table == ["| 1 | 450 | 4.50x | never | – | 25.00x | – | 10.0 | 12.0 |"]
  words = "\n".join(lines)
  assert "predicted fit at step 200, measured 100: the kernel regime is 2.0x slower" in words
  assert "never fits 2 of the 2 corrupted-label replicas within 10,000 steps" in words
  assert "stalls at 40.0-50.0% of its start" in words
  assert "the predicted slowdown is 25.0x against measured 4.5x" in words
  assert "it overestimates the slowdown 5.6x" in words


@pytest.mark.slow
def test_the_benchmark_counts_the_kernels_flops(finished_run):
  """benchmarks/ntk.py as a user runs it: the command's FLOPs are three kernels' analytic
  count, and the jacobian method's kernel is the structured one."""
  repo = pathlib.Path(__file__).resolve().parents[1]
  done = subprocess.run([sys.executable, str(repo / "benchmarks" / "ntk.py"), str(finished_run),
                         "--jacobian", "1", "--matmul_n", "256", "--repeats", "1"],
                        cwd=repo, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in done.stdout.splitlines()]
  assert [r["what"] for r in rows] == ["command", "structured", "jacobian"]
  # One panel of 96 training and one of 64 test examples per kernel: 96^2 + 64 x 96 entries
  # of 2 (64 + 10 x 512) + 3 + 2 (512 + 10 x 10) + 3 FLOPs; features: a forward pass and 10
  # backward passes without the first layer's input gradient, for 160 examples.
  forward = 2 * (64 * 512 + 512 * 10)
  per_kernel = ((96 * 96 + 64 * 96) * (2 * (64 + 5120) + 3 + 2 * (512 + 100) + 3)
                + 160 * (forward + 10 * (forward - 2 * 64 * 512)))
  assert rows[0]["kernels"] == 3 and rows[0]["kernel_flops"] == 3 * per_kernel
  assert rows[1]["flops"] == per_kernel
  assert rows[2]["contraction_flops"] == (96 * 96 + 64 * 96) * 2 * 10 * 38410
  assert rows[1]["max_abs_difference"] < 1e-5
  for r in rows:
    assert r["matmul_flops_per_s"] > 0 and 0 < r["fraction_of_matmul"]
