import dataclasses
import functools
import hashlib
import json
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zhang.experiment import config as config_lib
from zhang.experiment import data, evaluate, models, randomize, resume, step, train
from zhang.rundir import checkpoint
from zhang.runtime import plan as plan_lib


def _train(config, replicas, dataset, steps):
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  states, _ = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(steps))
  # Cross an epoch boundary with a second chunk that starts mid-epoch.
  states, _ = program.train_chunk(states, reps, d, jnp.asarray(steps), jnp.asarray(steps))
  return states, jax.device_get(program.evaluate(states, reps, d))


@pytest.mark.slow
def test_vmapped_equals_separate(tiny_config):
  """Replicas trained together equal each trained alone, with different kinds, corruption
  levels, learning rates and weight decays in one grid."""
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[0.5], seeds=[1],
                           learning_rates=[0.003, 0.05], weight_decays=[0.0, 0.01]),
                      dict(kinds=["labels"], corruptions=[0.0], seeds=[1]),
                      dict(kinds=["random_pixels", "gaussian"], corruptions=[0.0], seeds=[3])]
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(256, 128)
  together, ev = _train(config, replicas, dataset, 13)
  for i, r in enumerate(replicas):
    alone, ev1 = _train(config, [dataclasses.replace(r, index=0)], dataset, 13)
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone)):
      np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b[0]), rtol=2e-4, atol=2e-5)
    for k in ev:
      np.testing.assert_allclose(ev[k][i], ev1[k][0], rtol=1e-4, atol=1e-5)
  # And the replicas really differ from each other, the hyper-parameters included.
  params = jax.tree.leaves(together)[0]
  assert len(replicas) == 7
  assert not any(np.allclose(params[i], params[j]) for i in range(4) for j in range(i))


def test_a_hyper_parameter_differs_only_in_itself(tiny_config):
  """Replicas that differ only in learning rate or weight decay start from the same
  parameters with the same labels and batch order (a paired comparison), and one compiled
  chunk trains new values without recompiling."""
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[0.5], seeds=[2],
                           learning_rates=[0.01, 0.03], weight_decays=[0.0, 1e-3])]
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  assert [(r.learning_rate, r.weight_decay) for r in replicas] == [
      (0.01, 0.0), (0.01, 1e-3), (0.03, 0.0), (0.03, 1e-3)]
  dataset = data.load("digits").subset(256, 128)
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  for leaf in jax.tree.leaves(states.params):
    assert all(np.array_equal(leaf[0], leaf[i]) for i in range(4))
  assert all(np.array_equal(reps.labels[0], reps.labels[i]) for i in range(4))
  np.testing.assert_allclose(np.asarray(reps.learning_rate), [0.01, 0.01, 0.03, 0.03])
  trained, _ = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(5))
  first = jax.tree.leaves(trained.params)[0]
  assert not np.allclose(first[0], first[2]) and not np.allclose(first[0], first[1])
  # Other rates and decays: the same compiled chunk.
  _, again = program.train_chunk(
      jax.tree.map(jnp.copy, trained), reps._replace(learning_rate=reps.learning_rate * 2,
                                                      weight_decay=reps.weight_decay + 1e-4),
      d, jnp.asarray(5), jnp.asarray(5))
  assert program.train_chunk._cache_size() == 1
  assert np.all(np.isfinite(np.asarray(again)))


