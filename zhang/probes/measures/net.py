"""The linear layers of a model, found once on the host, for the norm and spectral measures.

A layer is every ``nn.Dense`` and ``nn.Conv`` the model calls while it maps one example:
found by a Flax method interceptor (``nn.intercept_methods``) around one ``apply``, so any
Linen model built from them is covered without a list of its own. Each ``Layer`` keeps an
unbound copy of its module without a bias, which is the layer's linear map ``x -> W x`` at
any kernel; the spectral measures differentiate it (``zhang.probes.measures.spectral``).

Not layers: batch-norm scales and offsets (per-channel rescalings that the measures' papers
leave out, as ``zhang.experiment.models.param_count`` does), and the token models' embeddings
(``nn.Embed``: a lookup), position parameters and attention projections
(``nn.DenseGeneral`` inside ``nn.MultiHeadDotProductAttention``): attention multiplies its
projections' outputs together through a softmax, so the per-layer products and sums of norms
that the measures bound a network by do not describe it. For the one-layer transformer the
norm and spectral measures therefore cover its Dense layers (the MLP block and the unembedding);
the parameter count covers every parameter.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax


@dataclasses.dataclass(frozen=True)
class Layer:
  """One linear layer (static, hashable: it goes into ``context.Model``)."""
  path: tuple[str, ...]  # of its kernel in the params tree, e.g. ("Conv_0", "kernel")
  kind: str  # "dense" or "conv"
  input_shape: tuple[int, ...]  # of its input, without the batch axis
  module: nn.Module  # an unbound copy without bias: ``linear`` applies it

  @property
  def name(self) -> str:
    """The module's path, e.g. "ConvModule_0/Conv_0" (the kernel's path less "kernel")."""
    return "/".join(self.path[:-1])

  def linear(self, kernel, x):
    """The layer's output without bias, x (B, *input_shape) -> (B, ...): linear in x."""
    return self.module.apply({"params": {"kernel": kernel}}, x)


def layers(module: nn.Module, params, batch_stats, sample_x) -> tuple[Layer, ...]:
  """The model's Dense and Conv layers, in the order the model first calls them.

  Args:
    module: the Flax Linen module.
    params: one replica's parameters (no replica axis); only their shapes matter.
    batch_stats: its batch-norm statistics, {} or None without batch norm.
    sample_x: (1, ...) one input as the model takes it.

  A layer called more than once (shared weights) is listed once, at its first input's shape.
  Nothing is computed: the model is traced abstractly (``jax.eval_shape``).
  """
  found: dict[tuple[str, ...], Layer] = {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == "__call__" and isinstance(m, (nn.Dense, nn.Conv)):
      path = (*(str(p) for p in m.path), "kernel")
      if path not in found:
        kind = "conv" if isinstance(m, nn.Conv) else "dense"
        plain = m.clone(parent=None, name=None, use_bias=False)
        found[path] = Layer(path, kind, tuple(int(d) for d in args[0].shape[1:]), plain)
    return next_fun(*args, **kwargs)

  def apply(params, batch_stats, x):
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    with nn.intercept_methods(record):
      return module.apply(variables, x, train=False)

  jax.eval_shape(apply, params, batch_stats or {}, sample_x)
  return tuple(found.values())


def kernel(params, layer: Layer):
  """The layer's kernel in ``params`` (one replica's, or a stack of them)."""
  for key in layer.path:
    params = params[key]
  return params


def names(found: tuple[Layer, ...]) -> list[str]:
  """The layers' names, in order: what each entry of a per-layer array belongs to."""
  return [layer.name for layer in found]
