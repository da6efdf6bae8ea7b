"""``binary``: a dataset's classes as two (its first half against its second), for PAC-Bayes
bounds on a two-class 0-1 error; applied before label corruption, in training and in every
probe that rebuilds the run."""

import json
import math

import ml_collections
import numpy as np
import pytest

from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import data, randomize, train
from zhang.probes import run as run_lib
from zhang.rundir import checkpoint, metrics

N_TRAIN = 128
RANDOM_SEEDS = [0, 1, 2, 3]  # replicas at corruption 1.0: 4 x 128 labels for the statistics


def _dataset(num_classes: int) -> data.Dataset:
  rng = np.random.default_rng(0)
  images = np.zeros((40, 2, 2, 1), np.uint8)
  return data.Dataset("toy", images[:30], rng.integers(0, num_classes, 30).astype(np.int32),
                      images[30:], rng.integers(0, num_classes, 10).astype(np.int32),
                      num_classes)


@pytest.mark.parametrize("num_classes, zeros", [(10, [0, 1, 2, 3, 4]), (5, [0, 1]),
                                                (100, list(range(50))), (2, [0])])
def test_the_first_half_of_the_classes_is_0_and_the_rest_1(num_classes, zeros):
  """K odd: the first floor(K / 2) classes are 0."""
  ds = _dataset(num_classes)
  two = data.binary(ds)
  assert two.num_classes == 2
  for before, after in ((ds.train_labels, two.train_labels), (ds.test_labels, two.test_labels)):
    assert after.dtype == np.int32
    np.testing.assert_array_equal(after, [0 if y in zeros else 1 for y in before])
  np.testing.assert_array_equal(two.train_images, ds.train_images)


def test_a_token_dataset_is_refused_in_one_line():
  with pytest.raises(UsageError, match=r"^binary=True is for image datasets, and modadd has "
                     r"token inputs: set binary=False for modadd$"):
    data.binary(data.load("modadd"))
  c = config_lib.base_config()
  c.model, c.dataset, c.binary = "mlp_tokens", "modadd", True
  with pytest.raises(UsageError, match=r"^binary=True is for image datasets, and modadd has "
                     r"token inputs: use --config.binary=false for modadd$"):
    config_lib.resolve(c)
  c.binary = False
  config_lib.resolve(c)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_value_is_one_line(value):
  c = ml_collections.ConfigDict(dict(config_lib.base_config().to_dict(), binary=value))
  with pytest.raises(UsageError, match=r"^binary=.* must be true or false, e.g. "
                     r"--config.binary=true$"):
    config_lib.resolve(c)
  with pytest.raises(UsageError, match="cannot set binary to 'maybe'"):
    config_lib.apply_override(config_lib.base_config(), "binary=maybe")
  overridden = config_lib.base_config()
  config_lib.apply_override(overridden, "binary=true")
  assert overridden.binary is True


def _config(tiny_config, binary: bool = True):
  c = tiny_config
  c.binary = binary
  c.n_train = N_TRAIN
  c.max_steps = 40
  c.grid = [dict(kinds=["labels"], corruptions=[0.0], seeds=[0]),
            dict(kinds=["labels"], corruptions=[1.0], seeds=RANDOM_SEEDS)]
  return c


def test_a_binary_run_trains_on_two_classes_and_its_probes_see_them(tiny_config, tmp_path):
  config = _config(tiny_config)
  summary = train.run(config, tmp_path, progress=False)
  written = json.loads((tmp_path / "summary.json").read_text())
  assert written["num_classes"] == 2 and written["n_train"] == N_TRAIN
  # One hidden layer of 512 on 8x8 inputs, a 2-way classifier.
  assert written["num_params"] == 64 * 512 + 512 + 512 * 2 + 2
  digits = data.load("digits")  # 10 classes: the binary labels are computed here, apart
  true = (digits.train_labels[:N_TRAIN] >= 5).astype(np.int32)

  run = run_lib.open(tmp_path)
  assert run.config.binary is True and run.dataset.num_classes == 2
  np.testing.assert_array_equal(run.dataset.train_labels, true)
  np.testing.assert_array_equal(run.dataset.test_labels,
                                digits.test_labels[:len(run.dataset.test_labels)] >= 5)
  labels = run.labels
  assert [r.corruption for r in run.replicas] == [0.0] + [1.0] * len(RANDOM_SEEDS)
  np.testing.assert_array_equal(labels[0], true)
  for r, row in zip(run.replicas, labels):
    # The corruption as training drew it: uniform over the two classes, from the replica's key.
    key = randomize.keys(r.seed, randomize.randomization_salt(r.kind, r.corruption))[2]
    np.testing.assert_array_equal(
        row, randomize.corrupt_labels(key, true, r.corruption, 2))
  # The noise training realized (in summary.json) is the rebuilt labels' difference.
  recorded = [s["label_noise"] for s in summary["replicas"]]
  np.testing.assert_allclose(recorded, np.mean(labels != true, axis=1), atol=1e-6)
  np.testing.assert_allclose(run.label_noise, recorded, atol=1e-6)

  # At corruption 1.0 every label is redrawn uniformly from {0, 1}, so each differs from the
  # true one with probability 1/2: the count changed of n = 4 x 128 is Binomial(n, 1/2), sd
  # sqrt(n / 4) = 11.3; a band of 4 sd fails by chance with probability 6e-5.
  random = labels[1:]
  assert set(np.unique(random).tolist()) == {0, 1}
  n = random.size
  band = 4 * math.sqrt(n / 4)
  assert abs(np.sum(random != true) - n / 2) < band
  assert abs(np.sum(random == 1) - n / 2) < band  # and the classes are balanced
  # The true two-class labels are learned, and generalize: chance is about 1/2.
  clean = summary["replicas"][0]
  assert clean["final_train_acc"] > 0.9 and clean["final_test_acc"] > 0.8


def test_a_config_without_the_field_keeps_its_hash(tiny_config, tmp_path):
  """A run's config.json without the field is the same experiment as binary=False; True is
  another."""
  config = config_lib.resolve(_config(tiny_config, binary=False))
  old = config_lib.to_json_dict(config)
  del old["binary"]
  assert config_lib.identity(old) == config_lib.identity(config)
  assert "binary" not in config_lib.identity(config)
  metrics.write_config(tmp_path, old)
  train.check_workdir(tmp_path, config, restart=False)
  on = config_lib.resolve(_config(tiny_config, binary=True))
  assert config_lib.identity(on)["binary"] is True
  assert checkpoint.config_hash(config_lib.identity(on)) != checkpoint.config_hash(
      config_lib.identity(config))
  with pytest.raises(UsageError, match=r"differs in binary\)"):
    train.check_workdir(tmp_path, on, restart=False)
