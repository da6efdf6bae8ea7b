"""ImageNet's host preprocessing (zhang/experiment/imagenet.py): shapes, determinism, the crop
recipe's ranges, and each step against an independent computation."""

import colorsys
import json
import math
import pathlib
import subprocess
import sys

import grain
import numpy as np
import pytest
from PIL import Image

from zhang.experiment import imagenet

REPO = pathlib.Path(__file__).resolve().parents[1]


def photo(height=375, width=500, seed=0):
  """uint8 (H, W, 3): smooth colour gradients plus noise, like a small photograph."""
  yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
  base = np.stack([128 + 100 * np.sin(3 * xx + c) * np.cos(2 * yy + 2 * c) for c in range(3)],
                  -1)
  noise = np.random.default_rng(seed).normal(0, 12, base.shape)
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def rng(seed):
  return np.random.default_rng(seed)


# ------------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("shape", [
    (375, 500, 3), (500, 375, 3), (299, 299, 3),
    (10, 25, 3), (1, 1, 3), (3, 2, 3),  # smaller than the output: enlarged
    (2, 1000, 3), (1000, 2, 3),  # far from square
    (40, 30), (40, 30, 1), (40, 30, 2), (40, 30, 4),  # grey, grey + alpha, CMYK
])
def test_every_image_becomes_uint8_299_square(shape):
  image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  for out in (imagenet.train_image(image, rng(1)), imagenet.eval_image(image),
              imagenet.train_image(image, rng(1), color=False)):
    assert out.shape == (299, 299, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous


def test_grey_and_cmyk_are_made_rgb():
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  for image in (grey, grey[:, :, None], np.stack([grey, 255 - grey], -1)):
    np.testing.assert_array_equal(imagenet.as_rgb(image), np.stack([grey] * 3, -1))
  # CMYK: no ink is white, full black ink is black, full cyan is (0, 255, 255).
  cmyk = np.asarray([[[0, 0, 0, 0], [0, 0, 0, 255], [255, 0, 0, 0]]], np.uint8)
  np.testing.assert_array_equal(imagenet.as_rgb(cmyk),
                                [[[255, 255, 255], [0, 0, 0], [0, 255, 255]]])
  # A grey photograph stays grey through the colour distortion (hue and saturation act on
  # chroma, which it has none of).
  out = imagenet.train_image(photo()[:, :, 0], rng(4))
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8),
                                 np.zeros((4, 4, 5), np.uint8), np.zeros(4, np.uint8)])
def test_images_that_are_not_images_are_refused(bad):
  with pytest.raises(ValueError):
    imagenet.eval_image(bad)


def test_transforms_return_image_int32_label_and_keep_the_index():
  example = {"image": photo(60, 80), "label": np.int64(417), "file_name": "n01.JPEG"}
  indexed = dict(example, index=np.int64(123456))
  for out in (imagenet.TrainTransform().random_map(indexed, rng(0)),
              imagenet.EvalTransform().map(indexed)):
    assert sorted(out) == ["image", "index", "label"]
    assert out["index"] is indexed["index"]
    assert out["label"].dtype == np.int32 and out["label"] == 417
    assert out["image"].shape == (299, 299, 3) and out["image"].dtype == np.uint8
  assert sorted(imagenet.EvalTransform().map(example)) == ["image", "label"]
  # Called as stream.Transform, (example, rng) -> example: the same as grain's methods.
  assert (imagenet.TrainTransform()(indexed, rng(0))["image"].tobytes()
          == imagenet.TrainTransform().random_map(indexed, rng(0))["image"].tobytes())
  np.testing.assert_array_equal(imagenet.EvalTransform()(indexed, rng(0))["image"],
                                imagenet.eval_image(indexed["image"]))
  assert isinstance(imagenet.TrainTransform(), grain.transforms.RandomMap)
  assert isinstance(imagenet.EvalTransform(), grain.transforms.Map)


# ------------------------------------------------------------------------------ randomness

def test_one_seed_gives_the_same_bytes_another_seed_others():
  image = photo()
  first = imagenet.train_image(image, rng(11))
  assert imagenet.train_image(image, rng(11)).tobytes() == first.tobytes()
  assert imagenet.train_image(image, rng(12)).tobytes() != first.tobytes()
  transform = imagenet.TrainTransform()
  example = {"image": image, "label": 3}
  assert (transform.random_map(example, rng(5))["image"].tobytes()
          == transform.random_map(example, rng(5))["image"].tobytes())