@pytest.mark.slow
def test_train_step_is_sgd_momentum_with_l2_on_the_replicas_own_rate():
  """One replica's step, two steps deep, against the update written out: v = m v + g + wd w,
  w -= lr * schedule(step) * v."""
  module = models.get("mlp_1x512").build(3)
  settings = step.StepSettings(batch_size=4, momentum=0.9, lr_decay=0.5, lr_decay_every=1,
                               eval_batch_size=4, segments=(("labels", 0, 1),))
  x = jax.random.normal(jax.random.key(1), (4, 2, 2, 1))
  y = jnp.asarray([0, 1, 2, 1])
  state = step.init_state(module, settings, jax.random.key(0), x[:1])
  apply = functools.partial(step.apply_model, module, plan_lib.Plan(), settings, False)
  lr, wd = 0.1, 0.01
  w, v = state.params, jax.tree.map(jnp.zeros_like, state.params)

  def loss(p):
    logits = module.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  for t in range(2):
    state, _ = step.train_step(apply, settings, None, state, x, y, lr, wd, 1.0, None,
                               step.schedule(0.5, 1)(t))
    g = jax.grad(loss)(w)
    v = jax.tree.map(lambda v, g, w: 0.9 * v + g + wd * w, v, g, w)
    w = jax.tree.map(lambda w, v, t=t: w - lr * 0.5 ** t * v, w, v)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def _evaluated(tiny_config, steps: int):
  """The grid of ``tiny_config`` on 70 / 45 digits (evaluation batches of 32) after
  ``steps`` steps: (config, replicas, dataset, (program, data, reps, states), metrics)."""
  tiny_config.n_train, tiny_config.n_test, tiny_config.eval_batch_size = 70, 45, 32
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(70, 45)
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  states, _ = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(steps))
  return (config, replicas, dataset, (program, d, reps, states),
          jax.device_get(program.evaluate(states, reps, d)))


def test_evaluate_equals_a_direct_computation(tiny_config):
  """The compiled evaluation (both splits' batches in one loop, the last batch of each
  split partial, the test split smaller than a batch's worth of the train split) against
  each replica's model applied to its randomized train and test images in one go."""
  config, replicas, dataset, (program, d, reps, states), ev = _evaluated(tiny_config, 5)
  module = models.get(config.model).build(dataset.num_classes)

  @functools.partial(jax.jit, static_argnums=(0, 1))  # compiled, not run op by op
  def direct_logits(kind, split, params, rep, images):
    x = randomize.randomize_inputs(kind, rep.rand_key, data.scale(images),
                                   jnp.arange(images.shape[0]), split, rep.shared_perm,
                                   d.gauss_mean, d.gauss_std)
    return module.apply({"params": params}, data.whiten(x), train=False)

  for i, r in enumerate(replicas):
    rep = jax.tree.map(operator.itemgetter(i), reps)
    params = jax.tree.map(operator.itemgetter(i), states.params)
    for split, images, labels, prefix in (
        (randomize.TRAIN, d.train_images, rep.labels, "train"),
        (randomize.TEST, d.test_images, d.test_labels, "test")):
      logits = np.asarray(direct_logits(r.kind, split, params, rep, images), np.float64)
      logp = logits - logits.max(-1, keepdims=True)
      logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
      labels = np.asarray(labels)
      expected = {"loss": -logp[np.arange(len(labels)), labels].mean(),
                  "acc": (logits.argmax(-1) == labels).mean()}
      if prefix == "test":
        expected["confidence"] = np.exp(logp).max(-1).mean()
        expected["entropy"] = -(np.exp(logp) * logp).sum(-1).mean()
      for k, v in expected.items():
        np.testing.assert_allclose(ev[f"{prefix}_{k}"][i], v, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{r.kind} {prefix}_{k}")
  # Not all equal: the replicas and splits really were evaluated on their own inputs.
  assert len(set(np.round(ev["test_loss"], 4))) == len(replicas)


def test_top5_accuracies_count_labels_among_the_five_highest_logits(tiny_config,
                                                                    monkeypatch):
  """With more classes than ``evaluate.TOP5_FROM`` (here lowered to digits' 10), each row has
  train and test top-5 accuracies: against numpy's ranking of each replica's logits."""
  monkeypatch.setattr(evaluate, "TOP5_FROM", 5)
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[0.0, 0.5], seeds=[0])]
  config, replicas, dataset, (program, d, reps, states), ev = _evaluated(tiny_config, 3)
  module = models.get(config.model).build(dataset.num_classes)
  for i in range(len(replicas)):
    params = jax.tree.map(operator.itemgetter(i), states.params)
    for images, labels, prefix in ((d.train_images, reps.labels[i], "train"),
                                   (d.test_images, d.test_labels, "test")):
      x = data.whiten(data.scale(images))
      logits = np.asarray(module.apply({"params": params}, x, train=False))
      top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
      expected = np.mean([y in row for y, row in zip(np.asarray(labels), top5)])
      np.testing.assert_allclose(ev[f"{prefix}_top5"][i], expected, rtol=1e-6)
      assert ev[f"{prefix}_top5"][i] >= ev[f"{prefix}_acc"][i]
  monkeypatch.undo()
  assert "test_top5" not in jax.device_get(  # 10 classes are not many
      train.build(config, replicas, dataset)[0].evaluate(states, reps, d))


