"""The paper's CIFAR-10 models in Flax (Linen), by name.

Plain parameter pytrees (``init``/``apply``) keep ``jax.vmap`` over a stack of replicas
simple. Every model takes ``(B, H, W, C)`` float inputs and ``train`` (batch-norm mode) and
returns logits. Parameter counts for 28x28x3 inputs and 10 classes match the paper exactly
(batch-norm scales and offsets excluded, as the paper counts them); ``tests/test_models.py``
pins them. They are plain Flax modules: how a backend differentiates them fastest is the
execution plan's business (``zhang/runtime/plan.py``), applied around ``apply``, never inside them.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zhang.errors import UsageError
from zhang.experiment import parameterization as param_lib
from zhang.experiment.one_hot import OneHotDense


def local_response_norm(x, depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75):
  """Local response normalization across channels, as ``tf.nn.lrn`` defines it:
  x / (bias + alpha * sum of x^2 over the 2 r + 1 nearest channels)^beta."""
  c = x.shape[-1]
  padded = jnp.pad(jnp.square(x), [(0, 0)] * (x.ndim - 1) + [(depth_radius, depth_radius)])
  window = sum(padded[..., i:i + c] for i in range(2 * depth_radius + 1))
  return x / (bias + alpha * window) ** beta


class MaxPool(nn.Module):
  """``nn.max_pool`` with SAME (or VALID) padding, as a module: a layer the execution plan
  can find (``zhang.runtime.layers.explicit_gradients``)."""
  window: tuple[int, int]
  strides: tuple[int, int]
  padding: str = "SAME"

  def __call__(self, x):
    return nn.max_pool(x, self.window, strides=self.strides, padding=self.padding)


class LocalResponseNorm(nn.Module):
  """``local_response_norm`` with its defaults (the paper's AlexNet), as a module."""

  def __call__(self, x):
    return local_response_norm(x)


def _scaled_dense(x, features: int, parameterization: str, role: str, width: int,
                  dense=nn.Dense, **kwargs):
  """``dense(features)`` of ``x`` under the parameterization (``zhang.experiment.
  parameterization``): the layer's initialization, and its multiplier applied to the input
  (m x @ w = m (x @ w), so the layer stays a plain Dense that the execution plan and the
  tangent kernel's factoring recognize). Standard is Flax's Dense as it was."""
  if parameterization == "standard":
    return dense(features, **kwargs)(x)
  scale = param_lib.layer_scale(parameterization, role, x.shape[-1], width)
  layer = dense(features, kernel_init=param_lib.initializer(scale.init_std), **kwargs)
  return layer(x * scale.multiplier if scale.multiplier != 1.0 else x)


class MLP(nn.Module):
  """Flatten, ``depth`` x (Dense(width), ReLU), Dense(num_classes), under a
  ``parameterization`` (``zhang.experiment.parameterization``; standard: Flax's defaults)."""
  depth: int
  num_classes: int
  width: int = 512
  parameterization: str = "standard"

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    x = x.reshape(x.shape[0], -1)
    roles = param_lib.roles(self.depth + 1)
    for i in range(self.depth):
      x = nn.relu(_scaled_dense(x, self.width, self.parameterization, roles[i], self.width))
    return _scaled_dense(x, self.num_classes, self.parameterization, "output", self.width)


class AlexNetSmall(nn.Module):
  """Two [conv 5x5x64, ReLU, max-pool 3x3/2, LRN] modules, Dense 384, Dense 192, Dense 10."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    for _ in range(2):
      x = nn.relu(nn.Conv(64, (5, 5), padding="SAME")(x))
      x = MaxPool((3, 3), (2, 2))(x)
      x = LocalResponseNorm()(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(384)(x))
    x = nn.relu(nn.Dense(192)(x))
    return nn.Dense(self.num_classes)(x)


class ConvModule(nn.Module):
  """Conv (with bias), optional batch norm, ReLU."""
  features: int
  kernel: int
  stride: int = 1
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                padding="SAME")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
    return nn.relu(x)


class InceptionSmall(nn.Module):
  """The small Inception of the paper's Appendix A (with or without batch norm)."""
  num_classes: int
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = lambda c, k, s=1: ConvModule(c, k, s, self.batch_norm)

    def inception(x, c1, c3):
      return jnp.concatenate([conv(c1, 1)(x, train), conv(c3, 3)(x, train)], axis=-1)

    def downsample(x, c3):
      pooled = MaxPool((3, 3), (2, 2))(x)
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
    return nn.Dense(self.num_classes)(x)


class TokenMLP(nn.Module):
  """An MLP on the one-hot residues of a pair (a, b): concat(onehot(a), onehot(b)), Dense
  (width), ReLU, Dense(num_classes), under a ``parameterization``. Inputs are token ids,
  (B, 1, 2, 1) or (B, 2). The first layer is a ``OneHotDense``: the same parameters and
  values as a Dense on the one-hot vectors, computed as a sum of the tokens' kernel rows."""
  num_classes: int
  width: int = 512
  parameterization: str = "standard"

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    tokens = x.reshape(x.shape[0], -1).astype(jnp.int32)
    x = jax.nn.one_hot(tokens, self.num_classes).reshape(tokens.shape[0], -1)
    scale = param_lib.layer_scale(self.parameterization, "input", x.shape[-1], self.width)
    dense = functools.partial(OneHotDense, vocab=self.num_classes,
                              unit_values=scale.multiplier == 1.0)
    x = nn.relu(_scaled_dense(x, self.width, self.parameterization, "input", self.width,
                              dense=dense, name="Dense_0"))
    return _scaled_dense(x, self.num_classes, self.parameterization, "output", self.width,
                         name="Dense_1")



class OneLayerTransformer(nn.Module):
  """Nanda et al. (2023)'s grokking transformer: tokens a, b, "=" (id ``num_classes``),
  learned token and position embeddings (d_model 128), one attention layer (4 heads of 32)
  and one ReLU MLP (512), both residual, no layer norm, logits read at "=". Inputs are the
  token ids (a, b), (B, 1, 2, 1) or (B, 2)."""
  num_classes: int
  d_model: int = 128
  heads: int = 4
  d_mlp: int = 512

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    tokens = x.reshape(x.shape[0], -1).astype(jnp.int32)
    equals = jnp.full((tokens.shape[0], 1), self.num_classes, jnp.int32)
    tokens = jnp.concatenate([tokens, equals], axis=1)  # (B, 3)
    init = nn.initializers.normal(1.0 / np.sqrt(self.d_model))
    h = nn.Embed(self.num_classes + 1, self.d_model, embedding_init=init)(tokens)
    h = h + self.param("position", init, (tokens.shape[1], self.d_model))
    causal = nn.make_causal_mask(tokens)
    h = h + nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.d_model,
                                            use_bias=False)(h, h, mask=causal)
    h = h + nn.Dense(self.d_model)(nn.relu(nn.Dense(self.d_mlp)(h)))
    return nn.Dense(self.num_classes, use_bias=False)(h[:, -1])


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  make: Callable[[int], nn.Module]  # num_classes -> module
  learning_rate: float  # the paper's
  batch_norm: bool
  description: str
  inputs: str = "images"  # or "tokens": what the model takes (zhang.experiment.data.input_kind)
  parameterization: str = "standard"  # zhang.experiment.parameterization's presets (MLPs)
  width: int = 0  # an MLP's hidden width (what the parameterization scales with)
  # The model applies a per-replica dropout rate: its ``__call__`` takes ``dropout`` (a
  # ``zhang.experiment.dropout.Draw``), which the step passes in training when a replica's
  # rate is above 0. Models without it are never given one.
  dropout: bool = False
  min_size: int = 1  # the smallest input height and width it can be built for

  @property
  def family(self) -> str:
    """"mlp", "token_mlp" or "conv": what the execution plan's measurements are grouped
    by."""
    if self.name.startswith("mlp"):
      return "token_mlp" if self.inputs == "tokens" else "mlp"
    return "conv"

  def lr_scales(self, params, optimizer: str):
    """Per-leaf learning-rate scales of the parameterization (None: standard, no scaling)."""
    return param_lib.lr_scales(self.parameterization, params, self.width, optimizer)

  def build(self, num_classes: int) -> nn.Module:
    return self.make(num_classes)


