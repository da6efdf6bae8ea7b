"""Parameterizations and output scales, checked where the answer is known: mean field equals
muP for one hidden layer, muP's coordinate check is flat in width where standard's is not,
and a network at a growing output scale follows its own linearization ever closer."""

import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang.experiment import config as config_lib
from zhang.experiment import data, models, parameterization, randomize, step, train
from zhang.runtime import plan as plan_lib


def _settings(optimizer="sgd_momentum", center=False, momentum=0.9, weight_decay=False):
  return step.StepSettings(batch_size=32, momentum=momentum, lr_decay=1.0, lr_decay_every=1000,
                           eval_batch_size=32, segments=(("labels", 0, 1),),
                           weight_decay=weight_decay, optimizer=optimizer, center=center)


def _batch(n=32, classes=10, seed=1):
  x = jax.random.normal(jax.random.key(seed), (n, 8, 8, 1))
  y = jax.random.randint(jax.random.key(seed + 1), (n,), 0, classes)
  return x, y


def _trainer(name, settings, classes=10):
  """(initial state, one step, logits) of model ``name`` under ``settings``."""
  spec = models.get(name)
  module = spec.build(classes)
  x, _ = _batch()
  shapes = step.init_state(module, settings, jax.random.key(0), x[:1]).params
  scales = spec.lr_scales(shapes, settings.optimizer)
  state = step.init_state(module, settings, jax.random.key(0), x[:1], lr_scales=scales)
  apply = functools.partial(step.apply_model, module, plan_lib.Plan(), settings, False)
  train_step = jax.jit(functools.partial(step.train_step, apply, settings, scales))
  return module, state, train_step


def _run(name, settings, steps, lr, scale=1.0, weight_decay=0.0):
  module, state, train_step = _trainer(name, settings)
  x, y = _batch()
  initial = state.params
  for _ in range(steps):
    state, _ = train_step(state, x, y, lr, weight_decay, scale, initial, 1.0)
  return module, state, initial


class _FlaxMLP(nn.Module):
  """The MLP as Flax's defaults make it: the reference the standard preset must equal."""
  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(32)(x))
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(10)(x)


def test_standard_is_flax_default():
  """The standard preset is the model as it was, bit for bit: Flax's Dense (LeCun normal
  kernels), no multiplier, no rate scales."""
  x, _ = _batch()
  spec = models.get("mlp_2x32")
  params = spec.build(10).init(jax.random.key(3), x)["params"]
  reference = _FlaxMLP().init(jax.random.key(3), x)["params"]
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(spec.build(10).apply({"params": params}, x),
                                _FlaxMLP().apply({"params": reference}, x))
  assert spec.lr_scales(params, "sgd_momentum") is None
  # The multiplier form: a width-2048 muP input layer (r = 4) draws its weights at std
  # (f r)^-1/2 and multiplies by r^1/2, so the effective weights have LeCun's std f^-1/2.
  params = models.get("mlp_1x2048_mup").build(10).init(jax.random.key(3), x)["params"]
  std = float(np.std(np.asarray(params["Dense_0"]["kernel"])))
  np.testing.assert_allclose(std, (64 * 4) ** -0.5, rtol=0.02)
  std_out = float(np.std(np.asarray(params["Dense_1"]["kernel"])))
  np.testing.assert_allclose(std_out, 2048 ** -0.5, rtol=0.03)


@pytest.mark.parametrize("width", [64, 1024])
def test_mean_field_trains_as_mup_under_sgd(width):
  """One hidden layer: mean field's 1/width output and width-scaled rates give the same
  effective weights and rates as muP's multipliers, so under SGD (momentum and weight decay
  included: the decay shrinks every layer by the same factor whatever its rate) the two
  train to the same outputs up to float rounding, at a width away from the base too."""
  x, _ = _batch()
  outs = []
  for preset in ("mup", "mean_field"):
    module, state, _ = _run(f"mlp_1x{width}_{preset}", _settings(weight_decay=True), 5, 0.05,
                            weight_decay=0.05)
    outs.append(np.asarray(module.apply({"params": state.params}, x)))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)
  # ... and they did train: the logits moved from the initial ones.
  start = _run(f"mlp_1x{width}_mup", _settings(), 0, 0.05)
  moved = np.abs(outs[0] - np.asarray(start[0].apply({"params": start[1].params}, x)))
  assert moved.mean() > 1e-3


def _coordinate_changes(preset, width, optimizer, lr, steps=3):
  """Mean |change| of the last hidden layer's pre-activations and of the logits, per
  coordinate, after ``steps`` steps (Yang et al.'s coordinate check)."""
  name = f"mlp_2x{width}" + ("" if preset == "standard" else f"_{preset}")
  module, state, initial = _run(name, _settings(optimizer), steps, lr)
  x, _ = _batch(seed=7)

  def features(params):
    out, inter = module.apply({"params": params}, x, capture_intermediates=True)
    return inter["intermediates"]["Dense_1"]["__call__"][0], out

  (h1, f1), (h0, f0) = features(state.params), features(initial)
  return float(jnp.mean(jnp.abs(h1 - h0))), float(jnp.mean(jnp.abs(f1 - f0)))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,lr", [("sgd_momentum", 0.02), ("adamw", 1e-3)])
