"""Input augmentations, by name: a grid axis (``augmentations`` in a grid entry).

An augmentation is a pure function of (replica key, step, example index) and the batch's
float images: fixed by the seed, different between steps and epochs, the same after a
resume. It is applied in the train step on top of the replica's randomization, never to
test images (nor to the training set when it is evaluated). Each replica's augmentation is
a traced index into the names the grid uses, so replicas with different augmentations
train in one program.

Registered parts (a name is one part or several joined by ``+``, applied in the order
written, e.g. ``crop+flip``):
  none   the image as it is.
  crop   the paper's random crop. Images larger than the model's input (CIFAR's 32x32 for
         the 28x28 input) get a uniformly random window of the input's size instead of the
         centre one; the window is taken from the stored image before the randomization,
         which then applies to it (the crop is part of which pixels an example has).
         Images of the input's size (Fashion-MNIST 28x28, digits 8x8) are zero-padded by
         ``pad_width`` (1/14 of the side, at least 1: 2 for 28, 1 for 8) after the
         randomization and cropped back at a uniformly random offset.
  flip   a horizontal mirror with probability 1/2.
  inception  the Inception training crop, flip and colour distortion made on the host
         (``zhang.experiment.imagenet.TrainTransform``) for a dataset streamed from it
         (ImageNet): nothing on the device. The stream carries that view beside the central
         one, and a replica trains on the view its augmentation names.
  color  brightness, contrast, saturation and hue, each drawn uniformly per example from
         the ranges of ``COLOR`` (the paper's ImageNet list): brightness +-0.2 added to the
         [0, 1] image, contrast x[0.8, 1.2] about each channel's mean, saturation
         x[0.8, 1.2] about the luma (ITU-R 601), hue +-0.05 of a turn (a rotation of the
         YIQ chroma plane); then clipped to [0, 1]. Saturation and hue leave 1-channel
         images alone.

Each example's randomness is ``fold_in`` of the replica's randomization key with a salt of
its own (not the randomization's streams), the step, the example index and the part's name.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zhang.errors import UsageError


def _salt(name: str) -> int:
  return zlib.crc32(f"augment/{name}".encode()) & 0x7FFFFFFF


_SALT = _salt("")


def example_keys(key, step, indices, part: str):
  """The keys (B,) of examples ``indices`` at ``step`` for one part of an augmentation."""
  base = jax.random.fold_in(jax.random.fold_in(key, _SALT), step)
  salt = _salt(part)
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), salt))(indices)


def pad_width(side: int) -> int:
  """The zero padding of ``crop`` for images of the input's size: side / 14, at least 1."""
  return max(1, side // 14)


def crop_offsets(key, step, indices, max_y: int, max_x: int):
  """int32 (B, 2): each example's (top, left), uniform in [0, max_y] x [0, max_x]."""
  keys = example_keys(key, step, indices, "crop")
  draw = lambda k: jax.random.randint(k, (2,), 0, jnp.asarray([max_y + 1, max_x + 1]))
  return jax.vmap(draw)(keys).astype(jnp.int32)


def _windows(images, offsets, h: int, w: int):
  c = images.shape[-1]
  zero = jnp.zeros((), offsets.dtype)
  return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], zero), (h, w, c)))(
      images, offsets)


def _crop(key, step, indices, images):
  """Zero-pad by ``pad_width`` and crop back at a random offset (same-size images)."""
  h, w = images.shape[1:3]
  py, px = pad_width(h), pad_width(w)
  padded = jnp.pad(images, ((0, 0), (py, py), (px, px), (0, 0)))
  return _windows(padded, crop_offsets(key, step, indices, 2 * py, 2 * px), h, w)


def flips(key, step, indices):
  """bool (B,): which examples ``flip`` mirrors."""
  return jax.vmap(jax.random.bernoulli)(example_keys(key, step, indices, "flip"))


def _flip(key, step, indices, images):
  mirror = flips(key, step, indices)[:, None, None, None]
  return jnp.where(mirror, images[:, :, ::-1], images)


class ColorRanges(NamedTuple):
  """Half-widths of ``color``'s uniform draws (0: that adjustment is off)."""
  brightness: float = 0.2  # added, on the [0, 1] scale
  contrast: float = 0.2  # factor in [1 - c, 1 + c]
  saturation: float = 0.2  # factor in [1 - s, 1 + s]
  hue: float = 0.05  # turns


COLOR = ColorRanges()
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)
_TO_YIQ = np.asarray([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                      [0.211456, -0.522591, 0.311135]], np.float32)
_FROM_YIQ = np.linalg.inv(_TO_YIQ).astype(np.float32)


