"""How an MLP's layers scale with its width: the abc-parameterizations, by name.

Every Dense layer ``l`` of an MLP computes ``m_l (x @ w_l) + b_l`` with its trained weights
``w_l`` drawn at a standard deviation ``s_l`` and updated at ``lr_l`` times the replica's
learning rate (Yang and Hu 2021, "Feature learning in infinite-width neural networks", the
abc-parameterization: multiplier n^-a, initialization n^-b, learning rate n^-c). What the
network computes and how it trains depend only on the effective weights ``W = m w``: their
initial scale and how fast they move, which are what the presets fix as functions of the
hidden width n. Every preset equals ``standard`` at ``BASE_WIDTH`` (the paper's MLP width,
where modadd's rates were chosen): r = n / BASE_WIDTH is the width ratio, f a layer's fan-in,
f0 its fan-in at the base width; layers are "input" (fan-in the data's), "hidden", "output".

- ``standard``: m = 1, s = f^-1/2 (Flax's LeCun normal), lr 1: today's MLPs, bit for bit.
- ``ntk``: unit-variance weights and m = f^-1/2 on every layer (Jacot et al. 2018), lr f0
  under SGD and f0^1/2 under Adam, constants in n (TP4's NTP: a = 1/2, b = 0, c = 0). The
  hidden and output weights then move as 1/r: training becomes lazy as the width grows.
- ``mup``: the maximal-update parameterization in the multiplier form of Yang et al. 2022
  ("Tensor Programs V"), Table 9, with widths as ratios to the base: input m = r^1/2,
  s = (f r)^-1/2; hidden m = 1, s = f^-1/2; output m = r^-1/2, s = f^-1/2. SGD: lr 1 for
  every weight, r for the hidden biases. Adam: lr r^-1/2 (input), 1/r (hidden), r^-1/2
  (output), 1 for the biases. Every layer's features then move by order 1 at any width.
- ``mean_field`` (one hidden layer only): the output is (sqrt(BASE_WIDTH) / n) sum_i w_i
  relu(...) with unit-variance w_i (Mei et al. 2018; Chizat and Bach 2018), the rates scaled up
  to match (TP4's MFP, c = -1): SGD lr r on the input layer and the hidden bias, r f0 on the
  output weights; Adam lr 1 and sqrt(BASE_WIDTH) on the output weights. For one hidden layer
  it trains exactly as ``mup`` does under SGD (the same effective weights and rates, a test).

Biases start at zero and have no multiplier. The learning-rate scales multiply each layer's
update after the optimizer (SGD's momentum trace or Adam's direction, with its weight
decay), as per-layer rates do in PyTorch's parameter groups.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from zhang.errors import UsageError

PRESETS = ("standard", "ntk", "mup", "mean_field")
BASE_WIDTH = 512
ROLES = ("input", "hidden", "output")
_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


@dataclasses.dataclass(frozen=True)
class LayerScale:
  """One Dense layer's multiplier m, its weights' initial std s, and the learning-rate scales
  of its weights and bias (optimizer-dependent)."""
  multiplier: float
  init_std: float
  lr: float
  bias_lr: float


def check(name: str, depth: int | None = None, model: str = "") -> None:
  """One line for an unknown preset, or ``mean_field`` on more than one hidden layer."""
  if name not in PRESETS:
    raise UsageError(f"unknown parameterization {name!r}: choose one of {', '.join(PRESETS)}")
  if name == "mean_field" and depth is not None and depth != 1:
    raise UsageError(f"parameterization mean_field is defined for one hidden layer and model "
                     f"{model} has {depth}: use mlp_1xW or mlp_tokens (or mup, which is mean "
                     f"field's extension to depth)")


def layer_scale(name: str, role: str, fan_in: int, width: int, optimizer: str = "sgd_momentum",
                base_width: int = BASE_WIDTH) -> LayerScale:
  """The preset's scaling of one layer (module docstring): ``role`` in ``ROLES``,
  ``fan_in`` its input's size, ``width`` the network's hidden width."""
  check(name)
  adam = optimizer == "adamw"
  r = width / base_width
  f0 = fan_in if role == "input" else base_width  # the fan-in at the base width
  lecun = fan_in ** -0.5
  hidden_bias = role != "output"
  if name == "standard":
    return LayerScale(1.0, lecun, 1.0, 1.0)
  if name == "ntk":
    return LayerScale(lecun, 1.0, math.sqrt(f0) if adam else float(f0), 1.0)
  if name == "mup":
    bias = 1.0 if adam or not hidden_bias else r
    if role == "input":
      return LayerScale(math.sqrt(r), (fan_in * r) ** -0.5, r ** -0.5 if adam else 1.0, bias)
    if role == "hidden":
      return LayerScale(1.0, lecun, 1.0 / r if adam else 1.0, bias)
    return LayerScale(r ** -0.5, lecun, r ** -0.5 if adam else 1.0, bias)
  # mean_field: one hidden layer (``check`` with the depth refuses others)
  if role == "output":
    return LayerScale(math.sqrt(base_width) / width, 1.0,
                      math.sqrt(base_width) if adam else r * base_width, 1.0)
  return LayerScale(1.0, lecun, 1.0 if adam else r, 1.0 if adam else r)


def initializer(std: float):
  """Weights at standard deviation ``std``: Flax's truncated normal (LeCun's when std =
  fan_in^-1/2), so every preset draws the same unit numbers from the same key."""
  def init(key, shape, dtype=jnp.float32):
    return (std / _TRUNCATED_STD) * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
  return init


def roles(num_layers: int) -> tuple[str, ...]:
  """The roles of an MLP's Dense layers, in call order."""
  return ("input",) + ("hidden",) * (num_layers - 2) + ("output",)


def lr_scales(name: str, params, width: int, optimizer: str = "sgd_momentum",
              base_width: int = BASE_WIDTH):
  """The per-leaf learning-rate scales of an MLP's parameters (``Dense_0`` ... ``Dense_L``,
  each a kernel (fan_in, fan_out) and a bias), as a pytree like ``params``; None for
  ``standard`` (no scaling: the step stays as it was)."""
  if name == "standard":
    return None
  names = sorted(params, key=lambda k: int(k.rsplit("_", 1)[1]))
  out = {}
  for name_, role in zip(names, roles(len(names))):
    layer = params[name_]
    scale = layer_scale(name, role, int(layer["kernel"].shape[0]), width, optimizer,
                        base_width)
    out[name_] = {k: scale.lr if k == "kernel" else scale.bias_lr for k in layer}
  return out