def test_coordinate_check(optimizer, lr):
  """After a few steps, the change of the hidden pre-activations and of the output is flat
  in width under muP (slope against log width near 0) and grows under standard."""
  widths = [128, 512, 2048]
  slopes = {}
  for preset in ("standard", "mup"):
    changes = np.array([_coordinate_changes(preset, w, optimizer, lr) for w in widths])
    slopes[preset] = [np.polyfit(np.log(widths), np.log(changes[:, j]), 1)[0] for j in (0, 1)]
  hidden_mup, out_mup = slopes["mup"]
  hidden_sp, out_sp = slopes["standard"]
  assert abs(hidden_mup) < 0.15 and abs(out_mup) < 0.15, slopes
  assert out_sp > 0.35, slopes  # standard's output change grows about as width^1/2 or faster
  assert hidden_sp > hidden_mup + 0.2, slopes


def test_growing_output_scale_follows_the_linearization():
  """Chizat and Bach: alpha (f(w) - f(w_0)) trained at lr / alpha^2 stays ever closer to its
  linearization as alpha grows (the gap shrinks about as 1/alpha)."""
  x, y = _batch()
  gaps = []
  for scale in (1.0, 10.0, 100.0):
    module, state, initial = _run("mlp_1x256", _settings(center=True), 20, 0.5, scale)
    trained = scale * (module.apply({"params": state.params}, x)
                       - module.apply({"params": initial}, x))
    linear = _linear_after(module, initial, x, y, scale)
    gaps.append(float(jnp.linalg.norm(trained - linear) / jnp.linalg.norm(linear)))
  assert gaps[0] > gaps[1] > gaps[2], gaps
  assert gaps[2] < 0.05 * gaps[0], gaps


def _linear_after(module, initial, x, y, scale, steps=20, lr=0.5):
  """alpha J(w_0) (w - w_0), the model's linearization at its initialization, trained here
  (jax.jvp) by the same SGD with momentum 0.9 at lr / alpha^2: its outputs after ``steps``."""
  def logits(w):
    delta = jax.tree.map(lambda a, b: a - b, w, initial)
    return scale * jax.jvp(lambda p: module.apply({"params": p}, x), (initial,), (delta,))[1]

  def loss(w):
    logp = jax.nn.log_softmax(logits(w))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))

  grad = jax.jit(jax.grad(loss))
  w, v = initial, jax.tree.map(jnp.zeros_like, initial)
  for _ in range(steps):
    v = jax.tree.map(lambda v, g: 0.9 * v + g, v, grad(w))
    w = jax.tree.map(lambda w, v: w - lr / scale ** 2 * v, w, v)
  return logits(w)


def test_weight_change_in_every_row(tiny_config):
  """Each evaluation's relative weight change, overall and of the first and last layer,
  equals ||w - w_0|| / ||w_0|| computed here from the trained state and the initialization
  drawn again from the replica's seed."""
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0])]
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(256, 128)
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  states, _ = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(15))
  ev = jax.device_get(program.evaluate(states, reps, d))
  module = models.get(config.model).build(dataset.num_classes)
  for i, r in enumerate(replicas):
    key = randomize.keys(np.uint32(r.seed), np.uint32(
        randomize.randomization_salt(r.kind, r.corruption)))[0]
    w0 = module.init(key, jnp.zeros((1, *d.test_images.shape[1:])), train=False)["params"]
    w = jax.tree.map(lambda a, i=i: np.asarray(a[i]), states.params)
    norm = lambda t: np.sqrt(sum(np.sum(np.square(a, dtype=np.float64))
                                 for a in jax.tree.leaves(t)))
    diff = jax.tree.map(lambda a, b: a - np.asarray(b), w, w0)
    np.testing.assert_allclose(ev["weight_change"][i], norm(diff) / norm(w0), rtol=1e-4)
    np.testing.assert_allclose(ev["weight_change_first"][i],
                               norm(diff["Dense_0"]) / norm(w0["Dense_0"]), rtol=1e-4)
    np.testing.assert_allclose(ev["weight_change_last"][i],
                               norm(diff["Dense_1"]) / norm(w0["Dense_1"]), rtol=1e-4)
    assert 0 < ev["weight_change_first"][i] < 1


