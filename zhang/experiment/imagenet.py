"""ImageNet's preprocessing for Inception V3 (Table 2), on the host: numpy and Pillow only,
run by grain's worker processes on each decoded example before batches reach the device.

Examples are tfds ``imagenet2012`` dicts (``image`` uint8 (H, W, 3) as tfds decodes it,
``label`` int64, ``file_name``); both transforms return ``{"image": uint8 (299, 299, 3),
"label": int32}``, plus the example's ``index`` untouched where the pipeline added one.

Training with augmentation (``train_image``, ``TrainTransform``): the paper's "random crops;
also brightness, saturation, hue, contrast", as Inception is trained:
  crop    a random box of the image (``sample_crop``): its area a fraction of the image's,
          uniform in ``AREA_RANGE`` = [0.08, 1], its aspect ratio (width / height)
          log-uniform in ``ASPECT_RANGE`` = [3/4, 4/3], at a uniformly random position; a try
          whose integer box falls outside the image or the ranges is drawn again, and after
          ``CROP_TRIES`` (10) the largest centred box whose aspect ratio is in the range is
          taken (the whole image unless it is wider than 4:3 or taller than 3:4). The ranges
          are GoogLeNet's (Szegedy et al. 2015, "Going deeper with convolutions", section 6:
          patches of 8% to 100% of the image area, aspect ratio in [3/4, 4/3]), the crop of
          the Inception family that Inception V3 (Szegedy et al. 2016) belongs to; the tries
          and the fallback are those of the TPU ResNet reference and of torchvision's
          RandomResizedCrop. TF-slim's ``inception_preprocessing`` samples
          area [0.05, 1] (``AREA_RANGE_SLIM``, pass it as ``area_range``) against the
          dataset's object boxes and falls back to the whole image; tfds's imagenet2012 has
          no boxes.
  resize  the box to 299x299 with Pillow's bilinear filter (TF-slim's fast mode; its full
          mode picks one of four methods at random). Pillow widens the filter when it
          shrinks (antialiased, as ``tf.image.resize(..., antialias=True)``); TF-slim's
          ``resize_images`` did not.
  flip    a horizontal mirror with probability 1/2.
  color   TF-slim's ``distort_color`` (full mode): one of its four orderings of the four
          adjustments (``ORDERINGS``), uniformly, each adjustment's amount uniform in its
          range: brightness + [-32/255, 32/255] on the [0, 1] image; saturation x [0.5, 1.5]
          on HSV's S (capped at 1); hue + [-0.2, 0.2] of a turn on HSV's H; contrast
          x [0.5, 1.5] about each channel's mean. Each adjustment clips to [0, 1] (TF-slim
          clips once, after the last; the HSV ones are only defined on [0, 1] images); the
          result is rounded to uint8 (an error of at most 0.5/255, for 4x fewer bytes to the
          device).
Every random choice comes from the ``np.random.Generator`` passed in (grain's
``random_map(element, rng)`` passes one per example, ``zhang.experiment.stream`` one seeded by
the example's position), so the same generator state gives the same bytes.

Evaluation, and training without augmentation (``eval_image``, ``EvalTransform``): TF-slim's
``preprocess_for_eval``: ``tf.image.central_crop(image, 0.875)``, which keeps, of a side of
n pixels, n - 2 floor(n (1 - 0.875) / 2) centred pixels (87.5% of each side, not a square),
then the bilinear resize to 299x299 (the aspect ratio is not kept).

The model side scales the uint8 images to Inception's [-1, 1] (``normalize``: x / 127.5 - 1,
TF-slim's (x - 0.5) x 2 on [0, 1] images), not the CIFAR path's per-image whitening.

Speed (``benchmarks/input_pipeline.py``, ``benchmarks/RESULTS.md``): the colour adjustments
run on contiguous float32 channel planes, and the transforms call ``tune_malloc`` so that the
worker's malloc keeps the memory of one image's temporaries for the next.

Decoded images other than RGB are made RGB first (``as_rgb``): grey ones (H, W) or (H, W, 1)
repeated, grey + alpha (H, W, 2) its grey, 4 channels as CMYK (a JPEG has no alpha; Pillow
decodes CMYK and YCCK JPEGs to 4 channels) converted by Pillow. Images smaller than the
output are enlarged; images of any aspect ratio get a box of a valid one.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math

import grain
import numpy as np
from PIL import Image

IMAGE_SIZE = 299  # Inception V3's input side
AREA_RANGE = (0.08, 1.0)  # the crop's area over the image's (GoogLeNet, Inception V3)
AREA_RANGE_SLIM = (0.05, 1.0)  # TF-slim's inception_preprocessing
ASPECT_RANGE = (3 / 4, 4 / 3)  # the crop's width over its height
CROP_TRIES = 10
CENTRAL_FRACTION = 0.875  # of each side, for evaluation

BRIGHTNESS = 32 / 255  # added, on the [0, 1] scale: +- this
SATURATION = (0.5, 1.5)  # factor on HSV's S
HUE = 0.2  # turns added to HSV's H: +- this
CONTRAST = (0.5, 1.5)  # factor about each channel's mean
ORDERINGS = (  # TF-slim's distort_color, color_ordering 0 to 3
    ("brightness", "saturation", "hue", "contrast"),
    ("saturation", "brightness", "contrast", "hue"),
    ("contrast", "hue", "brightness", "saturation"),
    ("hue", "saturation", "contrast", "brightness"),
)


def as_rgb(image) -> np.ndarray:
  """uint8 (H, W, 3) of a decoded uint8 image of 1 to 4 channels (see the module's notes)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"images must be uint8, not {image.dtype}")
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or not 1 <= image.shape[2] <= 4 or 0 in image.shape[:2]:
    raise ValueError(f"an image must be (H, W) or (H, W, 1 to 4) with H, W > 0, not "
                     f"{image.shape}")
  channels = image.shape[2]
  if channels == 3:
    return image
  if channels == 4:
    return np.asarray(Image.fromarray(np.ascontiguousarray(image), "CMYK").convert("RGB"))
  return np.repeat(image[:, :, :1], 3, axis=2)


# ------------------------------------------------------------------------------ crop boxes

def _in_ranges(h: int, w: int, height: int, width: int, area_range, aspect_range) -> bool:
  fraction = h * w / (height * width)
  return (0 < h <= height and 0 < w <= width
          and area_range[0] <= fraction <= area_range[1]
          and aspect_range[0] <= w / h <= aspect_range[1])


def centre_crop(height: int, width: int, aspect_range=ASPECT_RANGE) -> tuple[int, int, int, int]:
  """(top, left, h, w) of the largest centred box whose width / height is in
  ``aspect_range``: the whole image when its own aspect ratio is."""
  h, w = height, width
  if width / height < aspect_range[0]:  # too tall
    h = max(1, min(height, math.floor(width / aspect_range[0])))
  elif width / height > aspect_range[1]:  # too wide
    w = max(1, min(width, math.floor(height * aspect_range[1])))
  return (height - h) // 2, (width - w) // 2, h, w


def sample_crop(rng: np.random.Generator, height: int, width: int, area_range=AREA_RANGE,
                aspect_range=ASPECT_RANGE, tries: int = CROP_TRIES) -> tuple[int, int, int, int]:
  """(top, left, h, w) of the training crop of a (height, width) image.

  Each try draws the area fraction uniformly in ``area_range`` and width / height
  log-uniformly in ``aspect_range``, rounds the sides to pixels, and is kept if the box fits
  the image and its integer area fraction and aspect ratio are inside the ranges; the box's
  position is then uniform. After ``tries`` failures: ``centre_crop`` (its aspect ratio is in
  the range; its area may be below ``area_range`` for images far from square)."""
  area = height * width
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(tries):
    target = area * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if _in_ranges(h, w, height, width, area_range, aspect_range):
      top = int(rng.integers(height - h + 1))
      left = int(rng.integers(width - w + 1))
      return top, left, h, w
  return centre_crop(height, width, aspect_range)


def central_crop(height: int, width: int,
                 fraction: float = CENTRAL_FRACTION) -> tuple[int, int, int, int]:
  """(top, left, h, w) of ``tf.image.central_crop(image, fraction)``: of each side of n
  pixels, n - 2 floor(n (1 - fraction) / 2) centred ones."""
  top = int((height - height * fraction) / 2)
  left = int((width - width * fraction) / 2)
  return top, left, height - 2 * top, width - 2 * left


def resize(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """uint8 (size, size, C): Pillow's bilinear resize of a uint8 (H, W, C) image."""
  pil = Image.fromarray(np.ascontiguousarray(image))
  return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))