def test_run_writes_the_contract(tiny_config, tmp_path):
  summary = train.run(tiny_config, tmp_path, progress=False)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"] == "mlp_1x512"
  # Both JSON files carry the run-file format; the config's hash is of its fields alone
  # (the same experiment keeps its hash whatever format its files are written in), but a
  # field added later at the default that trains as before (config_lib.LATER_DEFAULTS).
  assert config.pop("format") == 1
  assert json.loads((tmp_path / "summary.json").read_text())["format"] == 1
  assert "format" not in summary
  assert config.pop("freeze_at_fit") is False
  assert config.pop("binary") is False
  assert config.pop("parameterization") == "standard"
  assert config.pop("output_scale") == 1.0
  assert config.pop("dropout") == 0.0
  assert (config.pop("stream"), config.pop("batch_order"), config.pop("order_seed"),
          config.pop("image_size")) == (False, "replica", 0, 0)
  assert config.pop("stream_workers") == 0  # how it runs: never in the hash
  assert summary["config_hash"] == hashlib.sha256(
      json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
  config["freeze_at_fit"] = False
  config["binary"] = False
  config["parameterization"], config["output_scale"], config["dropout"] = "standard", 1.0, 0.0
  config.update(stream=False, batch_order="replica", order_seed=0, stream_workers=0,
                image_size=0)
  assert config == config_lib.to_json_dict(config_lib.resolve(tiny_config))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  r = len(summary["replicas"])
  assert r == 7
  steps = sorted({row["step"] for row in rows})
  assert steps[0] == 0 and steps[-1] == summary["steps_run"]
  assert len(rows) == r * len(steps)
  assert len({(row["step"], row["replica"]) for row in rows}) == len(rows)
  for key in ("step", "epoch", "replica", "kind", "corruption", "seed", "learning_rate",
              "weight_decay", "augmentation", "train_loss", "train_acc", "test_loss",
              "test_acc", "test_confidence"):
    assert key in rows[-1]
  # Each row's lr is the replica's rate after the schedule (x0.95 every 25 steps here).
  for row in rows:
    assert row["lr"] == pytest.approx(row["learning_rate"] * 0.95 ** (row["step"] // 25))
  assert on_disk_plan(tmp_path) == str(plan_lib.choose("mlp_1x512", 7))
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk["status"] == "complete"
  for rep in on_disk["replicas"]:
    for key in ("replica", "kind", "corruption", "seed", "learning_rate", "weight_decay",
                "augmentation", "label_noise", "fit_step", "fit_epoch", "final_train_acc",
                "final_test_acc", "test_confidence"):
      assert key in rep
    assert (rep["learning_rate"], rep["weight_decay"], rep["augmentation"]) == (
        0.01, 0.0, "none")
  kinds = [rep["kind"] for rep in on_disk["replicas"]]
  assert kinds == ["labels"] * 4 + ["shuffled_pixels", "random_pixels", "gaussian"]
  clean = [rep for rep in on_disk["replicas"] if rep["corruption"] == 0.0]
  assert all(rep["label_noise"] == 0.0 for rep in clean)
  noisy = [rep for rep in on_disk["replicas"] if rep["corruption"] == 0.5]
  assert all(0.3 < rep["label_noise"] < 0.6 for rep in noisy)
  # The last metrics rows are the summary's final values.
  last = {row["replica"]: row for row in rows if row["step"] == steps[-1]}
  for rep in on_disk["replicas"]:
    assert rep["final_train_acc"] == pytest.approx(last[rep["replica"]]["train_acc"])
  # Timing: train calls (the first one step long) and an evaluation before each interval
  # and at the end; the first call of each compiles and counts apart.
  t = on_disk["timing"]
  assert t["train_steps"] == summary["steps_run"] - 1 and t["evaluations"] == len(steps) - 1
  assert t["train_seconds"] > 0 and t["eval_seconds"] > 0 and t["first_call_seconds"] > 0
  assert t["train_ms_per_step"] == pytest.approx(1e3 * t["train_seconds"] / t["train_steps"])
  assert t["eval_images"] == 256 + 128
  per_image = t["eval_seconds"] / t["evaluations"] / 384
  per_example = t["train_seconds"] / t["train_steps"] / 32
  assert t["eval_cost"] == pytest.approx(per_image / per_example)
  assert t["eval_share"] == pytest.approx(
      t["eval_seconds"] / (t["eval_seconds"] + t["train_seconds"]))


def on_disk_plan(workdir):
  return json.loads((workdir / "summary.json").read_text())["plan"]


@pytest.mark.slow
def test_end_to_end_digits_true_labels_generalize_random_labels_memorize(tmp_path):
  c = config_lib.load("configs/digits.py")
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0])]
  c.n_train = 500  # random labels memorized in about 1,100 steps (all 1,438: 5,200)
  summary = train.run(c, tmp_path, progress=False)
  true, rand = summary["replicas"]
  assert true["fit_step"] is not None and true["final_test_acc"] > 0.9
  assert rand["fit_step"] is not None and rand["final_train_acc"] == 1.0
  assert rand["fit_step"] > true["fit_step"]
  # Chance is 10%: 359 test images, binomial sd about 1.6%.
  assert abs(rand["final_test_acc"] - 0.1) < 0.06
  assert 0.85 < rand["label_noise"] < 0.95
  # Stops as soon as every replica has fitted.
  assert summary["steps_run"] == rand["fit_step"]