@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (299, 299), (64, 48)])
def test_crop_boxes_stay_in_the_recipes_ranges(height, width):
  boxes = np.asarray([imagenet.sample_crop(rng(s), height, width) for s in range(3000)])
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  area, aspect = h * w / (height * width), w / h
  # Every box, fallbacks included (the whole image, for these), is inside both ranges.
  assert area.min() >= 0.08 and area.max() <= 1.0
  assert aspect.min() >= 3 / 4 and aspect.max() <= 4 / 3
  # ... and the draws cover them: areas from the bottom to the top, both orientations.
  assert area.min() < 0.1 and area.max() > 0.9
  assert aspect.min() < 0.78 and aspect.max() > 1.28
  assert abs(np.median(np.log(aspect))) < 0.05  # log-uniform: portrait as often as landscape
  # Positions are uniform: the crops' centres spread over the image, around its centre.
  assert abs(np.mean(top + h / 2) / height - 0.5) < 0.02
  assert abs(np.mean(left + w / 2) / width - 0.5) < 0.02


def test_slim_area_range_reaches_five_percent():
  boxes = np.asarray([imagenet.sample_crop(rng(s), 375, 500, imagenet.AREA_RANGE_SLIM)
                      for s in range(2000)])
  area = boxes[:, 2] * boxes[:, 3] / (375 * 500)
  assert 0.05 <= area.min() < 0.065


@pytest.mark.parametrize("height,width,box", [
    (10, 1000, (0, 493, 10, 13)),  # 13 = floor(10 x 4/3), centred
    (1000, 10, (493, 0, 13, 10)),  # 13 = floor(10 / (3/4))
    (1, 500, (0, 249, 1, 1)),  # (500 - 1) // 2
])
def test_images_far_from_square_fall_back_to_the_centre(height, width, box):
  for seed in range(20):
    assert imagenet.sample_crop(rng(seed), height, width) == box
  top, left, h, w = box
  assert 3 / 4 <= w / h <= 4 / 3


def test_flip_is_an_exact_mirror_drawn_with_probability_one_half():
  image = photo(30, 40)
  flipped = []
  for seed in range(40):
    out = imagenet.random_flip(image, rng(seed))
    mirror = rng(seed).random() < 0.5
    np.testing.assert_array_equal(out, image[:, ::-1] if mirror else image)
    flipped.append(mirror)
  assert 10 < sum(flipped) < 30


# ------------------------------------------------------------------------------ evaluation

def test_eval_view_is_tf_central_crop_then_bilinear_resize():
  image = photo(375, 500)
  # tf.image.central_crop(image, 0.875): start int((n - 0.875 n) / 2), size n - 2 start.
  assert imagenet.central_crop(375, 500) == (23, 31, 329, 438)
  expected = Image.fromarray(image).crop((31, 23, 31 + 438, 23 + 329)).resize(
      (299, 299), Image.Resampling.BILINEAR)
  np.testing.assert_array_equal(imagenet.eval_image(image), np.asarray(expected))
  # A 341-pixel side keeps exactly 299 (21 off each side): no resampling at all.
  square = photo(341, 341)
  np.testing.assert_array_equal(imagenet.eval_image(square), square[21:320, 21:320])


def test_small_images_are_enlarged_bilinearly():
  image = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
  assert imagenet.central_crop(4, 6) == (0, 0, 4, 6)  # int(0.25) = int(0.375) = 0: all kept

  def axis(n_in, n_out):  # half-pixel centres, clamped at the edges
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo

  y0, y1, fy = axis(4, 299)
  x0, x1, fx = axis(6, 299)
  x = image.astype(np.float64)
  rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
  expected = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
  out = imagenet.eval_image(image).astype(np.float64)
  assert np.abs(out - expected).max() <= 1.0  # Pillow's fixed-point weights round


# ------------------------------------------------------------------------------ colour

def hsv_reference(x, turn=0.0, saturation=1.0):
  """Python's colorsys, pixel by pixel: the hue turned, the saturation scaled (capped at 1)."""
  out = np.empty(x.shape)
  for index in np.ndindex(x.shape[:2]):
    h, s, v = colorsys.rgb_to_hsv(*x[index].astype(np.float64))
    out[index] = colorsys.hsv_to_rgb((h + turn) % 1.0, min(s * saturation, 1.0), v)
  return out


def test_brightness_adds_and_clips():
  image = photo(20, 30)
  for delta in (-40, 25, 0):
    out = imagenet.to_uint8(imagenet.adjust_brightness(imagenet.to_float(image), delta / 255))
    np.testing.assert_array_equal(out, np.clip(image.astype(int) + delta, 0, 255))


def test_contrast_scales_about_each_channels_mean():
  x = imagenet.to_float(photo(20, 30))
  mean = x.astype(np.float64).mean(axis=(0, 1))
  for factor in (0.5, 1.0, 1.5):
    expected = np.clip((x - mean) * factor + mean, 0, 1)
    np.testing.assert_allclose(imagenet.adjust_contrast(x, factor), expected, atol=1e-6)


def test_saturation_is_hsvs():
  x = imagenet.to_float(photo(12, 16))
  grey = imagenet.adjust_saturation(x, 0.0)
  np.testing.assert_allclose(grey, np.repeat(x.max(axis=-1, keepdims=True), 3, -1), atol=1e-7)
  np.testing.assert_allclose(imagenet.adjust_saturation(x, 1.0), x, atol=1e-6)
  for factor in (0.5, 1.4, 3.0):  # 3.0: most pixels' saturation is capped at 1
    np.testing.assert_allclose(imagenet.adjust_saturation(x, factor),
                               hsv_reference(x, saturation=factor), atol=1e-6)


