"""Analytic FLOP counts of a model's matrix products and convolutions, from its layer shapes.

Only ``nn.Dense``, ``nn.DenseGeneral`` (attention's projections) and ``nn.Conv`` are counted
(multiply-adds x 2; a ``OneHotDense``, which adds one kernel row per token, as a row's
multiply-adds per token); biases, activations, pooling, normalization, attention's score and
value products and the loss are ignored, as is usual: they are a few percent of the work of
these models. The shapes come from tracing the model abstractly (``jax.eval_shape``),
so nothing is computed. Training is counted the usual way, 3 x forward: the forward product,
the gradient with respect to the weights and the gradient with respect to the layer's input.
The first layer's input gradient is not needed (the images are not trained), so the work a
step must do is a little less; ``train_flops(..., first_input_grad=False)`` counts that.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Layer:
  """One Dense or Conv call: its name and multiply-adds per example."""
  name: str
  kind: str  # "dense" (Dense and DenseGeneral) or "conv"
  in_shape: tuple[int, ...]  # one example's input
  out_shape: tuple[int, ...]  # one example's output
  macs: int  # multiply-adds for one example
  path: tuple[str, ...] = ()  # the module's path in the model (its parameters' keys)


def _layer_macs(module, x, y) -> int:
  """Multiply-adds of one call, for the whole batch of ``x`` (leading axis)."""
  vocab = getattr(module, "vocab", 0)
  if isinstance(module, nn.Dense) and vocab:  # models.OneHotDense: a row per token, added
    return math.prod(y.shape[:-1]) * (x.shape[-1] // vocab) * y.shape[-1]
  if isinstance(module, nn.Dense):
    return math.prod(y.shape[:-1]) * x.shape[-1] * y.shape[-1]
  if isinstance(module, nn.DenseGeneral):  # every input element meets every output feature
    features = module.features if isinstance(module.features, tuple) else (module.features,)
    return math.prod(x.shape) * math.prod(features)
  # A conv: every output element is a dot product over the kernel window and the input
  # channels of its feature group (padding counted as if computed, as XLA does).
  kernel = tuple(module.kernel_size)
  groups = module.feature_group_count
  return math.prod(y.shape) * math.prod(kernel) * (x.shape[-1] // groups)


def layers(module: nn.Module, input_shape, train: bool = True) -> list[Layer]:
  """The Dense, DenseGeneral and Conv calls of one forward pass of one example, in call order.

  Args:
    module: a Flax Linen module taking ``(B, *input_shape)`` and ``train``.
    input_shape: one example's shape, e.g. (28, 28, 3).
  """
  found = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    m = context.module
    if (context.method_name == "__call__"
        and isinstance(m, (nn.Dense, nn.DenseGeneral, nn.Conv))):
      x = args[0]
      found.append(Layer(m.name or type(m).__name__,
                         "conv" if isinstance(m, nn.Conv) else "dense",
                         tuple(x.shape[1:]), tuple(out.shape[1:]),
                         _layer_macs(m, x, out), tuple(m.path)))
    return out

  def init_and_apply():
    x = jnp.zeros((1, *input_shape), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    with nn.intercept_methods(record):
      return module.apply(variables, x, train=train, mutable=["batch_stats"])

  jax.eval_shape(init_and_apply)
  return found


def forward_flops(module: nn.Module, input_shape) -> int:
  """FLOPs (2 x multiply-adds) of one example's forward pass through Dense and Conv."""
  return 2 * sum(layer.macs for layer in layers(module, input_shape))


def train_flops(module: nn.Module, input_shape, batch_size: int = 1,
                first_input_grad: bool = True) -> int:
  """FLOPs of one training step (forward + backward) of ``batch_size`` examples.

  Args:
    first_input_grad: count the first layer's input gradient (the 3 x forward
      convention). False counts only what a step needs: 3 x forward less that product.
  """
  found = layers(module, input_shape)
  total = 3 * 2 * sum(layer.macs for layer in found)
  if not first_input_grad and found:
    total -= 2 * found[0].macs
  return total * batch_size


def xla_flops(fn, *args) -> float | None:
  """XLA's own FLOP estimate of ``jax.jit(fn)(*args)``, or None where it gives none."""
  try:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  except Exception:  # noqa: BLE001 - backends without a cost model raise various errors
    return None
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  flops = float(cost["flops"])
  return flops if flops > 0 else None