@pytest.mark.slow
def test_batch_norm_statistics_are_per_replica(tiny_config):
  tiny_config.model = "inception_small"
  tiny_config.n_train, tiny_config.n_test = 32, 16
  tiny_config.batch_size = 8
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[0.0], seeds=[0, 1])]
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(32, 16)
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  before = jax.tree.map(np.asarray, states.batch_stats)
  states, loss = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(2))
  after = jax.tree.map(np.asarray, states.batch_stats)
  means = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(after)[0]
           if "mean" in str(path)]
  assert len(means) == 19  # one batch norm per conv module
  for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    assert a.shape[0] == 2 and not np.allclose(a, b)  # updated in training
  # Each replica keeps statistics of its own batches.
  assert all(not np.allclose(m[0], m[1]) for m in means)
  assert np.all(np.isfinite(np.asarray(loss)))


def _short_run(config, steps, plan=None):
  config = config_lib.resolve(config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(config.n_train, config.n_test)
  program, d, reps, states, _ = train.build(config, replicas, dataset, plan=plan)
  states, _ = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(steps))
  return jax.device_get(program.evaluate(states, reps, d)), states


@pytest.mark.slow
@pytest.mark.parametrize("model,steps,tol", [("mlp_1x512", 40, 1e-5),
                                              ("inception_small_nobn", 2, 1e-3)])