def test_hue_is_hsvs_rotation():
  x = imagenet.to_float(photo(12, 16))
  x[0, :4] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0]]  # black, white, grey, red
  np.testing.assert_allclose(imagenet.adjust_hue(x, 0.0), x, atol=1e-6)
  np.testing.assert_allclose(imagenet.adjust_hue(x, 1.0), x, atol=1e-6)  # a full turn
  np.testing.assert_allclose(imagenet.adjust_hue(x, -1.0), x, atol=1e-6)
  for turn in (0.3, -0.15, 0.2, 0.5):
    np.testing.assert_allclose(imagenet.adjust_hue(x, turn), hsv_reference(x, turn=turn),
                               atol=1e-6)
  red = np.asarray([[[1.0, 0.0, 0.0]]], np.float32)
  np.testing.assert_allclose(imagenet.adjust_hue(red, 1 / 3), [[[0, 1, 0]]], atol=1e-6)
  np.testing.assert_allclose(imagenet.adjust_hue(red, 2 / 3), [[[0, 0, 1]]], atol=1e-6)


def test_colour_distortion_applies_its_draws_in_the_drawn_order():
  image = photo(40, 50)
  orders = set()
  for seed in range(12):
    draws = rng(seed)
    ordering = imagenet.ORDERINGS[int(draws.integers(4))]
    amounts = {"brightness": draws.uniform(-32 / 255, 32 / 255),
               "saturation": draws.uniform(0.5, 1.5), "hue": draws.uniform(-0.2, 0.2),
               "contrast": draws.uniform(0.5, 1.5)}
    x = imagenet.to_float(image)
    for name in ordering:
      x = getattr(imagenet, f"adjust_{name}")(x, float(amounts[name]))
    np.testing.assert_array_equal(imagenet.distort_color(image, rng(seed)),
                                  imagenet.to_uint8(x))
    orders.add(ordering)
  assert len(orders) == 4


def test_normalize_is_inceptions_minus_one_to_one():
  images = np.asarray([0, 255, 51], np.uint8)
  np.testing.assert_allclose(imagenet.normalize(images), [-1.0, 1.0, -0.6], atol=1e-7)
  assert imagenet.normalize(images).dtype == np.float32
  jnp = pytest.importorskip("jax.numpy")
  on_device = imagenet.normalize(jnp.asarray(images))
  assert on_device.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(on_device), [-1.0, 1.0, -0.6], atol=1e-7)


# ------------------------------------------------------------------------------ tfds, grain

def test_transforms_run_on_tfds_mock_imagenet_through_grain():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=8):
    source = tfds.data_source("imagenet2012", split="train")
    examples = [source[i] for i in range(len(source))]
  assert len(examples) == 8
  assert min(min(e["image"].shape[:2]) for e in examples) < 299  # mock images are small
  train = grain.MapDataset.source(examples).seed(7).random_map(imagenet.TrainTransform())
  evaluate = grain.MapDataset.source(examples).map(imagenet.EvalTransform())
  for i, example in enumerate(examples):
    for out in (train[i], evaluate[i]):
      assert out["image"].shape == (299, 299, 3) and out["image"].dtype == np.uint8
      assert out["label"].dtype == np.int32 and out["label"] == example["label"]
    assert train[i]["image"].tobytes() == train[i]["image"].tobytes()  # grain's rng: per index
    np.testing.assert_array_equal(evaluate[i]["image"], imagenet.eval_image(example["image"]))
  assert train[0]["image"].tobytes() != train[1]["image"].tobytes()


def test_tune_malloc_is_done_once_and_says_whether():
  assert imagenet.tune_malloc() in (True, False)
  assert imagenet.tune_malloc() == imagenet.tune_malloc()


# ------------------------------------------------------------------------------ benchmark

@pytest.mark.slow
def test_benchmark_prints_rates_and_the_cores_an_accelerator_needs():
  done = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "input_pipeline.py"), "--seconds", "0.3",
       "--images", "4", "--workers", "", "--train_gflops_per_image", "34.5"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  result = json.loads(done.stdout)
  rates = result["per_core"]
  for name in ("decode", "decode_train", "decode_eval"):
    assert rates[name]["images_per_cpu_s"] > 0
  assert result["train_gflops_per_image"] == 34.5
  h100 = next(a for a in result["accelerators"] if a["name"] == "h100_sxm")
  needed = 0.4 * 989e12 / 34.5e9
  assert math.isclose(h100["images_per_s"], needed, rel_tol=1e-6)
  assert math.isclose(h100["host_cores"],
                      needed / rates["decode_train"]["images_per_cpu_s"], rel_tol=1e-6)
