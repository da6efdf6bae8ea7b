"""Dropout at a per-replica rate (zhang/experiment/dropout.py): the masks, the grid axis
``dropouts``, the run's files, and the lines a bad rate gets."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang import cli
from zhang.analysis import load as analysis_load
from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import data, models, train
from zhang.experiment import dropout as dropout_lib


def _draw(rate, batch: int, step: int = 3, seed: int = 0):
  keys = dropout_lib.example_keys(jax.random.key(seed), step, jnp.arange(batch))
  return dropout_lib.Draw(jnp.float32(rate), keys)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_the_mask_is_each_unit_s_bits_against_the_rate(rate):
  """Each unit kept where the top 24 bits of its example's draw, as a fraction, are at least
  the rate, and multiplied by 1 / (1 - rate): numpy's computation from the same bits, to
  the bit."""
  x = jax.random.normal(jax.random.key(1), (4, 3, 5))
  draw = _draw(rate, 4)
  bits = np.stack([np.asarray(jax.random.bits(jax.random.fold_in(k, 0), (3, 5), jnp.uint32))
                   for k in draw.keys])
  keep = (bits >> 8).astype(np.float32) / np.float32(2 ** 24) >= np.float32(rate)
  scale = np.float32(1) / (np.float32(1) - np.float32(rate))
  expected = np.where(keep, np.asarray(x) * scale, 0)
  np.testing.assert_array_equal(jax.jit(dropout_lib.apply)(x, draw), expected)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_a_rate_keeps_about_one_minus_it_and_scales_by_its_inverse(rate):
  x = jnp.ones((64, 2048)) * 3.0
  y = np.asarray(jax.jit(dropout_lib.apply)(x, _draw(rate, 64)))
  kept = y != 0
  assert abs(kept.mean() - (1 - rate)) < 0.01  # 131,072 units: 4 sigma is under 0.006
  np.testing.assert_allclose(y[kept], 3.0 / (1 - rate), rtol=1e-6)
  # Every example draws its own mask.
  assert len({row.tobytes() for row in kept}) == 64


def test_rate_zero_is_the_identity_to_the_bit():
  x = jax.random.normal(jax.random.key(2), (8, 33)) * 1e3
  x = x.at[0, :4].set(jnp.asarray([-0.0, jnp.inf, -jnp.inf, 1e-30]))
  y = jax.jit(dropout_lib.apply)(x, _draw(0.0, 8))
  np.testing.assert_array_equal(np.asarray(y).view(np.uint32), np.asarray(x).view(np.uint32))


def test_an_example_s_mask_is_its_own_whatever_its_batch():
  """The same (replica key, step, example) gives the same mask in any batch position;
  another step, example or replica key another."""
  x = jnp.ones((2, 256))
  mask = lambda seed, step, indices: np.asarray(dropout_lib.apply(x, dropout_lib.Draw(
      jnp.float32(0.5), dropout_lib.example_keys(jax.random.key(seed), step,
                                                 jnp.asarray(indices)))) != 0)
  a = mask(0, 5, [3, 7])
  np.testing.assert_array_equal(mask(0, 5, [7, 3]), a[::-1])
  for other in (mask(0, 6, [3, 7]), mask(1, 5, [3, 7]), mask(0, 5, [4, 8])):
    assert not np.array_equal(other[0], a[0]) and not np.array_equal(other[1], a[1])


# --- A small model with dropout: the grid axis without Inception V3's compile time. ---------

class DropoutMLP(nn.Module):
  """Flatten, Dense 32, ReLU, the replica's dropout, Dense(num_classes)."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = True, dropout=None):
    x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    if dropout is not None:
      x = dropout_lib.apply(x, dropout)
    return nn.Dense(self.num_classes)(x)


@pytest.fixture
def dropout_config(monkeypatch):
  """A registered model with dropout on 64 digits; ``dropouts`` set by the test."""
  monkeypatch.setitem(models._MODELS, "dropout_mlp", models.ModelSpec(  # noqa: SLF001
      "dropout_mlp", DropoutMLP, 0.05, False, "MLP with dropout", dropout=True))
  c = config_lib.base_config()
  c.model, c.dataset = "dropout_mlp", "digits"
  c.n_train, c.n_test, c.batch_size = 64, 32, 16
  c.max_steps, c.eval_every, c.eval_batch_size = 8, 4, 64
  return c