def _inception_v3(num_classes: int) -> nn.Module:
  from zhang.experiment.inception_v3 import InceptionV3  # it builds on MaxPool, above
  return InceptionV3(num_classes)


_MODELS = {m.name: m for m in [
    ModelSpec("mlp_1x512", lambda k: MLP(1, k), 0.01, False, "MLP, one hidden layer of 512"),
    ModelSpec("mlp_3x512", lambda k: MLP(3, k), 0.01, False,
              "MLP, three hidden layers of 512"),  # both are mlp_DxW (``sized_mlp``)
    ModelSpec("alexnet_small", AlexNetSmall, 0.01, False, "small AlexNet with LRN"),
    ModelSpec("inception_small", lambda k: InceptionSmall(k, True), 0.1, True,
              "small Inception"),
    ModelSpec("inception_small_nobn", lambda k: InceptionSmall(k, False), 0.1, False,
              "small Inception without batch norm"),
    # Token models (modadd), with configs/modadd.py's AdamW rates: the transformer's is Nanda
    # et al. (2023)'s.
    ModelSpec("transformer_1l", OneLayerTransformer, 1e-3, False,
              "one-layer transformer (d_model 128, 4 heads, d_mlp 512, no layer norm)",
              inputs="tokens"),
    ModelSpec("mlp_tokens", TokenMLP, 0.01, False,
              "MLP on the one-hot residues, one hidden layer of 512", inputs="tokens",
              width=512),
    # ImageNet's (the paper's Table 2), 299x299 inputs; the paper's Inception rate.
    ModelSpec("inception_v3", _inception_v3, 0.1, True,
              "Inception V3 (no auxiliary head; dropout before the logits)", dropout=True,
              min_size=75),  # inception_v3.MIN_SIZE
]}


