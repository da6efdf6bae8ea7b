"""The paper's CIFAR-10 models in Flax (Linen), by name.

Plain parameter pytrees (``init``/``apply``) keep ``jax.vmap`` over a stack of replicas
simple. Every model takes ``(B, H, W, C)`` float inputs and ``train`` (batch-norm mode) and
returns logits. Parameter counts for 28x28x3 inputs and 10 classes match the paper exactly
(batch-norm scales and offsets excluded, as the paper counts them); ``tests/test_models.py``
pins them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zhang import layers
from zhang.errors import UsageError


class LayerOps(NamedTuple):
  """The models' convolution, max pool, local response norm and dense product: one forward
  computation, two ways to differentiate it (``GRADIENTS``)."""
  conv: Callable | None  # nn.Conv's conv_general_dilated (None: lax's)
  max_pool: Callable  # (x, window, strides) -> SAME max pooling
  lrn: Callable  # x -> local response normalization
  dense: Callable | None = None  # nn.Dense's dot_general (None: lax's)


def _flax_max_pool(x, window, strides):
  return nn.max_pool(x, window, strides=strides, padding="SAME")


# Config field conv_gradient: "jax" (JAX's own rules) or "explicit" (zhang/layers.py: the
# same gradients in forms that XLA CPU runs fast inside the step loop). The MLPs take only
# the dense product from it.
GRADIENTS = {
    "jax": LayerOps(None, _flax_max_pool, layers.lrn_forward),
    "explicit": LayerOps(layers.conv_general_dilated, layers.max_pool,
                         layers.local_response_norm, layers.dense_dot_general),
}



class MLP(nn.Module):
  """Flatten, ``depth`` x (Dense(width), ReLU), Dense(num_classes)."""
  depth: int
  num_classes: int
  width: int = 512
  ops: LayerOps = GRADIENTS["jax"]

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    x = x.reshape(x.shape[0], -1)
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width, dot_general=self.ops.dense)(x))
    return nn.Dense(self.num_classes, dot_general=self.ops.dense)(x)


class AlexNetSmall(nn.Module):
  """Two [conv 5x5x64, ReLU, max-pool 3x3/2, LRN] modules, Dense 384, Dense 192, Dense 10."""
  num_classes: int
  ops: LayerOps = GRADIENTS["jax"]

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    for _ in range(2):
      x = nn.relu(nn.Conv(64, (5, 5), padding="SAME", conv_general_dilated=self.ops.conv)(x))
      x = self.ops.max_pool(x, (3, 3), (2, 2))
      x = self.ops.lrn(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(384, dot_general=self.ops.dense)(x))
    x = nn.relu(nn.Dense(192, dot_general=self.ops.dense)(x))
    return nn.Dense(self.num_classes, dot_general=self.ops.dense)(x)


class ConvModule(nn.Module):
  """Conv (with bias), optional batch norm, ReLU."""
  features: int
  kernel: int
  stride: int = 1
  batch_norm: bool = True
  ops: LayerOps = GRADIENTS["jax"]

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                padding="SAME", conv_general_dilated=self.ops.conv)(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
    return nn.relu(x)


class InceptionSmall(nn.Module):
  """The small Inception of the paper's Appendix A (with or without batch norm)."""
  num_classes: int
  batch_norm: bool = True
  ops: LayerOps = GRADIENTS["jax"]

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = lambda c, k, s=1: ConvModule(c, k, s, self.batch_norm, self.ops)

    def inception(x, c1, c3):
      return jnp.concatenate([conv(c1, 1)(x, train), conv(c3, 3)(x, train)], axis=-1)

    def downsample(x, c3):
      pooled = self.ops.max_pool(x, (3, 3), (2, 2))
      return jnp.concatenate([conv(c3, 3, 2)(x, train), pooled], axis=-1)

    x = conv(96, 3)(x, train)
    x = inception(x, 32, 32)
    x = inception(x, 32, 48)
    x = downsample(x, 80)
    for c1, c3 in ((112, 48), (96, 64), (80, 80), (48, 96)):
      x = inception(x, c1, c3)
    x = downsample(x, 96)
    x = inception(x, 176, 160)
    x = inception(x, 176, 160)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dot_general=self.ops.dense)(x)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  make: Callable[[int, LayerOps], nn.Module]  # (num_classes, layer ops) -> module
  learning_rate: float  # the paper's
  batch_norm: bool
  description: str

  def build(self, num_classes: int, conv_gradient: str = "jax",
            grad_chunks: bool = True) -> nn.Module:
    """The module; ``conv_gradient`` ("jax" or "explicit", see GRADIENTS) changes only how
    the conv layers' gradients are evaluated, never the parameters or the forward pass.
    ``grad_chunks=False``: explicit convolution gradients over the whole batch at once
    (``zhang.layers.batch_chunks``)."""
    if conv_gradient not in GRADIENTS:
      raise UsageError(f"conv_gradient={conv_gradient!r} must be one of "
                       f"{', '.join(GRADIENTS)}")
    ops = GRADIENTS[conv_gradient]
    if conv_gradient == "explicit" and not grad_chunks:
      ops = ops._replace(conv=functools.partial(layers.conv_general_dilated,
                                                grad_chunks=False))
    return self.make(num_classes, ops)


_MODELS = {m.name: m for m in [
    ModelSpec("mlp_1x512", lambda k, ops: MLP(1, k, ops=ops), 0.01, False,
              "MLP, one hidden layer of 512"),
    ModelSpec("mlp_3x512", lambda k, ops: MLP(3, k, ops=ops), 0.01, False,
              "MLP, three hidden layers of 512"),
    ModelSpec("alexnet_small", lambda k, ops: AlexNetSmall(k, ops), 0.01, False,
              "small AlexNet with LRN"),
    ModelSpec("inception_small", lambda k, ops: InceptionSmall(k, True, ops), 0.1, True,
              "small Inception"),
    ModelSpec("inception_small_nobn", lambda k, ops: InceptionSmall(k, False, ops), 0.1, False,
              "small Inception without batch norm"),
]}


def names() -> list[str]:
  return list(_MODELS)


def get(name: str) -> ModelSpec:
  if name not in _MODELS:
    raise UsageError(f"unknown model {name!r}: choose one of {', '.join(_MODELS)}")
  return _MODELS[name]


def is_batch_norm_param(path) -> bool:
  return any("BatchNorm" in str(getattr(k, "key", k)) for k in path)


def variable_shapes(name: str, input_shape=(28, 28, 3), num_classes: int = 10):
  """Shapes of the model's variables (no computation: ``jax.eval_shape``)."""
  module = get(name).build(num_classes)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x.shape), False))


def param_count(name: str, input_shape=(28, 28, 3), num_classes: int = 10,
                include_batch_norm: bool = False) -> int:
  """Trainable parameters, batch-norm scales and offsets excluded unless asked for."""
  params = variable_shapes(name, input_shape, num_classes)["params"]
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return int(sum(np.prod(leaf.shape) for path, leaf in leaves
                 if include_batch_norm or not is_batch_norm_param(path)))