def _trained(config, steps, chunks=(None,)):
  """Every replica's parameters after ``steps`` steps in chunks (``chunks``: their
  lengths, None for all at once), and the replicas."""
  config = config_lib.resolve(config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(64, 32)
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  step = 0
  for n in chunks:
    n = steps if n is None else n
    states, _ = program.train_chunk(states, reps, d, step, n)
    step += n
  return jax.tree.map(np.asarray, states.params), replicas, program.settings


@pytest.mark.slow
def test_a_grid_of_rates_trains_and_rate_zero_is_the_plain_model(dropout_config):
  """dropouts [0, 0.5]: one program; the rate-0 replica trains to the same bits as in a grid
  without dropout (whose program draws nothing), the other differs; and a run cut into
  chunks ends where one call does."""
  grid = dict(kinds=["labels"], corruptions=[0.0], seeds=[0])
  dropout_config.grid = [dict(grid, dropouts=[0.0, 0.5])]
  params, replicas, settings = _trained(dropout_config, 6)
  assert [r.dropout for r in replicas] == [0.0, 0.5] and settings.dropout
  dropout_config.grid = [grid]
  plain, replicas, settings = _trained(dropout_config, 6)
  assert [r.dropout for r in replicas] == [0.0] and not settings.dropout
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[0])
  dropout_config.grid = [dict(grid, dropouts=[0.0, 0.5])]
  cut = _trained(dropout_config, 6, chunks=(2, 4))[0]
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(cut)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_the_run_s_files_carry_each_replica_s_rate(dropout_config, tmp_path):
  """metrics.jsonl rows, summary.json entries and the analysis' hyper-parameters name the
  rate; a run written before the field reads as rate 0."""
  dropout_config.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0],
                              dropouts=[0.0, 0.25])]
  summary = train.run(dropout_config, tmp_path, progress=False)
  assert sorted(r["dropout"] for r in summary["replicas"]) == [0.0, 0.0, 0.25, 0.25]
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {row["dropout"] for row in rows} == {0.0, 0.25}
  run = analysis_load.load_run(tmp_path)
  assert "dropout" in analysis_load.HPARAMS
  assert sorted(set(run.metrics["dropout"])) == [0.0, 0.25]
  (tmp_path / "metrics.jsonl").write_text("".join(
      json.dumps({k: v for k, v in row.items() if k != "dropout"}) + "\n" for row in rows))
  assert set(analysis_load.load_run(tmp_path).metrics["dropout"]) == {0.0}


@pytest.mark.parametrize("overrides,line", [
    (["dropout=1.0"], "dropout=1.0 must be in [0, 1) (0 = none), e.g. --config.dropout=0.2"),
    (["dropout=-0.1"], "dropout=-0.1 must be in [0, 1)"),
    (["dropout=nan"], "dropout=nan must be in [0, 1)"),
    (["grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], dropouts=[0.5, 1.5])]"],
     "grid dropout=1.5 must be in [0, 1) (0 = none), e.g. dropouts=[0.0, 0.2] in the entry"),
    (["dropout=0.2"], "dropout=0.2, but model mlp_1x512 has no dropout (models with dropout: "
     "inception_v3): use --config.dropout=0, or a model with dropout"),
    (["grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], dropouts=[0.0, 0.5])]"],
     "grid dropout=0.5, but model mlp_1x512 has no dropout (models with dropout: "
     "inception_v3): use dropouts=[0.0] in the entry, or a model with dropout"),
])
def test_a_bad_rate_is_one_line_before_anything_is_built(overrides, line, tmp_path, capsys):
  assert cli.main(["train", "--config", "configs/digits.py", "--workdir",
                   str(tmp_path / "w"), *[f"--config.{o}" for o in overrides]]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and line in err, err
  assert not (tmp_path / "w").exists()


def test_rates_of_zero_on_any_model_and_a_rate_on_inception_v3_are_valid():
  config = config_lib.load("configs/digits.py", ["dropout=0.0"])
  assert {r.dropout for r in config_lib.expand_grid(config_lib.resolve(config))} == {0.0}
  config = config_lib.load("configs/digits.py", ["model=inception_v3", "grid=[dict(kinds="
                           "['labels'], corruptions=[0.0], seeds=[0], dropouts=[0.0, 0.2])]"])
  assert [r.dropout for r in config_lib.expand_grid(config_lib.resolve(config))] == [0.0, 0.2]
  with pytest.raises(UsageError, match="appears twice"):
    config_lib.resolve(config_lib.load("configs/digits.py", [
        "model=inception_v3", "grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], "
        "dropouts=[0.2, 0.2])]"]))