def color(key, step, indices, images, ranges: ColorRanges = COLOR):
  """Random brightness, contrast, saturation and hue (in that order), then a clip to [0, 1]."""
  keys = example_keys(key, step, indices, "color")
  u = jax.vmap(lambda k: jax.random.uniform(k, (4,), minval=-1.0, maxval=1.0))(keys)
  u = u * jnp.asarray(ranges, jnp.float32)  # (B, 4)
  b = lambda j: u[:, j, None, None, None]
  x = images + b(0)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)  # per image and channel
  x = (x - mean) * (1.0 + b(1)) + mean
  if images.shape[-1] == 3:
    gray = jnp.sum(x * _LUMA, axis=-1, keepdims=True)
    x = gray + (x - gray) * (1.0 + b(2))
    angle = 2 * np.pi * u[:, 3]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    one, zero = jnp.ones_like(cos), jnp.zeros_like(cos)
    rot = jnp.stack([jnp.stack([one, zero, zero], -1), jnp.stack([zero, cos, -sin], -1),
                     jnp.stack([zero, sin, cos], -1)], -2)  # (B, 3, 3) on (Y, I, Q)
    m = jnp.einsum("ij,bjk,kl->bil", _FROM_YIQ, rot, _TO_YIQ)
    x = jnp.einsum("bhwc,bdc->bhwd", x, m)
  return jnp.clip(x, 0.0, 1.0)


def _none(key, step, indices, images):
  del key, step, indices
  return images


_AUGMENTATIONS = {"none": _none, "crop": _crop, "flip": _flip, "color": color,
                  "inception": _none}
NAMES = tuple(_AUGMENTATIONS)
HOST = "inception"  # the part made on the host, by a streamed dataset's pipeline


def on_host(names: tuple[str, ...]) -> list[bool]:
  """Whether each of ``names`` takes the host's augmented view (``HOST``)."""
  return [HOST in parts(n) for n in names]


def parts(name: str) -> tuple[str, ...]:
  return tuple(name.split("+"))


def check_name(name) -> str:
  """``name`` if each of its ``+``-joined parts is registered, else a UsageError."""
  bad = [p for p in parts(name) if p not in _AUGMENTATIONS] if isinstance(name, str) else [name]
  if bad:
    raise UsageError(f"unknown augmentation {bad[0]!r} in {name!r}: choose one of "
                     f"{', '.join(NAMES)}, or several joined by '+' (e.g. crop+flip)")
  return name


def used(names) -> tuple[str, ...]:
  """The distinct augmentations of a grid's replicas, in registry order of their parts."""
  order = lambda n: [NAMES.index(p) for p in parts(n)]
  return tuple(sorted(set(names), key=lambda n: (order(n), n))) or ("none",)


def index(names: tuple[str, ...], name: str) -> int:
  """A replica's augmentation as its index into the grid's ``used`` names."""
  return names.index(name)


def crops(names: tuple[str, ...]) -> bool:
  """Whether any of ``names`` crops (then the uncropped training images stay on device)."""
  return any("crop" in parts(n) for n in names)


def window(names: tuple[str, ...], which, key, step, indices, images, size):
  """The input-size windows (B, h, w, C) of images (B, H, W, C) larger than ``size``:
  random for replicas whose ``names[which]`` crops, the centre one otherwise."""
  (h, w), (big_h, big_w) = size, images.shape[1:3]
  top, left = (big_h - h) // 2, (big_w - w) // 2
  cropping = [("crop" in parts(n)) for n in names]
  if (big_h, big_w) == (h, w):
    return images
  if not any(cropping):
    return images[:, top:top + h, left:left + w]
  offsets = crop_offsets(key, step, indices, big_h - h, big_w - w)
  if not all(cropping):
    offsets = jnp.where(jnp.asarray(cropping)[which], offsets,
                        jnp.asarray([top, left], jnp.int32))
  return _windows(images, offsets, h, w)


def compose(name: str, windowed: bool = False):
  """The function ``(key, step, indices, images) -> images`` of a name; ``windowed``: the
  crop was already taken by ``window`` (images larger than the input)."""
  fns = [_AUGMENTATIONS[p] for p in parts(name) if not (windowed and p == "crop")]

  def fn(key, step, indices, images):
    for f in fns:
      images = f(key, step, indices, images)
    return images
  return fn


def apply(names: tuple[str, ...], which, key, step, indices, images, windowed: bool = False):
  """Images (B, H, W, C) of one replica augmented by ``names[which]`` (``which`` traced)."""
  fns = [compose(n, windowed) for n in names]
  if len(fns) == 1:  # the grid uses one: no branch to compile
    return fns[0](key, step, indices, images)
  return jax.lax.switch(which, fns, key, step, indices, images)
