import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang.experiment import data, randomize


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def _labels(seed, p, true, kind="labels"):
  _, _, key = randomize.replica_keys(seed, kind, p)
  return np.asarray(randomize.corrupt_labels(key, jnp.asarray(true), p, 10))


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_label_noise_is_close_to_0_9_p(digits, p):
  true = digits.train_labels
  noise = np.mean(_labels(0, p, true) != true)
  n = len(true)
  expected = 0.9 * p
  sd = np.sqrt(max(expected * (1 - expected), 1e-12) / n)
  assert abs(noise - expected) <= 4 * sd + 1e-9


def test_corrupted_labels_are_uniform_over_classes(digits):
  labels = _labels(5, 1.0, digits.train_labels)
  counts = np.bincount(labels, minlength=10)
  expected = len(labels) / 10
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 27.9  # 99.9% quantile of chi-square with 9 degrees of freedom


def test_labels_are_a_pure_function_of_the_seed(digits):
  true = digits.train_labels
  a, b = _labels(7, 0.5, true), _labels(7, 0.5, true)
  np.testing.assert_array_equal(a, b)
  assert np.mean(_labels(8, 0.5, true) != a) > 0.2
  # Different corruption levels of one seed are independent draws, not nested ones.
  assert np.mean(_labels(7, 0.6, true) != a) > 0.2


def test_labels_are_fixed_across_epochs_of_training(tiny_config):
  """The trainer draws labels once; the batches of two epochs see the same labels."""
  from zhang.experiment import config as config_lib
  from zhang.experiment import train
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(256, 128)
  from zhang.experiment import step
  from zhang.runtime import mesh as mesh_lib
  sharding = mesh_lib.replica_sharding(mesh_lib.make_mesh((-1, 1)))
  settings = step.StepSettings.from_config(config, replicas)
  _, reps1, noise = train.build_replicas(replicas, dataset, settings, sharding)
  _, reps2, _ = train.build_replicas(replicas, dataset, settings, sharding)
  np.testing.assert_allclose(
      np.asarray(noise),
      np.mean(np.asarray(reps1.labels) != dataset.train_labels[None], axis=1))
  np.testing.assert_array_equal(np.asarray(reps1.labels), np.asarray(reps2.labels))


def _inputs(kind, seed, images, indices, split=randomize.TRAIN, perm=None):
  _, _, key = randomize.replica_keys(seed, kind, 0.0)
  hw = images.shape[1] * images.shape[2]
  perm = randomize.shared_permutation(key, hw) if perm is None else perm
  mean, std = randomize.channel_stats(np.asarray(images * 255, np.uint8))
  return np.asarray(randomize.randomize_inputs(
      kind, key, jnp.asarray(images), jnp.asarray(indices), split, perm, jnp.asarray(mean),
      jnp.asarray(std)))


@pytest.fixture(scope="module")
def rgb():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (16, 6, 5, 3)).astype(np.float32) / 255.0


def test_shuffled_pixels_use_one_permutation_for_every_image_and_channel(rgb):
  out = _inputs("shuffled_pixels", 1, rgb, np.arange(16))
  flat_in, flat_out = rgb.reshape(16, 30, 3), out.reshape(16, 30, 3)
  _, _, key = randomize.replica_keys(1, "shuffled_pixels", 0.0)
  perm = np.asarray(randomize.shared_permutation(key, 30))
  assert sorted(perm) == list(range(30)) and not np.array_equal(perm, np.arange(30))
  np.testing.assert_array_equal(flat_out, flat_in[:, perm, :])
  # The test split gets the same permutation.
  test = _inputs("shuffled_pixels", 1, rgb, np.arange(16), split=randomize.TEST)
  np.testing.assert_array_equal(test, out)


def test_random_pixels_permute_each_image_differently_and_keep_its_values(rgb):
  out = _inputs("random_pixels", 2, rgb, np.arange(16))
  flat_in, flat_out = rgb.reshape(16, 30, 3), out.reshape(16, 30, 3)
  perms = []
  for i in range(16):
    # Each output pixel (all channels together) is some input pixel of the same image.
    match = [int(np.flatnonzero((flat_in[i] == px).all(1))[0]) for px in flat_out[i]]
    assert sorted(match) == list(range(30))
    perms.append(tuple(match))
    np.testing.assert_array_equal(np.sort(flat_in[i], 0), np.sort(flat_out[i], 0))
  assert len(set(perms)) == 16
  # Fixed: regenerated from (key, index), the same image gets the same permutation.
  again = _inputs("random_pixels", 2, rgb[[5, 3]], np.array([5, 3]))
  np.testing.assert_array_equal(again, out[[5, 3]])