BUILT_IN = tuple(_MODELS)


def register(name: str, make: Callable[[int], nn.Module], *, learning_rate: float,
             description: str = "", batch_norm: bool = False,
             inputs: str = "images", dropout: bool = False) -> ModelSpec:
  """Adds a model to the registry, so a config's ``model`` (and ``zhang models``) can name it.

  Args:
    name: the config's name for it; a built-in model's name is refused.
    make: num_classes -> a Flax Linen module that maps ``(B, H, W, C)`` float inputs (with
      ``train``, the batch-norm mode) to logits.
    learning_rate: the rate a config that leaves ``learning_rate`` unset trains it with.
    batch_norm: whether it has batch-norm statistics (kept per replica, like parameters).
    inputs: "images", or "tokens" for token-id datasets (modadd).
    dropout: whether it applies the replica's dropout rate (``ModelSpec.dropout``): its
      ``__call__`` then takes ``dropout``, a ``zhang.experiment.dropout.Draw`` or None.

  Call it at the top level of a module and name that module in the config's ``imports``:
  every command that reads the run (the probes too) imports it again. Registering a name
  again replaces it (a notebook cell run twice).
  """
  if name in BUILT_IN or _MLP_NAME.fullmatch(name) or _TOKENS_NAME.fullmatch(name):
    raise UsageError(f"model {name!r} is built in ({MLP_PATTERN} names an MLP of that depth "
                     f"and width): register yours under another name")
  if inputs not in ("images", "tokens"):
    raise UsageError(f"inputs={inputs!r} must be 'images' or 'tokens'")
  spec = ModelSpec(name, make, learning_rate, batch_norm, description or name, inputs,
                   dropout=dropout)
  _MODELS[name] = spec
  return spec


# MLPs of any depth and width by name: mlp_DxW is D hidden layers of W (ReLU), then the
# classifier; mlp_1x512 and mlp_3x512 are two of them (the paper's). mlp_tokens_W is the
# token MLP at width W. A suffix names the parameterization: mlp_1x1024_mup, mlp_tokens_ntk.
_MLP_NAME = re.compile(r"mlp_([0-9]+)x([0-9]+)(?:_([a-z][a-z_]*))?")
_TOKENS_NAME = re.compile(r"mlp_tokens(?:_([0-9]+))?(?:_([a-z][a-z_]*))?")
MLP_PATTERN = "mlp_DxW"  # how the names are written in help and errors
PARAMETERIZED = "mlp_DxW, mlp_tokens and mlp_tokens_W"  # the models that take a preset