def test_execution_plans_give_the_same_results(tiny_config, model, steps, tol):
  """The plan changes speed, not results: each of the four plans (vmap against a loop over
  replicas, JAX's gradients against zhang/runtime/layers.py's) against the first. The conv net is
  the one tests/test_layers.py leaves out of its gradient comparison in training."""
  tiny_config.model = model
  tiny_config.learning_rate = 0.001
  if model != "mlp_1x512":
    # Small batches: inside the step loop JAX's conv gradients take about half a second per
    # image on 2 CPU cores.
    tiny_config.n_train, tiny_config.n_test, tiny_config.batch_size = 32, 16, 4
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0]),
                      dict(kinds=["random_pixels"], corruptions=[0.0], seeds=[1])]
  ev_ref, s_ref = _short_run(tiny_config, steps, "replicas=vmap,gradients=jax")
  for plan in ("replicas=map,gradients=jax", "replicas=vmap,gradients=explicit",
               "replicas=map,gradients=explicit"):
    ev, s = _short_run(tiny_config, steps, plan)
    for k in ev_ref:
      np.testing.assert_allclose(ev[k], ev_ref[k], rtol=tol, atol=tol, err_msg=plan)
    for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(s_ref.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32(tiny_config):
  tiny_config.max_steps = 60
  ev32, s32 = _short_run(tiny_config, 60)
  tiny_config.compute_dtype = "bfloat16"
  ev16, s16 = _short_run(tiny_config, 60)
  # Master weights stay float32; the curves agree to bf16's ~3 significant digits.
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(s16.params))
  np.testing.assert_allclose(ev16["train_loss"], ev32["train_loss"], rtol=0.03)
  np.testing.assert_allclose(ev16["train_acc"], ev32["train_acc"], atol=0.03)
  assert not np.array_equal(ev16["train_loss"], ev32["train_loss"])  # bf16 really ran


def _numpy_ece(confidence, correct, num_bins=15):
  """Expected calibration error: bins (i/K, (i+1)/K], |accuracy - confidence| by count."""
  edges = np.linspace(0, 1, num_bins + 1)
  which = np.digitize(confidence, edges[1:-1], right=True)
  ece, bins = 0.0, []
  for b in range(num_bins):
    inside = which == b
    if inside.any():
      ece += abs(correct[inside].mean() - confidence[inside].mean()) * inside.sum()
    bins.append([confidence[inside].mean() if inside.any() else np.nan,
                 correct[inside].mean() if inside.any() else np.nan, inside.sum()])
  return ece / len(confidence), np.asarray(bins)


def test_calibration_error_matches_numpy():
  """The device's binned sums and ECE against a direct numpy computation, on hand-made
  probabilities (confidence 1.0 and padding examples included)."""
  rng = np.random.default_rng(0)
  prob = rng.dirichlet(np.full(10, 0.3), size=(3, 200))
  prob[0, :5] = np.eye(10)[:5]  # confidence exactly 1
  labels = rng.integers(0, 10, size=(3, 200))
  confidence = prob.max(-1)
  correct = (prob.argmax(-1) == labels).astype(np.float64)
  weight = np.ones((3, 200))
  weight[:, -20:] = 0  # padding: counted nowhere
  bins = evaluate.calibration_bins(jnp.asarray(confidence, jnp.float32),
                               jnp.asarray(correct, jnp.float32), jnp.asarray(weight))
  ece = np.asarray(evaluate.expected_calibration_error(bins))
  for r in range(3):
    expected, expected_bins = _numpy_ece(confidence[r, :-20], correct[r, :-20])
    np.testing.assert_allclose(ece[r], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bins[r, :, 0]), expected_bins[:, 2])
    np.testing.assert_allclose(np.asarray(bins[r, :, 2]), np.nan_to_num(
        expected_bins[:, 1] * expected_bins[:, 2]), atol=1e-5)
  assert ece.min() > 0.05  # far from calibrated: the test can fail


def _host_logits(module, d, rep, params, images, split):
  """A label replica's logits on ``images`` of ``split``, its model applied in one go."""
  x = randomize.randomize_inputs("labels", rep.rand_key, data.scale(images),
                                 jnp.arange(images.shape[0]), split, rep.shared_perm,
                                 d.gauss_mean, d.gauss_std)
  return module.apply({"params": params}, data.whiten(x), train=False)


