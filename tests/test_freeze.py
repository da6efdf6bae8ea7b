"""``freeze_at_fit``: each replica stops at its own fit, as if trained alone with
``stop_at_fit``; off, the program and its results are as without the field."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_checkpoint import _assert_same, _final

from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import data, loop, step, train
from zhang.probes import run as run_lib
from zhang.rundir import checkpoint, metrics

MAX_STEPS = 80


def _config(freeze: bool = True, corruptions=(0.0, 1.0)):
  """MLP on 128 digits: true labels fit at step 50, random labels not by step 80. Every
  evaluation (each 10 steps) is checkpointed, so the fit step's state is on disk."""
  c = config_lib.base_config()
  c.model = "mlp_1x512"
  c.dataset = "digits"
  c.n_train, c.n_test = 128, 64
  c.batch_size = 32
  c.max_steps = MAX_STEPS
  c.eval_every = c.checkpoint_every = 10
  c.keep_checkpoints = 20
  c.eval_batch_size = 128
  c.lr_decay_every = 25
  c.freeze_at_fit = freeze
  c.grid = [dict(kinds=["labels"], corruptions=list(corruptions), seeds=[0])]
  return c


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("frozen") / "run"
  return workdir, train.run(_config(), workdir, progress=False)


def _rows(workdir) -> dict:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {(r["step"], r["replica"]): r for r in rows}