@pytest.mark.parametrize("n", [1, 2, 30, 64, 784, 3000, 70_000])
def test_example_permutation_is_a_permutation_and_a_function_of_its_key(n):
  keys = jax.random.split(jax.random.key(3), 4)
  perms = np.asarray(jax.jit(jax.vmap(lambda k: randomize.example_permutation(k, n)))(keys))
  assert perms.dtype == np.int32 and perms.shape == (4, n)
  for perm in perms:
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  again = np.asarray(randomize.example_permutation(keys[2], n))
  np.testing.assert_array_equal(again, perms[2])
  if n >= 30:
    assert len({p.tobytes() for p in perms}) == 4
  # Keys of another implementation (jax_default_prng_impl) go through jax.random.bits.
  other = np.asarray(randomize.example_permutation(jax.random.key(3, impl="rbg"), n))
  np.testing.assert_array_equal(np.sort(other), np.arange(n))


def test_example_permutation_rounds_bound_ties():
  # Any two items tie in every round's random bits with probability <= 2**-11.
  for n in [2, 64, 784, 1024, 3072, 50_176, 2**24]:
    b = (n - 1).bit_length()
    rounds = randomize.permutation_rounds(n)
    assert rounds * (32 - b) >= 2 * b + 10
    assert (rounds - 1) * (32 - b) < 2 * b + 10  # no round more than that needs
  assert [randomize.permutation_rounds(n) for n in (64, 784, 1024)] == [1, 2, 2]
  with pytest.raises(ValueError, match="2\\*\\*24"):
    randomize.permutation_rounds(2**24 + 1)