@pytest.mark.slow
def test_noisy_clean_accuracies_and_ece_match_a_host_recomputation(tiny_config, tmp_path):
  """A run's last rows against the checkpoint's models applied on the host: train accuracy
  on the clean and the corrupted examples (against both labels), the test ECE and its bins;
  replicas without corrupted labels have null noisy fields."""
  train.run(tiny_config, tmp_path, progress=False)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  summary = json.loads((tmp_path / "summary.json").read_text())
  ck = checkpoint.load(tmp_path)
  last = {row["replica"]: row for row in rows if row["step"] == ck["step"]}
  assert ck["step"] == summary["steps_run"] and len(last) == 7
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(256, 128)
  _, d, reps, _, _ = train.build(config, replicas, dataset)
  module = models.get(config.model).build(dataset.num_classes)
  true = np.asarray(dataset.train_labels)
  checked = 0
  for i, r in enumerate(replicas):
    row, rep_summary = last[i], summary["replicas"][i]
    for key in ("train_acc_clean", "train_acc_noisy", "train_acc_noisy_vs_true", "test_ece"):
      assert key in row
    if r.kind != "labels" or r.corruption == 0:
      assert row["train_acc_noisy"] is None and row["train_acc_noisy_vs_true"] is None
      assert row["train_acc_clean"] == pytest.approx(row["train_acc"])
    if r.kind != "labels":
      continue
    rep = jax.tree.map(operator.itemgetter(i), reps)
    params = jax.tree.map(operator.itemgetter(i), ck["params"])
    apply = jax.jit(functools.partial(_host_logits, module, d, rep), static_argnums=2)
    pred = np.asarray(apply(params, d.train_images, randomize.TRAIN)).argmax(-1)
    labels = np.asarray(rep.labels)
    noisy = labels != true
    assert noisy.any() == (r.corruption > 0)
    np.testing.assert_allclose(row["train_acc_clean"], (pred == labels)[~noisy].mean(),
                               atol=1e-6)
    if noisy.any():
      np.testing.assert_allclose(row["train_acc_noisy"], (pred == labels)[noisy].mean(),
                                 atol=1e-6)
      np.testing.assert_allclose(row["train_acc_noisy_vs_true"], (pred == true)[noisy].mean(),
                                 atol=1e-6)
      # Memorizing the corrupted labels, not predicting the true ones.
      assert row["train_acc_noisy"] != pytest.approx(row["train_acc_noisy_vs_true"])
    logits = np.asarray(apply(params, d.test_images, randomize.TEST), np.float64)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    correct = (logits.argmax(-1) == np.asarray(d.test_labels)).astype(np.float64)
    ece, bins = _numpy_ece(prob.max(-1), correct)
    np.testing.assert_allclose(row["test_ece"], ece, rtol=1e-4, atol=1e-5)
    assert rep_summary["test_ece"] == pytest.approx(row["test_ece"])
    got = np.asarray([[np.nan if v is None else v for v in b]
                      for b in rep_summary["test_reliability"]])
    np.testing.assert_allclose(got, bins, rtol=1e-4, atol=1e-5)
    checked += 1
  assert checked == 4