def _crop(image: np.ndarray, box) -> np.ndarray:
  top, left, h, w = box
  return image[top:top + h, left:left + w]


# ------------------------------------------------------------------------------ colour
# The adjustments work on float32 channel planes (3, N) in [0, 1] (whole contiguous planes
# are several times faster in numpy than the strided channels of (H, W, 3)); the public
# ``adjust_*`` take and return (H, W, 3).

def _clip(p: np.ndarray) -> np.ndarray:
  return np.clip(p, 0.0, 1.0, out=p)  # in place (np.clip is faster than min of max)


def _brightness(p: np.ndarray, delta: float) -> np.ndarray:
  return _clip(p + np.float32(delta))


def _contrast(p: np.ndarray, factor: float) -> np.ndarray:
  mean = p.mean(axis=1, keepdims=True, dtype=np.float32)
  return _clip((p - mean) * np.float32(factor) + mean)


def _value_chroma(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  r, g, b = p
  v = np.maximum(np.maximum(r, g), b)
  return v, v - np.minimum(np.minimum(r, g), b)


def _nonzero(chroma: np.ndarray) -> np.ndarray:
  return chroma + (chroma == 0)  # 1 where grey, where the quotient does not matter


def _saturation(p: np.ndarray, factor: float) -> np.ndarray:
  # A pixel's channels are V - (V - c), with V - c proportional to S = chroma / V at a fixed
  # hue and value: S x f, capped at 1, is every V - c times min(f, V / chroma).
  v, chroma = _value_chroma(p)
  scale = np.minimum(np.float32(factor), v / _nonzero(chroma))
  return _clip(v - (v - p) * scale)


def _hue(p: np.ndarray, delta: float) -> np.ndarray:
  r, g, b = p
  v, chroma = _value_chroma(p)
  # The hue in sextants (red 0, green 2, blue 4): which channel is the maximum, and where
  # between the other two; turned, then brought into [0, 6). (Masks multiply: np.where on
  # random masks is several times slower.)
  red = v == r
  green = (v == g) & ~red
  blue = ~(red | green)
  hue = (red * (g - b) + green * (b - r) + blue * (r - g)) / _nonzero(chroma)
  hue += green * np.float32(2) + blue * np.float32(4)
  hue += np.float32(6 * (delta - math.floor(delta)))
  hue -= np.float32(6) * np.floor(hue * np.float32(1 / 6))
  # The fully saturated colour of that hue, channel by channel, scaled into [V - chroma, V].
  full = np.empty_like(p)
  np.abs(hue - np.float32(3), out=full[0])
  full[0] -= 1
  np.abs(hue - np.float32(2), out=full[1])
  np.abs(hue - np.float32(4), out=full[2])
  np.subtract(2, full[1:], out=full[1:])
  return _clip((v - chroma) + chroma * _clip(full))


def _planes(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32).reshape(-1, 3).T)