@pytest.mark.parametrize("n", [4, 784])
def test_example_permutation_is_uniform(n):
  keys = jax.random.split(jax.random.key(11), 4800)
  perms = np.asarray(jax.jit(jax.vmap(lambda k: randomize.example_permutation(k, n)))(keys))
  if n == 4:  # all 24 orders equally often: chi-square, 23 degrees of freedom
    codes = perms @ (4 ** np.arange(4))
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24
    assert np.sum((counts - 200) ** 2 / 200) < 49.7  # its 99.9% quantile
  else:  # where item 0 goes, in 16 bins of 49 positions; fixed points: Poisson(1)
    where = np.argmax(perms == 0, axis=1)
    counts = np.bincount(where // 49, minlength=16)
    assert np.sum((counts - 300) ** 2 / 300) < 37.7  # chi-square, 15 dof, 99.9%
    fixed = np.mean(np.sum(perms == np.arange(n), axis=1))
    assert abs(fixed - 1) < 4 / np.sqrt(4800)


def test_example_normal_is_standard_normal():
  from scipy import stats
  keys = jax.random.split(jax.random.key(5), 64)
  z = np.asarray(jax.jit(jax.vmap(lambda k: randomize.example_normal(k, (32, 32, 3))))(keys))
  assert z.dtype == np.float32 and z.shape == (64, 32, 32, 3) and np.isfinite(z).all()
  flat = z.ravel().astype(np.float64)  # 196,608 values
  assert stats.kstest(flat, "norm").pvalue > 1e-3
  assert abs(flat.mean()) < 4 / np.sqrt(flat.size)
  assert abs(stats.kurtosis(flat)) < 0.05 and np.abs(flat).max() < 6
  # Independent between keys and between positions.
  assert abs(np.corrcoef(z[0].ravel(), z[1].ravel())[0, 1]) < 0.08
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01
  np.testing.assert_array_equal(np.asarray(randomize.example_normal(keys[3], (32, 32, 3))),
                                z[3])
  # Its words: every bit fair.
  bits = np.asarray(randomize.words(keys[0], 4096))
  ones = np.unpackbits(bits.view(np.uint8)).reshape(4096, 32).mean(0)
  assert np.all(np.abs(ones - 0.5) < 4 * 0.5 / np.sqrt(4096))


def test_gaussian_matches_per_channel_mean_and_variance(digits):
  rng = np.random.default_rng(0)
  means = np.array([0.2, 0.5, 0.7], np.float32)
  imgs = np.clip(rng.normal(means, [0.1, 0.2, 0.05], (400, 8, 8, 3)), 0, 1)
  u8 = np.round(imgs * 255).astype(np.uint8)
  mean, std = randomize.channel_stats(u8)
  _, _, key = randomize.replica_keys(0, "gaussian", 0.0)
  out = np.asarray(randomize.randomize_inputs(
      "gaussian", key, jnp.asarray(u8 / 255.0, jnp.float32), jnp.arange(400), randomize.TRAIN,
      jnp.arange(64), jnp.asarray(mean), jnp.asarray(std)))
  flat = out.reshape(-1, 3)
  np.testing.assert_allclose(flat.mean(0), mean, atol=4 * std.max() / np.sqrt(len(flat)))
  np.testing.assert_allclose(flat.std(0), std, rtol=0.02)
  # No trace of the original images, and the same index gives the same image.
  assert abs(np.corrcoef(flat[:, 0], u8.reshape(-1, 3)[:, 0])[0, 1]) < 0.02
  again = np.asarray(randomize.randomize_inputs(
      "gaussian", key, jnp.zeros((1, 8, 8, 3)), jnp.array([17]), randomize.TRAIN,
      jnp.arange(64), jnp.asarray(mean), jnp.asarray(std)))
  np.testing.assert_array_equal(again[0], out[17])


def test_segments_group_runs_of_kinds():
  assert randomize.segments(["labels", "labels", "gaussian"]) == (
      ("labels", 0, 2), ("gaussian", 2, 3))


def test_unknown_kind():
  from zhang.errors import UsageError
  with pytest.raises(UsageError, match="unknown randomization kind 'noise'"):
    randomize.kind_id("noise")


_EVERY_RANDOMIZATION = """
import hashlib, sys
import jax
jax.config.update("jax_enable_x64", sys.argv[1] == "1")
import numpy as np
from zhang.experiment import randomize
_, _, key = randomize.replica_keys(7, "labels", 0.2)
true = np.arange(1438) % 10  # numpy's default integers: int64, as a dataset's labels may be
images = np.linspace(0, 1, 4 * 8 * 8 * 3).reshape(4, 8, 8, 3).astype(np.float32)
indices = np.arange(4)
perm = randomize.shared_permutation(key, 64)
out = [randomize.corrupt_labels(key, true, 0.2, 10), perm]
for kind in randomize.KINDS:
  out.append(randomize.randomize_inputs(kind, key, images, indices, randomize.TRAIN, perm,
                                        np.float32([0.5] * 3), np.float32([0.2] * 3)))
for x in out:
  x = np.asarray(x)
  x = x.astype(np.float32 if x.dtype.kind == "f" else np.int32)
  print(hashlib.sha256(x.tobytes()).hexdigest()[:16], x.dtype)
"""


@pytest.mark.slow
def test_every_randomization_is_the_same_whatever_the_x64_setting():
  """A notebook may turn ``jax_enable_x64`` on: labels, permutations and noise images stay
  those of the same seed (each setting in its own process: the flag is global)."""
  import subprocess
  import sys
  out = {x64: subprocess.run([sys.executable, "-c", _EVERY_RANDOMIZATION, x64],
                             capture_output=True, text=True, check=True).stdout.splitlines()
         for x64 in ("0", "1")}
  assert len(out["0"]) == 6
  assert out["0"] == out["1"]


@pytest.mark.parametrize("n,k,p", [(1000, 10, 0.3), (5003, 1000, 1.0), (77, 59, 0.5),
                                   (300, 3, 0.0)])
def test_labels_at_indices_equal_the_whole_arrays(n, k, p):
  """The streaming path's labels (from indices alone) are the in-memory path's, label for
  label, for any subset and order of the examples."""
  key = randomize.replica_keys(3, "labels", p)[2]
  labels = jnp.asarray(np.random.default_rng(0).integers(0, k, n), jnp.int32)
  whole = randomize.corrupt_labels(key, labels, p, k)
  idx = jnp.asarray(np.random.default_rng(1).permutation(n)[: n // 2], jnp.int32)
  at = randomize.corrupt_labels_at(key, labels[idx], idx, p, k)
  np.testing.assert_array_equal(at, whole[idx])
  # and under vmap over replicas, as the step takes them
  keys = jax.vmap(lambda s: randomize.replica_keys(s, "labels", p)[2])(jnp.arange(2))
  batched = jax.vmap(lambda kk: randomize.corrupt_labels_at(kk, labels[idx], idx, p, k))(keys)
  for r in range(2):
    np.testing.assert_array_equal(batched[r], randomize.corrupt_labels(
        randomize.replica_keys(r, "labels", p)[2], labels, p, k)[idx])
