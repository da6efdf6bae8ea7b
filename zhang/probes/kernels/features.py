"""Feature maps for the kernel experiments of Section 5: raw pixels, Gabor, random conv.

A feature map is a list of column blocks: each block is a function from a batch of
uint8 images (N, H, W, C) to float64 features (N, d_block). The kernel code builds
Gram matrices one block at a time, so a map with many random filters (the paper
uses 32,000) never has to hold all its features at once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from zhang.errors import UsageError

Block = Callable[[np.ndarray], np.ndarray]
NAMES = ("raw", "gabor", "random_conv", "onehot")
# Random filters per block: bounds the (rows * positions, filters) activations.
_FILTERS_PER_BLOCK = 256
_ROWS_PER_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class FeatureMap:
  name: str
  dim: int
  blocks: list[tuple[int, Block]]  # (d_block, fn)

  @property
  def max_block_dim(self) -> int:
    return max(d for d, _ in self.blocks)


def _as_float(images: np.ndarray) -> np.ndarray:
  return np.asarray(images, dtype=np.float32) / 255.0


def _by_rows(fn: Block) -> Block:
  """Applies fn to row chunks so its temporaries stay small."""
  def chunked(images):
    return np.concatenate([fn(images[i:i + _ROWS_PER_CHUNK])
                           for i in range(0, len(images), _ROWS_PER_CHUNK)], axis=0)
  return chunked


# --------------------------------------------------------------------------- raw

def raw(image_shape) -> FeatureMap:
  """Pixels scaled to [0, 1], flattened."""
  d = int(np.prod(image_shape))
  return FeatureMap("raw", d, [(d, lambda im: _as_float(im).reshape(len(im), -1)
                                .astype(np.float64))])


def onehot(image_shape, vocab: int) -> FeatureMap:
  """Token inputs (``modadd``'s (a, b)): each token's one-hot vector over ``vocab`` ids,
  concatenated (the inputs ``mlp_tokens`` sees)."""
  tokens = int(np.prod(image_shape))
  d = tokens * vocab

  def block(im):
    ids = np.asarray(im).reshape(len(im), tokens).astype(np.int64)
    out = np.zeros((len(im), tokens, vocab))
    np.put_along_axis(out, ids[..., None], 1.0, axis=-1)
    return out.reshape(len(im), d)

  return FeatureMap("onehot", d, [(d, block)])


# --------------------------------------------------------------------------- gabor

def gabor_filters(size: int, sigmas, orientations: int, xi: float = 3 * math.pi / 4):
  """Complex Morlet (zero-mean Gabor) wavelets on a periodic size x size grid.

  Returns (len(sigmas) * orientations, size, size) complex filters centred at
  the origin (wrapped), and a Gaussian low-pass at the largest scale.
  """
  u = np.fft.fftfreq(size) * size  # signed integer offsets 0, 1, ..., -1
  uy, ux = np.meshgrid(u, u, indexing="ij")
  filters = []
  for sigma in sigmas:
    envelope = np.exp(-(ux ** 2 + uy ** 2) / (2 * sigma ** 2))
    for k in range(orientations):
      theta = math.pi * k / orientations
      wave = np.exp(1j * (xi / sigma) * (ux * math.cos(theta) + uy * math.sin(theta)))
      # Subtracting beta * envelope makes the filter sum to zero (no DC response).
      beta = (envelope * wave).sum() / envelope.sum()
      psi = envelope * (wave - beta)
      filters.append(psi / np.abs(psi).sum())
  low = np.exp(-(ux ** 2 + uy ** 2) / (2 * max(sigmas) ** 2))
  return np.stack(filters), low / low.sum()


def gabor(image_shape, orientations: int = 8) -> FeatureMap:
  """Moduli of a Gabor wavelet filter bank, average-pooled, plus a low-pass.

  Scales 0.8 * 2^j (two for images up to 16 pixels, three above); outputs are
  pooled 2x2, so a 28x28x1 image gives (1 + 3 * 8) * 14 * 14 = 4900 features.
  """
  h, w, c = image_shape
  sigmas = [0.8 * 2 ** j for j in range(2 if max(h, w) <= 16 else 3)]
  pad = int(math.ceil(3 * max(sigmas)))
  size = max(h, w) + 2 * pad
  psi, low = gabor_filters(size, sigmas, orientations)
  psi_hat = jnp.asarray(np.fft.fft2(psi), jnp.complex64)  # (F, size, size)
  low_hat = jnp.asarray(np.fft.fft2(low)[None], jnp.complex64)
  pool = 2
  cell = (h // pool) * (w // pool) * c

  def block(filt_hat, modulus):
    return _by_rows(lambda im: np.asarray(_filter_pool(
        _pad_rows(im), filt_hat, size, pad, pool, modulus), np.float64)[:len(im)])

  # One block for the low-pass, then one per scale (all orientations of a sigma).
  blocks = [(cell, block(low_hat, False))]
  blocks += [(cell * orientations, block(psi_hat[j * orientations:(j + 1) * orientations], True))
             for j in range(len(sigmas))]
  return FeatureMap("gabor", sum(d for d, _ in blocks), blocks)


@functools.partial(jax.jit, static_argnames=("size", "pad", "pool", "modulus"))
def _filter_pool(images, filt_hat, size: int, pad: int, pool: int, modulus: bool):
  """Circular convolution by FFT on a zero-padded grid, |.| or real part, pooling.

  (N, H, W, C) uint8 -> (N, H/pool * W/pool * C * F) float32.
  """
  n, h, w, c = images.shape
  x = images.astype(jnp.float32).transpose(0, 3, 1, 2) / 255.0  # (N, C, H, W)
  x = jnp.pad(x, ((0, 0), (0, 0), (pad, size - h - pad), (pad, size - w - pad)))
  y = jnp.fft.ifft2(jnp.fft.fft2(x)[:, :, None] * filt_hat)  # (N, C, F, size, size)
  y = jnp.abs(y) if modulus else y.real
  y = y[..., pad:pad + h, pad:pad + w].transpose(0, 3, 4, 1, 2)  # (N, H, W, C, F)
  hp, wp = h // pool, w // pool
  y = y[:, :hp * pool, :wp * pool].reshape(n, hp, pool, wp, pool, c, -1).mean(axis=(2, 4))
  return y.reshape(n, -1)


# --------------------------------------------------------------------------- random conv

def _pad_rows(images: np.ndarray) -> np.ndarray:
  """Pads a chunk to _ROWS_PER_CHUNK rows so the jitted map compiles once."""
  if len(images) == _ROWS_PER_CHUNK:
    return images
  pad = np.zeros((_ROWS_PER_CHUNK - len(images),) + images.shape[1:], images.dtype)
  return np.concatenate([images, pad])


def _patch_size(h: int) -> int:
  return 3 if h <= 12 else (5 if h <= 28 else 6)


def random_conv(image_shape, num_filters: int, seed: int = 0) -> FeatureMap:
  """One random convolutional layer: ReLU of random filters, pooled over quadrants.

  Each filter is a unit-norm Gaussian vector on p x p x C patches (p = 3, 5, 6
  for 8, 28, 32 pixel images), applied to mean-centred patches; each output map
  is average-pooled over its 2x2 quadrants. Features are scaled by
  1/sqrt(num_filters) so the linear kernel does not grow with the filter count.
  Dimension: 4 * num_filters.
  """
  if num_filters < 1:
    raise UsageError(f"`num_filters` must be >= 1; got {num_filters}")
  h, w, c = image_shape
  p = _patch_size(h)
  rng = np.random.default_rng(seed)
  scale = 1.0 / math.sqrt(num_filters)
  blocks = []
  for start in range(0, num_filters, _FILTERS_PER_BLOCK):
    f = min(_FILTERS_PER_BLOCK, num_filters - start)
    filt = rng.standard_normal((p * p * c, f)).astype(np.float32)
    filt /= np.linalg.norm(filt, axis=0, keepdims=True)
    blocks.append((4 * f, _by_rows(lambda im, filt=filt: np.asarray(
        _conv_relu_pool(_pad_rows(im), filt, p), dtype=np.float64)[:len(im)] * scale)))
  return FeatureMap("random_conv", 4 * num_filters, blocks)


@functools.partial(jax.jit, static_argnames="p")
def _conv_relu_pool(images, filt, p: int):
  """(N, H, W, C) uint8 -> (N, 4 * F) float32: conv, ReLU, quadrant means."""
  x = images.astype(jnp.float32) / 255.0
  patches = jax.lax.conv_general_dilated_patches(
      x, (p, p), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  patches = patches - patches.mean(axis=-1, keepdims=True)
  maps = jax.nn.relu(patches @ filt)  # (N, oh, ow, F)
  n, oh, ow, f = maps.shape
  hy, hx = oh // 2, ow // 2
  quads = [maps[:, :hy, :hx], maps[:, :hy, hx:], maps[:, hy:, :hx], maps[:, hy:, hx:]]
  return jnp.concatenate([q.mean(axis=(1, 2)) for q in quads], axis=1)


def get(name: str, image_shape, num_filters: int = 256, seed: int = 0,
        vocab: int | None = None) -> FeatureMap:
  """The feature map called `name` for images of `image_shape` (H, W, C); ``onehot`` for
  token inputs with ``vocab`` ids."""
  if name == "onehot":
    if vocab is None:
      raise UsageError("`features` onehot is for token datasets (modadd)")
    return onehot(image_shape, vocab)
  if name == "raw":
    return raw(image_shape)
  if name == "gabor":
    return gabor(image_shape)
  if name == "random_conv":
    return random_conv(image_shape, num_filters, seed)
  raise UsageError(f"unknown features {name!r}: choose one of {', '.join(NAMES)}")
