"""Dropout at a per-replica rate: a grid axis (``dropouts`` in a grid entry), as weight decay.

Srivastava et al. (2014): in training each unit is kept with probability 1 - rate and scaled
by 1 / (1 - rate), so its expectation is unchanged; evaluation applies none. The rate is a
traced float32 per replica, so one compiled program trains every rate of the grid (Flax's
``nn.Dropout`` takes a static one).

The draws are a pure function of the replica's randomization key, the step and the
example's index (``example_keys``), with a salt of their own (apart from the randomization's
streams and the augmentations'): a run stays a function of its seeds and resumes to the same
bits, and an example's mask does not depend on which batch or data shard it falls in.

Only models that declare it (``ModelSpec.dropout``) take a rate, and only in training (the
step passes them a ``Draw``): ``inception_v3``, before its logits, where TF-slim's
``inception_v3`` has it (its keep probability 0.8 is rate 0.2).
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

SALT = zlib.crc32(b"dropout") & 0x7FFFFFFF
UNIFORM_BITS = 24  # a uniform's random bits: exactly representable in float32


class Draw(NamedTuple):
  """What a model with dropout takes in training: the replica's rate and one key per
  example of the batch."""
  rate: jax.Array  # float32 (), in [0, 1)
  keys: jax.Array  # (B,) keys (``example_keys``)


def example_keys(key, step, indices):
  """The keys (B,) of examples ``indices`` at ``step``, from a replica's randomization key."""
  base = jax.random.fold_in(jax.random.fold_in(key, SALT), step)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)


def uniforms(keys, shape, layer: int = 0):
  """float32 (B, *shape) in [0, 1): per example, the top ``UNIFORM_BITS`` bits of
  ``jax.random.bits`` of its key (folded with ``layer``) times 2^-24, exact."""
  bits = jax.vmap(lambda k: jax.random.bits(jax.random.fold_in(k, layer), shape,
                                            jnp.uint32))(keys)
  return (bits >> (32 - UNIFORM_BITS)).astype(jnp.float32) * (2.0 ** -UNIFORM_BITS)


def apply(x, draw: Draw, layer: int = 0):
  """``x`` (B, ...) with each unit kept where its uniform is >= the rate (probability
  1 - rate) and multiplied by 1 / (1 - rate), zero elsewhere (a product by the inverse:
  what XLA makes of a division by a scalar anyway). At rate 0 every unit is kept and
  multiplied by 1: ``x`` to the bit. ``layer`` numbers a model's dropout layers (each draws
  its own masks)."""
  keep = uniforms(draw.keys, x.shape[1:], layer) >= draw.rate
  scale = (1 / (1 - draw.rate)).astype(x.dtype)
  return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
