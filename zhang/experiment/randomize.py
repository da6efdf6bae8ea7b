"""The paper's randomization tests, each a pure function of a replica's key.

Kinds (Section 2 of the paper):
  labels           labels corrupted with probability ``p``: each training label is replaced,
                   independently with probability p, by a class drawn uniformly at random
                   (it may equal the original, so about 0.9 p change with 10 classes).
                   p = 0 is the true-label test, p = 1 the random-label test.
  shuffled_pixels  one permutation of pixel positions, the same for every image (train and
                   test) and every channel.
  random_pixels    a different permutation of pixel positions for every image.
  gaussian         every image replaced by Gaussian noise with the training set's
                   per-channel mean and variance.

Label corruption applies to every kind (``corruption`` is p); pixel kinds usually use p = 0.
Nothing here is stored per example and per replica except the labels: random-pixel
permutations and Gaussian images are regenerated on the device from (replica key, split,
example index) whenever a batch needs them, so they are fixed across epochs and identical
after a restart. The test split of the pixel kinds is randomized the same way (with its own
example keys); test labels are never corrupted.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry_2x32

from zhang.errors import UsageError

KINDS = ("labels", "shuffled_pixels", "random_pixels", "gaussian")
TRAIN, TEST = 0, 1  # split ids folded into per-example keys


def kind_id(kind: str) -> int:
  if kind not in KINDS:
    raise UsageError(f"unknown randomization kind {kind!r}: choose one of {', '.join(KINDS)}")
  return KINDS.index(kind)


def _stream(key, name: str):
  """A key for one purpose, independent of the others derived from the same key."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def randomization_salt(kind: str, corruption: float) -> int:
  """A host integer naming a replica's randomization (kind and corruption level)."""
  return zlib.crc32(f"randomize/{kind}/{round(corruption * 1_000_000)}".encode()) & 0x7FFFFFFF


def keys(seed, salt):
  """The keys of one replica: (init, order, randomization); works under vmap.

  Initialization and batch order depend on the seed alone, so replicas that share a seed
  differ only in their data (a paired comparison across corruption levels). The
  randomization key also depends on kind and corruption (``salt``), so randomizations are
  independent between replicas.
  """
  base = jax.random.key(seed)
  return _stream(base, "init"), _stream(base, "order"), jax.random.fold_in(base, salt)


def replica_keys(seed: int, kind: str, corruption: float):
  """``keys`` of one replica given by its grid coordinates."""
  return keys(seed, randomization_salt(kind, corruption))


def corrupt_labels(key, labels, p, num_classes: int):
  """Replaces each label, independently with probability p, by a uniform random class.

  The draws are float32 and int32 whatever ``jax_enable_x64`` and the labels' dtype are
  (64-bit draws take other bits of the stream), so a seed gives the same labels anywhere."""
  k_mask, k_class = jax.random.split(_stream(key, "labels"))
  p = jnp.asarray(p, jnp.float32)
  replace = jax.random.uniform(k_mask, labels.shape, jnp.float32) < p
  random = jax.random.randint(k_class, labels.shape, 0, num_classes, dtype=jnp.int32)
  return jnp.where(replace, random.astype(labels.dtype), labels)


def bits_at(key, indices):
  """The uint32 random bits of elements ``indices`` (int, any shape) of a 1-d
  ``jax.random.bits(key, (n,))`` for any n > max(indices): with the partitionable Threefry
  stream (``jax_threefry_partitionable``, JAX's default) element i is the hash of the
  counter (0, i), its two words xored, whatever n is. Indices below 2**32."""
  if not jax.config.jax_threefry_partitionable or jax.random.key_data(key).shape != (2,):
    raise ValueError("bits_at needs Threefry keys and jax_threefry_partitionable=True "
                     "(JAX's default): a stream whose element i does not depend on its length")
  lo = jnp.asarray(indices).astype(jnp.uint32).reshape(-1)
  out = threefry_2x32(jax.random.key_data(key), jnp.concatenate([jnp.zeros_like(lo), lo]))
  return (out[:lo.size] ^ out[lo.size:]).reshape(jnp.shape(indices))


def corrupt_labels_at(key, labels, indices, p, num_classes: int):
  """``corrupt_labels(key, all_labels, p, num_classes)[indices]`` from the examples'
  indices and true ``labels`` alone (the same shape), without the whole label array: what
  the streaming input path uses, where nothing is stored per replica and example. The same
  draws as ``jax.random.uniform`` and ``jax.random.randint`` make (``bits_at``; the
  in-memory and streaming paths agree label for label: a test)."""
  k_mask, k_class = jax.random.split(_stream(key, "labels"))
  u = lax.bitcast_convert_type((bits_at(k_mask, indices) >> 9) | jnp.uint32(0x3F800000),
                               jnp.float32) - jnp.float32(1.0)
  replace = u < jnp.asarray(p, jnp.float32)
  # randint's arithmetic: 64 random bits (two words) reduced modulo the span.
  k_high, k_low = jax.random.split(k_class)
  span = jnp.uint32(num_classes)
  multiplier = (jnp.uint32(1 << 16) % span) * (jnp.uint32(1 << 16) % span) % span
  offset = ((bits_at(k_high, indices) % span) * multiplier + bits_at(k_low, indices) % span)
  random = (offset % span).astype(jnp.int32)
  return jnp.where(replace, random.astype(labels.dtype), labels)