def _pixels(p: np.ndarray, shape) -> np.ndarray:
  return p.T.reshape(shape)


def _channels_last(op):
  def adjust(x: np.ndarray, amount: float) -> np.ndarray:
    return _pixels(op(_planes(x), amount), np.shape(x))
  return adjust


adjust_brightness = _channels_last(_brightness)
adjust_brightness.__doc__ = "float (H, W, 3) in [0, 1]: ``delta`` added, clipped to [0, 1]."
adjust_contrast = _channels_last(_contrast)
adjust_contrast.__doc__ = ("Each channel's distance from its mean over the image times "
                           "``factor``, clipped.")
adjust_saturation = _channels_last(_saturation)
adjust_saturation.__doc__ = ("HSV's saturation times ``factor`` (capped at 1), hue and value "
                             "kept: factor 0 makes each pixel grey at V = max(R, G, B).")
adjust_hue = _channels_last(_hue)
adjust_hue.__doc__ = "HSV's hue turned by ``delta`` turns, saturation and value kept."

_COLOR_OPS = {"brightness": _brightness, "saturation": _saturation, "hue": _hue,
              "contrast": _contrast}


def to_float(image: np.ndarray) -> np.ndarray:
  """float32 in [0, 1] of a uint8 image."""
  return image.astype(np.float32) * np.float32(1 / 255)