@pytest.mark.parametrize("fields,message", [
    (["--config.parameterization=mu"], "unknown parameterization 'mu': choose one of"),
    (["--config.model=alexnet_small", "--config.parameterization=mup"],
     "model alexnet_small takes no parameterization"),
    (["--config.model=mlp_3x64_mean_field"], "mean_field is defined for one hidden layer"),
    (["--config.output_scale=0.0"], "output_scale=0.0 must be a positive number"),
    (["--config.grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], "
      "output_scales=[1, -10])]"], "output scale -10 must be a positive number"),
])
def test_bad_input_is_one_line(tmp_path, fields, message):
  out = subprocess.run([sys.executable, "-m", "zhang", "train", "--config", "configs/digits.py",
                        "--workdir", str(tmp_path / "run"), *fields],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr
  assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert not (tmp_path / "run").exists()


def test_lr_scales_follow_the_presets():
  """The rates each preset gives a width-2048 two-hidden-layer MLP (base width 512, r = 4):
  TP5's muP (Adam: 1/sqrt(r), 1/r, 1/sqrt(r); SGD: 1 on weights, r on hidden biases), and
  NTK's constants f0 (SGD) and sqrt(f0) (Adam)."""
  x, _ = _batch()
  params = models.get("mlp_2x2048").build(10).init(jax.random.key(0), x)["params"]
  mup = lambda opt: parameterization.lr_scales("mup", params, 2048, opt)
  assert [mup("adamw")[f"Dense_{i}"]["kernel"] for i in range(3)] == [0.5, 0.25, 0.5]
  assert [mup("sgd_momentum")[f"Dense_{i}"]["bias"] for i in range(3)] == [4.0, 4.0, 1.0]
  ntk = parameterization.lr_scales("ntk", params, 2048, "sgd_momentum")
  assert [ntk[f"Dense_{i}"]["kernel"] for i in range(3)] == [64.0, 512.0, 512.0]


def test_kernel_movement_against_full_jacobians(fitting_config, tmp_path, capsys):
  """`zhang ntk RUN --steps all`'s kernel distance and centred alignment, for a run trained
  at two output scales, equal the formulas applied here to kernels built from full
  per-example jacobians (jax.jacrev) of the checkpointed parameters; step 0 has distance 0."""
  from zhang.probes import run as run_lib
  from zhang.probes.ntk import movement
  config = fitting_config(freeze_at_fit=False, stop_at_fit=False, max_steps=200,
                          grid=[dict(kinds=["labels"], corruptions=[0.0], seeds=[0],
                                     learning_rates=[0.05], output_scales=[1.0, 10.0])])
  train.run(config, tmp_path / "run", progress=False)
  n = 24
  result = movement.compute(tmp_path / "run", "all", n, log=lambda msg: None)
  assert result["settings"]["steps"] == [0, 100, 200]
  run = run_lib.open(tmp_path / "run")
  module, c = run.module, run.dataset.num_classes
  k0 = {}
  for t in (0, 200):
    state = run.state(t)
    for r in run.replicas:
      params, _ = run.variables(state, r)
      x = np.asarray(run.inputs(r, run_lib.TRAIN))[:n]
      jac = jax.jacrev(lambda p, x=x: module.apply({"params": p}, x, train=False))(params)
      flat = np.concatenate([np.asarray(j).reshape(n, c, -1) for j in jax.tree.leaves(jac)],
                            axis=-1).astype(np.float64)
      k = np.einsum("icp,jcp->ij", flat, flat) / c
      k0.setdefault(r.index, k)
      distance = 1 - np.sum(k0[r.index] * k) / (np.linalg.norm(k0[r.index]) * np.linalg.norm(k))
      y = np.eye(c)[run.labels[r.index][:n]]
      h = np.eye(n) - 1.0 / n
      kc, yc = h @ k @ h, h @ y @ y.T @ h
      alignment = np.sum(kc * yc) / (np.linalg.norm(kc) * np.linalg.norm(yc))
      row = next(w for w in result["rows"] if w["replica"] == r.index and w["step"] == t)
      np.testing.assert_allclose(row["kernel_distance"], distance, atol=2e-5)
      np.testing.assert_allclose(row["alignment"], alignment, rtol=1e-4)
      assert row["output_scale"] == r.output_scale
  # The probes that read the network's own outputs refuse such a run, in one line.
  from zhang.errors import UsageError
  from zhang.probes.measures import probe as measures_probe
  with pytest.raises(UsageError, match="trained alpha .* at output scales 10: use `zhang ntk"):
    measures_probe.open_runs(tmp_path / "run")
  # A step without a checkpoint: one line, exit 2, nothing written.
  from zhang import cli
  assert cli.main(["ntk", str(tmp_path / "run"), "--steps", "150",
                   "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err.strip()
  assert "--steps '150' must be 'all' or saved steps" in err and len(err.splitlines()) == 1
  assert not (tmp_path / "out").exists()
  moved = {w["replica"]: w["kernel_distance"] for w in result["rows"] if w["step"] == 200}
  assert all(v > 0 for v in moved.values())
  assert all(w["kernel_distance"] == 0 for w in result["rows"] if w["step"] == 0)