@pytest.mark.slow
def test_a_replica_frozen_at_its_fit_is_the_replica_trained_alone_to_its_fit(
    frozen_run, tmp_path):
  workdir, summary = frozen_run
  early, late = summary["replicas"]
  fit = early["fit_step"]
  assert summary["status"] == "complete" and summary["steps_run"] == MAX_STEPS
  assert fit is not None and fit < MAX_STEPS and late["fit_step"] in (None, *range(fit + 1, 81))
  final, at_fit = checkpoint.load(workdir), checkpoint.load(workdir, fit)
  assert final["step"] == MAX_STEPS
  # Frozen: every array of the early replica as it was at its fit, to the bit; the late
  # replica trained on.
  for part in ("params", "batch_stats", "opt_state"):
    for a, b in zip(jax.tree.leaves(final[part]), jax.tree.leaves(at_fit[part])):
      np.testing.assert_array_equal(a[0], b[0])
  assert not any(np.array_equal(a[1], b[1]) for a, b in zip(
      jax.tree.leaves(final["params"]), jax.tree.leaves(at_fit["params"])))
  # Still evaluated, with the same results at every evaluation after the fit.
  rows = _rows(workdir)
  for s in range(fit, MAX_STEPS + 1, 10):
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
      assert rows[(s, 0)][key] == rows[(fit, 0)][key], (s, key)
  assert rows[(MAX_STEPS, 1)]["train_loss"] != rows[(fit, 1)]["train_loss"]
  # The early replica alone, stopped at its fit: the same parameters. Alone it is a grid of
  # one (another program than a vmapped grid of two), so equal to float rounding, to the
  # tolerance of test_train.py's test_vmapped_equals_separate.
  alone = train.run(_config(freeze=False, corruptions=[0.0]), tmp_path / "alone",
                    progress=False)
  assert alone["steps_run"] == fit and alone["replicas"][0]["fit_step"] == fit
  alone_params = checkpoint.load(tmp_path / "alone")["params"]
  for a, b in zip(jax.tree.leaves(final["params"]), jax.tree.leaves(alone_params)):
    np.testing.assert_allclose(a[0], b[0], rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_a_killed_frozen_run_resumes_bit_identical(frozen_run, tmp_path):
  """Killed after the fit (the checkpoints past step 60 lost): the resumed run takes the
  frozen replicas from the checkpoint's fit steps and ends as the uninterrupted one."""
  workdir, summary = frozen_run
  assert summary["replicas"][0]["fit_step"] < 60
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  for s in range(70, MAX_STEPS + 1, 10):
    shutil.rmtree(copy / "checkpoints" / str(s))
  resumed = train.run(_config(), copy, progress=False)
  assert resumed["status"] == "complete" and not resumed.get("already_complete")
  _assert_same(_final(copy), _final(workdir))


@pytest.mark.slow
def test_a_frozen_run_opens_as_a_probe_sees_it(frozen_run):
  workdir, summary = frozen_run
  run = run_lib.open(workdir)
  assert run.config.freeze_at_fit and run.settings.freeze
  rows, recorded = run.evaluate(MAX_STEPS), _rows(workdir)
  for row in rows:
    want = recorded[(MAX_STEPS, row["replica"])]
    assert row["train_acc"] == pytest.approx(want["train_acc"], abs=1e-6)
    assert row["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5, abs=1e-6)


def _chunks(config, masks, steps=4):
  """The initial states, and ``steps`` steps of the config's train chunk from them for
  each of ``masks`` (None: no mask), as (states, losses)."""
  config = config_lib.resolve(config)
  replicas = config_lib.expand_grid(config)
  program, d, reps, states, _ = train.build(config, replicas,
                                            data.load("digits").subset(128, 64))
  out = []
  for mask in masks:
    extra = () if mask is None else (None, jnp.asarray(mask))
    trained, loss = program.train_chunk(jax.tree.map(jnp.copy, states), reps, d,
                                        jnp.asarray(0), jnp.asarray(steps), *extra)
    out.append((jax.device_get(trained), np.asarray(loss)))
  return jax.device_get(states), out


@pytest.mark.slow
def test_off_the_chunk_is_unchanged_and_a_mask_freezes_only_its_replicas():
  """The flag off, absent or on with nothing frozen: the same bits. A frozen replica keeps
  its state; the other trains as without the mask; both losses are computed."""
  start, [(off, loss_off)] = _chunks(_config(freeze=False), [None])
  _, [(none_frozen, loss_none), (one_frozen, loss_one)] = _chunks(
      _config(), [[False, False], [True, False]])
  for a, b, c, s in zip(*map(jax.tree.leaves, (off, none_frozen, one_frozen, start))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c[0], s[0])
    np.testing.assert_array_equal(c[1], a[1])
  assert not np.array_equal(jax.tree.leaves(off.params)[0][0],
                            jax.tree.leaves(start.params)[0][0])
  np.testing.assert_array_equal(loss_off, loss_none)
  np.testing.assert_array_equal(loss_one[1], loss_off[1])
  assert np.all(np.isfinite(loss_one))
  absent = config_lib.base_config()
  del absent["freeze_at_fit"]
  assert not step.StepSettings.from_config(absent, []).freeze


def test_the_hash_of_runs_before_the_field_is_kept(tmp_path):
  """A run's config.json without the field is the same experiment as freeze_at_fit=False;
  True is another."""
  config = config_lib.resolve(_config(freeze=False))
  old = config_lib.to_json_dict(config)
  del old["freeze_at_fit"]
  assert config_lib.identity(old) == config_lib.identity(config)
  metrics.write_config(tmp_path, old)
  train.check_workdir(tmp_path, config, restart=False)
  on = config_lib.resolve(_config(freeze=True))
  assert checkpoint.config_hash(config_lib.identity(on)) != checkpoint.config_hash(
      config_lib.identity(config))
  with pytest.raises(UsageError, match=r"differs in freeze_at_fit\)"):
    train.check_workdir(tmp_path, on, restart=False)


def test_the_mask_is_the_fitted_replicas_never_the_padding():
  fits = metrics.Fits([None] * 3, np.zeros(3), 1.0, 0.99, 32, 128)
  fits.fit_step = [50, None, 10]
  np.testing.assert_array_equal(loop.frozen_replicas(fits, 4), [True, False, True, False])


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_value_is_one_line(value):
  c = ml_collections.ConfigDict(dict(_config().to_dict(), freeze_at_fit=value))
  with pytest.raises(UsageError, match=r"^freeze_at_fit=.* must be true or false, e.g. "
                     r"--config.freeze_at_fit=true$"):
    config_lib.resolve(c)
  with pytest.raises(UsageError, match="cannot set freeze_at_fit to 'maybe'"):
    config_lib.apply_override(_config(), "freeze_at_fit=maybe")
  overridden = _config(freeze=False)
  config_lib.apply_override(overridden, "freeze_at_fit=true")
  assert overridden.freeze_at_fit is True
