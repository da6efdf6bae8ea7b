"""Inception V3 (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer
Vision"): the paper's ImageNet model (its Table 2), as TF-slim's ``inception_v3`` and Keras'
``InceptionV3`` build it, without the auxiliary classifier.

299x299x3 inputs (any of at least 75x75: the smallest that reaches Mixed_7c), NHWC. A
stem of five convolutions and two max pools (35x35x192 at 299), three 35x35 modules
(Mixed_5b-5d: the paper's figure 5, with a 5x5 branch beside its two 3x3s, as TF-slim and
Keras have it), a grid reduction (Mixed_6a), four 17x17 modules with
factorized 7x7 convolutions (Mixed_6b-6e, figure 6), a reduction (Mixed_7a), two 8x8
modules with expanded filter banks (Mixed_7b-7c, figure 7), a global average pool, the
replica's dropout (``zhang.experiment.dropout``; TF-slim's place) and the logits.

Every convolution is bias-free and followed by batch norm and a ReLU. The batch norm is
Keras' (``scale=False``: an offset only, the ReLU after it and the next layer's weights make
a scale redundant; epsilon 1e-3; momentum 0.99). With 1,000 classes: 23,817,352 parameters
and 34,432 batch statistics (means and variances), 23,851,784 in all, Keras' count
(``tests/test_inception_v3.py`` checks it against the layer-by-layer arithmetic).

Its layers are the ones ``zhang.runtime.layers.explicit_gradients`` takes: ``nn.Conv``
(1x1, 3x3, 5x5, 1x7, 7x1, 1x3, 3x1; SAME and VALID; strides 1 and 2), the project's
``MaxPool`` (3x3, stride 2, VALID) and the logits' ``nn.Dense``. The branches' 3x3 average
pools (stride 1, SAME, the padding left out of each mean as TensorFlow's) keep JAX's
gradient, a window sum.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from zhang.errors import UsageError
from zhang.experiment import dropout as dropout_lib
from zhang.experiment.models import MaxPool

MIN_SIZE = 75  # the smallest height and width whose Mixed_7a output is not empty (ModelSpec's)
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3  # Keras' BatchNormalization


class Conv(NamedTuple):
  """One conv-BN-ReLU layer of a branch: ``features`` filters of ``kh`` x ``kw``."""
  features: int
  kh: int
  kw: int
  stride: int = 1
  padding: str = "SAME"


def _strided(features: int) -> Conv:
  """A 3x3 convolution of stride 2, VALID: the stem's first and the grid reductions'."""
  return Conv(features, 3, 3, 2, "VALID")


AVG, MAX = "avg", "max"  # a branch's 3x3 average pool (stride 1) and max pool (stride 2)

# A module is its branches, concatenated on channels. A branch is a sequence of layers:
# ``Conv``, AVG or MAX, or a tuple of Convs applied side by side (figure 7's 1x3 and 3x1).


def mixed_35(pool_features: int) -> tuple:
  """Mixed_5b-5d: 1x1; 1x1 -> 5x5; 1x1 -> 3x3 -> 3x3; average pool -> 1x1."""
  return ((Conv(64, 1, 1),), (Conv(48, 1, 1), Conv(64, 5, 5)),
          (Conv(64, 1, 1), Conv(96, 3, 3), Conv(96, 3, 3)), (AVG, Conv(pool_features, 1, 1)))


MIXED_6A = ((_strided(384),), (Conv(64, 1, 1), Conv(96, 3, 3), _strided(96)), (MAX,))


def mixed_17(features_7x7: int) -> tuple:
  """Mixed_6b-6e: 1x1; 1x1 -> 1x7 -> 7x1; 1x1 -> (7x1 -> 1x7) x 2; average pool -> 1x1."""
  c = features_7x7
  return ((Conv(192, 1, 1),), (Conv(c, 1, 1), Conv(c, 1, 7), Conv(192, 7, 1)),
          (Conv(c, 1, 1), Conv(c, 7, 1), Conv(c, 1, 7), Conv(c, 7, 1), Conv(192, 1, 7)),
          (AVG, Conv(192, 1, 1)))


MIXED_7A = ((Conv(192, 1, 1), _strided(320)),
            (Conv(192, 1, 1), Conv(192, 1, 7), Conv(192, 7, 1), _strided(192)), (MAX,))
_SPLIT = (Conv(384, 1, 3), Conv(384, 3, 1))
MIXED_8 = ((Conv(320, 1, 1),), (Conv(384, 1, 1), _SPLIT),
           (Conv(448, 1, 1), Conv(384, 3, 3), _SPLIT), (AVG, Conv(192, 1, 1)))

# The stem: (name, layer), TF-slim's names.
STEM = (("Conv2d_1a_3x3", _strided(32)), ("Conv2d_2a_3x3", Conv(32, 3, 3, 1, "VALID")),
        ("Conv2d_2b_3x3", Conv(64, 3, 3)), ("MaxPool_3a_3x3", MAX),
        ("Conv2d_3b_1x1", Conv(80, 1, 1, 1, "VALID")),
        ("Conv2d_4a_3x3", Conv(192, 3, 3, 1, "VALID")), ("MaxPool_5a_3x3", MAX))
MODULES = (("Mixed_5b", mixed_35(32)), ("Mixed_5c", mixed_35(64)), ("Mixed_5d", mixed_35(64)),
           ("Mixed_6a", MIXED_6A), ("Mixed_6b", mixed_17(128)), ("Mixed_6c", mixed_17(160)),
           ("Mixed_6d", mixed_17(160)), ("Mixed_6e", mixed_17(192)), ("Mixed_7a", MIXED_7A),
           ("Mixed_7b", MIXED_8), ("Mixed_7c", MIXED_8))


class ConvBN(nn.Module):
  """Conv (no bias), batch norm (offset only), ReLU."""
  layer: Conv

  @nn.compact
  def __call__(self, x, train: bool):
    c = self.layer
    x = nn.Conv(c.features, (c.kh, c.kw), strides=c.stride, padding=c.padding,
                use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, use_scale=False, momentum=BN_MOMENTUM,
                     epsilon=BN_EPSILON)(x)
    return nn.relu(x)


def _layer(x, layer, train: bool):
  """One layer of a branch or the stem (``MODULES``' forms), inside a compact module."""
  if layer == AVG:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)
  if layer == MAX:
    return MaxPool((3, 3), (2, 2), padding="VALID")(x)
  if isinstance(layer, Conv):
    return ConvBN(layer)(x, train)
  return jnp.concatenate([ConvBN(c)(x, train) for c in layer], axis=-1)