@pytest.mark.slow
def test_per_example_fit_times_follow_every_evaluation(tiny_config, tmp_path):
  """fit_times.npz against the checkpoints' models applied on the host at every evaluation:
  an example's fit step is the first evaluation from which it has been classified as its
  (corrupted) label at every evaluation since, -1 if it is not at the last; the file, the
  last checkpoint's item and the corruption mask agree."""
  tiny_config.checkpoint_every, tiny_config.keep_checkpoints = 20, 5
  summary = train.run(tiny_config, tmp_path, progress=False)
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(256, 128)
  _, d, reps, init, _ = train.build(config, replicas, dataset)
  module = models.get(config.model).build(dataset.num_classes)
  steps = resume.evaluation_steps(config, summary["steps_run"])
  assert steps == [0, 20, 40, 60]
  params = {0: init.params, **{s: checkpoint.load(tmp_path, s)["params"] for s in steps[1:]}}
  with np.load(tmp_path / "fit_times.npz") as f:
    fit, noisy, last = f["fit_step"], f["noisy"], int(f["step"])
  assert last == 60 and fit.shape == noisy.shape == (len(replicas), 256)
  true = np.asarray(dataset.train_labels)
  for i, r in enumerate(replicas):
    rep = jax.tree.map(operator.itemgetter(i), reps)
    x = data.whiten(randomize.randomize_inputs(
        r.kind, rep.rand_key, data.scale(d.train_images), jnp.arange(256), randomize.TRAIN,
        rep.shared_perm, d.gauss_mean, d.gauss_std))
    hits = np.stack([np.asarray(module.apply({"params": jax.tree.map(operator.itemgetter(i),
                                                                     params[s])},
                                             x, train=False)).argmax(-1) == np.asarray(rep.labels)
                     for s in steps])  # (evaluations, n)
    want = np.full(256, -1)
    for k, s in enumerate(steps):  # the update rule, evaluation by evaluation
      want = np.where(hits[k], np.where(want < 0, s, want), -1)
    np.testing.assert_array_equal(fit[i], want)
    np.testing.assert_array_equal(noisy[i], np.asarray(rep.labels) != true)
  assert (fit >= 0).any() and (fit == -1).any() and len(np.unique(fit)) >= 3
  with checkpoint.ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    item = manager.restore(60, args=checkpoint.ocp.args.Composite(
        fit_times=checkpoint.ocp.args.StandardRestore()))
  np.testing.assert_array_equal(np.asarray(item["fit_times"]["fit_step"])[:len(replicas)], fit)


def test_a_diverging_replica_is_recorded_and_shown_as_nan(tiny_config, tmp_path, capsys):
  """A learning rate far too high: the replicas whose train loss stops being finite are
  named in summary.json (``diverged_step``: the first evaluation where it is not), and the
  final table shows NaN instead of failing."""
  from zhang.cli import train as train_cli
  tiny_config.learning_rate = 50.0
  tiny_config.max_steps = 40
  summary = train.run(tiny_config, tmp_path, progress=False)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  for r in summary["replicas"]:
    losses = [(row["step"], row["train_loss"]) for row in rows if row["replica"] == r["replica"]]
    first = next((s for s, loss in losses if loss is None or not np.isfinite(loss)), None)
    assert r["diverged_step"] == first
  assert any(r["diverged_step"] is not None for r in summary["replicas"])
  capsys.readouterr()
  train_cli.print_run(summary, config_lib.resolve(tiny_config))
  out = capsys.readouterr().out
  diverged = [r for r in summary["replicas"] if r["diverged_step"] is not None]
  assert f"{len(diverged)} replica" in out and "diverged" in out
  assert " nan" in out


def test_epoch_orders_are_permutations_but_a_full_batch_keeps_the_identity():
  """Minibatches follow each replica's own permutation per epoch; a full batch takes the
  examples in their order (a permutation would only reorder the terms of the step's sum)."""
  keys = jax.vmap(lambda s: randomize.replica_keys(s, "labels", 0.0)[1])(jnp.arange(3))
  reps = step.ReplicaConstants(order_key=keys, rand_key=keys, labels=None, shared_perm=None,
                               learning_rate=None, weight_decay=None, augmentation=None)
  n = 50
  e0, e1 = (np.asarray(step.epoch_orders(reps, e, n, 10)) for e in (0, 1))
  for orders in (e0, e1):
    assert all(sorted(o) == list(range(n)) for o in orders)
  assert not np.array_equal(e0, e1) and not np.array_equal(e0[0], e0[1])
  np.testing.assert_array_equal(step.epoch_orders(reps, 0, n, n), np.tile(np.arange(n), (3, 1)))
