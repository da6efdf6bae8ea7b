"""Augmentations: pure functions of (replica key, step, example index), resumable."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang.errors import UsageError
from zhang.experiment import augment, data, randomize, step, train
from zhang.experiment import config as config_lib
from zhang.rundir import checkpoint

KEY = jax.random.key(7)
IDX = jnp.arange(16, dtype=jnp.int32)


def _images(shape=(16, 8, 8, 3), seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _run(names, x, s=3, windowed=False):
  names = tuple(names)
  return np.asarray(augment.apply(names, 0, KEY, jnp.int32(s), IDX, x, windowed))


@pytest.mark.parametrize("name", ["crop", "flip", "color", "crop+flip", "color+crop+flip"])
def test_same_key_step_index_same_view_other_steps_differ(name):
  x = _images()
  a, b = _run([name], x, 3), _run([name], x, 3)
  np.testing.assert_array_equal(a, b)
  others = [_run([name], x, s) for s in (4, 5, 100)]
  assert not any(np.array_equal(a, o) for o in others)
  # Per example: reordering the batch reorders the views.
  perm = np.random.default_rng(1).permutation(16)
  c = np.asarray(augment.apply((name,), 0, KEY, jnp.int32(3), IDX[perm], x[perm]))
  np.testing.assert_array_equal(c, a[perm])


@pytest.mark.parametrize("side,pad", [(28, 2), (8, 1)])
def test_crop_keeps_the_pixels_of_its_window(side, pad):
  assert augment.pad_width(side) == pad
  x = _images((16, side, side, 1))
  out = _run(["crop"], x)
  offsets = np.asarray(augment.crop_offsets(KEY, jnp.int32(3), IDX, 2 * pad, 2 * pad))
  assert offsets.min() >= 0 and offsets.max() <= 2 * pad
  assert len({tuple(o) for o in offsets}) > 1
  padded = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  for i, (top, left) in enumerate(offsets):
    np.testing.assert_array_equal(out[i], padded[i, top:top + side, left:left + side])


def test_window_of_larger_images_is_random_for_crop_and_the_centre_otherwise():
  x = jnp.asarray(np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3)), jnp.uint8)
  names = ("none", "crop")
  centre = np.asarray(augment.window(names, 0, KEY, 3, IDX, x, (28, 28)))
  np.testing.assert_array_equal(centre, np.asarray(x)[:, 2:30, 2:30])
  out = np.asarray(augment.window(names, 1, KEY, 3, IDX, x, (28, 28)))
  offsets = np.asarray(augment.crop_offsets(KEY, 3, IDX, 4, 4))
  assert len({tuple(o) for o in offsets}) > 1
  for i, (top, left) in enumerate(offsets):
    np.testing.assert_array_equal(out[i], np.asarray(x)[i, top:top + 28, left:left + 28])
  # The crop was taken: the later pass leaves it alone.
  f = _images((16, 28, 28, 3))
  np.testing.assert_array_equal(_run(["crop"], f, windowed=True), np.asarray(f))


def test_flip_mirrors_exactly_about_half():
  x = _images()
  out = _run(["flip"], x)
  flips = np.asarray(augment.flips(KEY, jnp.int32(3), IDX))
  assert 0 < flips.sum() < 16
  for i in range(16):
    np.testing.assert_array_equal(out[i], np.asarray(x)[i, :, ::-1] if flips[i] else x[i])


def test_color_keeps_shape_and_range_identity_at_zero_strength():
  x = _images((16, 8, 8, 3))
  out = _run(["color"], x)
  assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
  assert not np.allclose(out, x)
  off = augment.ColorRanges(0.0, 0.0, 0.0, 0.0)
  same = augment.color(KEY, 3, IDX, x, off)
  np.testing.assert_allclose(same, x, atol=2e-6)
  # Brightness alone adds one value per image (before the clip).
  bright = np.asarray(augment.color(KEY, 3, IDX, x * 0.5 + 0.25, off._replace(brightness=0.2)))
  delta = bright - np.asarray(x * 0.5 + 0.25)
  np.testing.assert_allclose(delta, delta[:, :1, :1, :1] + 0 * delta, atol=1e-6)
  assert np.abs(delta).max() <= 0.2
  # Hue alone keeps the luma; saturation and hue leave one channel alone.
  hue = np.asarray(augment.color(KEY, 3, IDX, x * 0.5 + 0.25, off._replace(hue=0.05)))
  np.testing.assert_allclose(hue @ augment._LUMA, np.asarray(x * 0.5 + 0.25) @ augment._LUMA,
                             atol=1e-5)
  gray = _images((16, 8, 8, 1))
  np.testing.assert_allclose(
      augment.color(KEY, 3, IDX, gray, augment.ColorRanges(0.0, 0.0, 0.2, 0.05)), gray,
      atol=1e-6)


def test_crop_plus_flip_composes_in_order():
  x = _images()
  cropped = jnp.asarray(_run(["crop"], x))
  np.testing.assert_array_equal(_run(["crop+flip"], x), _run(["flip"], cropped))
  np.testing.assert_array_equal(_run(["none"], x), np.asarray(x))
  # A grid of several: each replica gets its own by index.
  names = augment.used(["flip", "crop+flip", "none"])
  assert names == ("none", "crop+flip", "flip")
  for j, n in enumerate(names):
    got = augment.apply(names, jnp.int32(j), KEY, jnp.int32(3), IDX, x)
    np.testing.assert_array_equal(got, _run([n], x))


@pytest.mark.parametrize("bad", ["blur", "crop+blur", "crop+", 3])
def test_bad_names_give_one_line(bad):
  with pytest.raises(UsageError, match="choose one of none, crop, flip, color") as e:
    augment.check_name(bad)
  assert "\n" not in str(e.value)
  assert augment.check_name("flip+crop") == "flip+crop"
  c = config_lib.base_config()
  c.grid = [dict(kinds=["labels"], corruptions=[0.0], seeds=[0], augmentations=[bad])]
  with pytest.raises(UsageError):
    config_lib.expand_grid(config_lib.resolve(c))


@pytest.mark.slow
def test_larger_images_stay_uncropped_on_device_only_when_a_replica_crops():
  rng = np.random.default_rng(0)
  ds = data.Dataset("synthetic", rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                    rng.integers(0, 10, 40).astype(np.int32),
                    rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                    rng.integers(0, 10, 20).astype(np.int32), 10)
  c = config_lib.base_config()
  c.batch_size, c.eval_batch_size = 8, 16
  c.grid = [dict(kinds=["labels", "random_pixels"], corruptions=[0.0], seeds=[0],
                 augmentations=["none", "crop"])]
  c = config_lib.resolve(c)
  replicas = config_lib.expand_grid(c)
  program, d, reps, states, _ = train.build(c, replicas, ds)
  assert d.train_images.shape == (40, 32, 32, 3) and d.test_images.shape == (20, 28, 28, 3)
  s, idx, k = program.settings, jnp.arange(8), jnp.int32(5)
  x = jnp.asarray(ds.train_images[:8])
  got = np.asarray(step.grid_inputs(s, reps, d, jnp.broadcast_to(x, (4, *x.shape)),
                                    jnp.broadcast_to(idx, (4, 8)), randomize.TRAIN, k))
  for i, r in enumerate(replicas):
    rep = jax.tree.map(lambda a, i=i: a[i], reps)
    if r.augmentation == "crop":
      offsets = np.asarray(augment.crop_offsets(rep.rand_key, k, idx, 4, 4))
      win = np.stack([ds.train_images[j, top:top + 28, left:left + 28]
                      for j, (top, left) in enumerate(offsets)])
    else:
      win = ds.train_images[:8, 2:30, 2:30]
    want = data.whiten(randomize.randomize_inputs(
        r.kind, rep.rand_key, data.scale(jnp.asarray(win)), idx, randomize.TRAIN,
        rep.shared_perm, d.gauss_mean, d.gauss_std))
    np.testing.assert_array_equal(got[i], np.asarray(want), err_msg=str(r))
  states, _ = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(3))
  ev = jax.device_get(program.evaluate(states, reps, d))
  assert np.isfinite(ev["train_loss"]).all()
  c.grid = [dict(kinds=["labels"], corruptions=[0.0], seeds=[0], augmentations=["flip"])]
  d2 = train.build(c, config_lib.expand_grid(c), ds)[1]
  assert d2.train_images.shape == (40, 28, 28, 3)


def _params(workdir):
  return jax.tree.leaves(checkpoint.load(workdir)["params"])


def _assert_same(a, b):
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def _small(c):
  c.max_steps, c.eval_every, c.checkpoint_every, c.keep_checkpoints = 30, 10, 10, 5
  c.grid = [dict(kinds=["labels", "random_pixels"], corruptions=[0.0], seeds=[0])]
  return c


@pytest.mark.slow
def test_resumed_augmented_run_is_bit_identical(tiny_config, tmp_path):
  c = _small(tiny_config)
  c.grid[0]["augmentations"] = ["crop+flip", "none"]
  train.run(c, tmp_path / "a", progress=False)
  train.run(c, tmp_path / "b", progress=False)
  folder = tmp_path / "b" / checkpoint.DIRNAME
  last = max((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  assert last.name == "30"
  shutil.rmtree(last)
  (tmp_path / "b" / "summary.json").unlink(missing_ok=True)
  train.run(c, tmp_path / "b", progress=False)
  assert checkpoint.load(tmp_path / "b")["step"] == 30
  _assert_same(_params(tmp_path / "a"), _params(tmp_path / "b"))


@pytest.mark.slow
def test_augmentation_none_is_todays_bits_and_augmenting_changes_them(tiny_config, tmp_path):
  plain = _small(tiny_config)
  train.run(plain, tmp_path / "plain", progress=False)
  none = _small(tiny_config)
  none.grid[0]["augmentations"] = ["none"]
  train.run(none, tmp_path / "none", progress=False)
  _assert_same(_params(tmp_path / "plain"), _params(tmp_path / "none"))
  flip = _small(tiny_config)
  flip.grid[0]["augmentations"] = ["crop+flip"]
  train.run(flip, tmp_path / "flip", progress=False)
  assert not np.array_equal(_params(tmp_path / "plain")[0], _params(tmp_path / "flip")[0])