class Mixed(nn.Module):
  """An Inception module: its branches (``MODULES``' form) side by side, concatenated."""
  branches: tuple

  @nn.compact
  def __call__(self, x, train: bool):
    outputs = []
    for branch in self.branches:
      y = x
      for layer in branch:
        y = _layer(y, layer, train)
      outputs.append(y)
    return jnp.concatenate(outputs, axis=-1)


class InceptionV3(nn.Module):
  """Inception V3 without the auxiliary head; ``dropout`` (a ``zhang.experiment.dropout.
  Draw``, training only) before the logits."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = True, dropout: dropout_lib.Draw | None = None):
    if min(x.shape[1:3]) < MIN_SIZE:
      raise UsageError(f"inception_v3 takes inputs of at least {MIN_SIZE}x{MIN_SIZE} pixels "
                       f"(ImageNet's are 299x299), and these are "
                       f"{x.shape[1]}x{x.shape[2]}: use a dataset of larger images")
    for name, layer in STEM:
      x = (ConvBN(layer, name=name)(x, train) if isinstance(layer, Conv)
           else MaxPool((3, 3), (2, 2), padding="VALID", name=name)(x))
    for name, branches in MODULES:
      x = Mixed(branches, name=name)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if dropout is not None:
      x = dropout_lib.apply(x, dropout)
    return nn.Dense(self.num_classes, name="Logits")(x)