def sized_mlp(name: str) -> ModelSpec | None:
  """The spec of ``mlp_DxW`` (D >= 1 hidden layers of width W >= 1, learning rate 0.01 as
  the paper's MLPs) or ``mlp_tokens_W``, each with an optional ``_PRESET`` suffix (a
  parameterization); None for a name of another form; UsageError for D or W of 0 or an
  unknown preset."""
  match = _MLP_NAME.fullmatch(name)
  tokens = _TOKENS_NAME.fullmatch(name) if match is None else None
  if match is None and (tokens is None or name == "mlp_tokens"):
    return None
  if tokens is not None:
    width = _positive(tokens[1] or "512", name, "mlp_tokens_W needs a width W >= 1 "
                      "without leading zeros, e.g. mlp_tokens_1024")
    preset = tokens[2] or "standard"
    param_lib.check(preset, 1, name)
    return ModelSpec(name, lambda k: TokenMLP(k, width, preset), 0.01, False,
                     f"MLP on the one-hot residues, one hidden layer of {width}"
                     + _preset_words(preset), inputs="tokens", parameterization=preset,
                     width=width)
  hint = f"{MLP_PATTERN} needs a depth D >= 1 and a width W >= 1 without leading zeros, e.g. " \
         f"mlp_2x1024"
  depth, width = _positive(match[1], name, hint), _positive(match[2], name, hint)
  preset = match[3] or "standard"
  param_lib.check(preset, depth, name)
  layers = "one hidden layer" if depth == 1 else f"{_WORDS.get(depth, depth)} hidden layers"
  return ModelSpec(name, lambda k: MLP(depth, k, width, preset), 0.01, False,
                   f"MLP, {layers} of {width}" + _preset_words(preset),
                   parameterization=preset, width=width)


def _positive(digits: str, name: str, hint: str) -> int:
  if digits[0] == "0":
    raise UsageError(f"model {name!r}: {hint}")
  return int(digits)


def _preset_words(preset: str) -> str:
  return "" if preset == "standard" else f", {preset.replace('_', ' ')} parameterization"


def with_parameterization(name: str, preset: str) -> str:
  """The model named with ``preset`` (a config's ``parameterization``): ``mlp_1x512`` and
  ``mup`` -> ``mlp_1x512_mup``; a name with its own suffix, or standard, is kept. One line
  for a model that takes no parameterization."""
  param_lib.check(preset)
  spec = get(name)
  if preset == "standard" or spec.parameterization != "standard":
    return name
  if not (_MLP_NAME.fullmatch(name) or _TOKENS_NAME.fullmatch(name)):
    raise UsageError(f"model {name} takes no parameterization ({preset} asked for): "
                     f"{PARAMETERIZED} do, e.g. mlp_1x1024 or mlp_1x1024_{preset}")
  return get(f"{name}_{preset}").name


_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def names(inputs: str | None = None) -> list[str]:
  """Every registered model's name, or those that take ``inputs`` ("images" or "tokens");
  any other ``mlp_DxW`` (``sized_mlp``) is a model too."""
  return [n for n, m in _MODELS.items() if inputs is None or m.inputs == inputs]


def with_dropout() -> list[str]:
  """The registered models that take a dropout rate (``ModelSpec.dropout``)."""
  return [n for n, m in _MODELS.items() if m.dropout]


def get(name: str) -> ModelSpec:
  if name in _MODELS:
    return _MODELS[name]
  spec = sized_mlp(name) if isinstance(name, str) else None
  if spec is None:
    raise UsageError(f"unknown model {name!r}: choose one of {', '.join(_MODELS)}, or "
                     f"{MLP_PATTERN} (an MLP of D hidden layers of width W, e.g. mlp_2x1024) "
                     f"or mlp_tokens_W, either with a parameterization suffix (e.g. "
                     f"mlp_2x1024_mup)")
  return spec


def is_batch_norm_param(path) -> bool:
  return any("BatchNorm" in str(getattr(k, "key", k)) for k in path)


def check_shapes(input_shape, num_classes: int) -> None:
  """One line for an input shape or class count no model can be built for."""
  shape = tuple(input_shape)
  if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
    raise UsageError(f"`input_shape` {' '.join(map(str, shape))} must be positive integers, "
                     f"e.g. 28 28 3 (height, width, channels)")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise UsageError(f"`num_classes` {num_classes} must be an integer >= 2")


def variable_shapes(name: str, input_shape=(28, 28, 3), num_classes: int = 10):
  """Shapes of the model's variables (no computation: ``jax.eval_shape``)."""
  check_shapes(input_shape, num_classes)
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