def to_uint8(x: np.ndarray) -> np.ndarray:
  """uint8 of a float image in [0, 1], rounded to the nearest level."""
  return (x * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def distort_color(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """uint8 (H, W, 3): TF-slim's four colour adjustments in one of its four orders."""
  ordering = ORDERINGS[int(rng.integers(len(ORDERINGS)))]
  amounts = {"brightness": rng.uniform(-BRIGHTNESS, BRIGHTNESS),
             "saturation": rng.uniform(*SATURATION),
             "hue": rng.uniform(-HUE, HUE),
             "contrast": rng.uniform(*CONTRAST)}
  p = _planes(image) * np.float32(1 / 255)
  for name in ordering:
    p = _COLOR_OPS[name](p, float(amounts[name]))
  return _pixels(to_uint8(p), image.shape)


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The image mirrored left-right with probability 1/2 (``rng.random() < 0.5``)."""
  return image[:, ::-1] if rng.random() < 0.5 else image


# ------------------------------------------------------------------------------ transforms

def train_image(image, rng: np.random.Generator, size: int = IMAGE_SIZE,
                area_range=AREA_RANGE, color: bool = True) -> np.ndarray:
  """uint8 (size, size, 3): the augmented training view of a decoded image (random crop,
  resize, flip, then ``distort_color`` unless ``color`` is False), all from ``rng``."""
  image = as_rgb(image)
  box = sample_crop(rng, image.shape[0], image.shape[1], area_range)
  out = random_flip(resize(_crop(image, box), size), rng)
  if color:
    out = distort_color(out, rng)
  return np.ascontiguousarray(out)


def eval_image(image, size: int = IMAGE_SIZE,
               fraction: float = CENTRAL_FRACTION) -> np.ndarray:
  """uint8 (size, size, 3): the central crop of ``fraction`` of each side, resized."""
  image = as_rgb(image)
  return resize(_crop(image, central_crop(image.shape[0], image.shape[1], fraction)), size)


def normalize(images, dtype=np.float32):
  """Inception's input scale, [-1, 1], of uint8 images (numpy or jax arrays, any shape)."""
  return images.astype(dtype) / 127.5 - 1.0


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_malloc_tuned: bool | None = None  # this process's outcome, once tried


def tune_malloc(mmap_threshold: int = 4 << 20, trim_threshold: int = 32 << 20) -> bool:
  """Keeps glibc's malloc from handing each image's freed 1 MB temporaries back to the
  kernel, once per process; whether it could (False off glibc).

  By default glibc returns freed memory at the top of the heap above a threshold that it
  resets itself, so every image's float temporaries are faulted in anew: a grain worker
  ran 1.3-1.5x slower (``benchmarks/input_pipeline.py --compare_malloc``). Allocations under
  ``mmap_threshold`` come from the heap, which keeps up to ``trim_threshold`` free. The
  transforms call it in the process they run in (grain's workers)."""
  global _malloc_tuned
  if _malloc_tuned is None:
    try:
      mallopt = ctypes.CDLL("libc.so.6").mallopt
      _malloc_tuned = (mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
                       and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1)
    except (OSError, AttributeError):
      _malloc_tuned = False
  return _malloc_tuned


def _output(element: dict, image: np.ndarray) -> dict:
  out = {"image": image, "label": np.int32(element["label"])}
  if "index" in element:
    out["index"] = element["index"]
  return out


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
  """grain: a tfds example -> its augmented training view (``train_image``). Called as
  ``transform(example, rng)`` it is also a ``zhang.experiment.stream.Transform``."""
  size: int = IMAGE_SIZE
  area_range: tuple[float, float] = AREA_RANGE
  color: bool = True
  tune_malloc: bool = True  # call ``tune_malloc`` in the process it runs in

  def random_map(self, element, rng: np.random.Generator):
    if self.tune_malloc:
      tune_malloc()
    return _output(element, train_image(element["image"], rng, self.size, self.area_range,
                                        self.color))

  def __call__(self, element, rng: np.random.Generator):
    return self.random_map(element, rng)


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
  """grain: a tfds example -> its central view (``eval_image``), for evaluation and for
  training without augmentation; ``transform(example, rng)`` ignores ``rng``."""
  size: int = IMAGE_SIZE
  fraction: float = CENTRAL_FRACTION
  tune_malloc: bool = True

  def map(self, element):
    if self.tune_malloc:
      tune_malloc()
    return _output(element, eval_image(element["image"], self.size, self.fraction))

  def __call__(self, element, rng: np.random.Generator | None = None):
    del rng  # the same view every time
    return self.map(element)


# ``data_dir`` naming tfds's fake ImageNet (``tfds.testing.mock_data``: random images of
# random small sizes, random labels), ``MOCK_EXAMPLES`` a split: the whole path in tests and
# CI without the dataset.
MOCK_DATA_DIR = "tfds-mock"
MOCK_EXAMPLES = 64


def load(data_dir: str | None = None, image_size: int = 0):
  """ImageNet (tfds ``imagenet2012``, prepared as array_record: docs/tpu.md) as a
  ``stream.StreamedDataset`` at ``image_size`` (0: ``IMAGE_SIZE``): training and evaluation
  on the central view (``EvalTransform``); replicas whose augmentation is ``inception``
  train on ``TrainTransform``'s view instead."""
  from zhang.experiment import data, stream
  if data_dir == MOCK_DATA_DIR:
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
      train, test, classes = data.tfds_sources("imagenet2012")
  else:
    train, test, classes = data.tfds_sources("imagenet2012", data_dir)
  size = image_size or IMAGE_SIZE
  view = EvalTransform(size)
  return stream.StreamedDataset("imagenet2012", train, test, classes, (size, size, 3),
                                view, view, augment_transform=TrainTransform(size))