def shared_permutation(key, num_pixels: int):
  """The shuffled-pixels permutation of one replica (the same for every image), int32
  whatever ``jax_enable_x64`` is."""
  return jax.random.permutation(_stream(key, "shuffled_pixels"),
                                jnp.arange(num_pixels, dtype=jnp.int32))


def words(key, n: int):
  """``n`` random uint32 of ``key``: Threefry-2x32 of the counters 0 .. n-1, two words per
  hash (``jax.random.bits``'s stream before ``jax_threefry_partitionable``). With
  ``example_normal`` it takes 1.4 s of XLA CPU compilation off every grid program with
  random-pixel or gaussian replicas (benchmarks/RESULTS.md, "Random numbers"). Keys of
  another implementation (``jax_default_prng_impl``) get ``jax.random.bits``."""
  data = jax.random.key_data(key)
  if data.shape != (2,):
    return jax.random.bits(key, (n,), jnp.uint32)
  return threefry_2x32(data, jnp.arange(n, dtype=jnp.uint32))


def example_normal(key, shape):
  """Standard normal float32 of ``shape``, as ``jax.random.normal`` makes them (the inverse
  error function of a uniform in (-1, 1)) but from ``words``."""
  bits = words(key, math.prod(shape)).reshape(shape)
  # 23 random mantissa bits: a float in [1, 2), then [-1, 1), then (-1, 1).
  u = lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
  u = jnp.maximum(2.0 * u - 3.0, jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0)))
  return lax.erf_inv(u) * jnp.float32(math.sqrt(2.0))


def _position_bits(n: int) -> int:
  """Low bits of ``example_permutation``'s packed words that hold a position in range(n)."""
  return max(1, (n - 1).bit_length())


def permutation_rounds(n: int) -> int:
  """Sorts ``example_permutation`` needs for ``n`` items (see there)."""
  b = _position_bits(n)
  if b > 24:
    raise ValueError(f"example_permutation: {n} items is more than 2**24")
  return -(-(2 * b + 10) // (32 - b))


def example_permutation(key, n: int):
  """A random permutation of ``range(n)`` (int32), drawn with one-operand sorts.

  ``jax.random.permutation`` sorts (random key, index) pairs; XLA CPU sorts a pair of arrays
  several times slower than one array, and random pixels need a permutation per image per
  step (a random-pixels replica of an MLP on Fashion-MNIST ran 3x slower with it:
  benchmarks/RESULTS.md, "Random numbers"). Here each round sorts one uint32 array: random
  bits above, the current position in
  the low b = bit_length(n - 1) bits, which the sort carries along. Equal random bits keep
  the previous round's order, so the rounds together sort by one key of rounds x (32 - b)
  random bits. ``permutation_rounds`` takes enough of them that any two items tie in every
  round with probability at most 2**-11 per permutation (2 rounds for 28x28 or 32x32
  images, 1 for 8x8); without such a tie every permutation is equally likely.
  """
  b = _position_bits(n)
  position = jnp.arange(n, dtype=jnp.uint32)
  perm = None
  for r in range(permutation_rounds(n)):
    bits = words(jax.random.fold_in(key, r), n)
    order = (jnp.sort((bits >> b << b) | position) & ((1 << b) - 1)).astype(jnp.int32)
    perm = order if perm is None else perm[order]
  return perm


def _example_key(key, kind: str, split: int, index):
  return jax.random.fold_in(jax.random.fold_in(_stream(key, kind), split), index)


def _permute_pixels(image, perm):
  h, w, c = image.shape
  return image.reshape(h * w, c)[perm].reshape(h, w, c)


def randomize_inputs(kind: str, key, images, indices, split: int, shared_perm,
                     gauss_mean, gauss_std):
  """Randomized float images of one replica.

  Args:
    kind: one of KINDS (static: replicas are grouped by kind, so no program computes a
      kind it does not need).
    key: the replica's randomization key.
    images: float32 (B, H, W, C) in [0, 1], the examples ``indices`` of ``split``.
    indices: int32 (B,) example indices within the split.
    split: TRAIN or TEST (a Python int, or a traced int32 scalar).
    shared_perm: int32 (H*W,), the replica's shuffled-pixels permutation.
    gauss_mean, gauss_std: float32 (C,), the training set's per-channel statistics.
  Returns:
    float32 (B, H, W, C).
  """
  if kind == "labels":
    return images
  if kind == "shuffled_pixels":
    return jax.vmap(_permute_pixels, (0, None))(images, shared_perm)
  if kind == "random_pixels":
    n = images.shape[1] * images.shape[2]
    perms = jax.vmap(lambda i: example_permutation(
        _example_key(key, "random_pixels", split, i), n))(indices)
    return jax.vmap(_permute_pixels)(images, perms)
  if kind == "gaussian":
    noise = jax.vmap(lambda i: example_normal(
        _example_key(key, "gaussian", split, i), images.shape[1:]))(indices)
    return noise * gauss_std + gauss_mean
  raise ValueError(f"unknown kind {kind!r}")


def segments(kinds: list[str]) -> tuple[tuple[str, int, int], ...]:
  """(kind, start, stop) of each run of equal kinds in replica order."""
  out = []
  for i, k in enumerate(kinds):
    if out and out[-1][0] == k:
      out[-1] = (k, out[-1][1], i + 1)
    else:
      out.append((k, i, i + 1))
  return tuple(out)


def channel_stats(images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images on the [0, 1] scale (for ``gaussian``)."""
  x = images_u8.reshape(-1, images_u8.shape[-1]).astype(np.float64) / 255.0
  return x.mean(0).astype(np.float32), x.std(0).astype(np.float32)
