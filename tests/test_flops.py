"""The analytic FLOP counts of zhang/runtime/flops.py, by hand and against XLA's cost analysis."""

import jax
import jax.numpy as jnp
import optax
import pytest

from zhang.experiment import models
from zhang.runtime import flops

SHAPE = (28, 28, 3)


def test_mlp_layers_by_hand():
  found = flops.layers(models.get("mlp_1x512").build(10), SHAPE)
  assert [(layer.kind, layer.in_shape, layer.out_shape) for layer in found] == [
      ("dense", (2352,), (512,)), ("dense", (512,), (10,))]
  assert [layer.macs for layer in found] == [2352 * 512, 512 * 10]


def test_mlp_counts_by_hand():
  module = models.get("mlp_1x512").build(10)
  macs = 2352 * 512 + 512 * 10
  assert flops.forward_flops(module, SHAPE) == 2 * macs == 2_418_688
  assert flops.train_flops(module, SHAPE, batch_size=128) == 128 * 3 * 2 * macs
  # Without the first layer's input gradient, which no step computes.
  assert flops.train_flops(module, SHAPE, 128, first_input_grad=False) == (
      128 * (3 * 2 * macs - 2 * 2352 * 512))


def test_conv_count_by_hand():
  # alexnet_small's first conv: 28x28 outputs, 5x5x3 window, 64 filters ("SAME" padding).
  first = flops.layers(models.get("alexnet_small").build(10), SHAPE)[0]
  assert first.kind == "conv" and first.out_shape == (28, 28, 64)
  assert first.macs == 28 * 28 * 64 * 5 * 5 * 3


def test_inception_counts_every_conv():
  found = flops.layers(models.get("inception_small").build(10), SHAPE)
  # The stem, two branches in each of the 8 inception modules, one conv in each of the 2
  # downsample modules, then the classifier.
  assert sum(layer.kind == "conv" for layer in found) == 1 + 2 * 8 + 2
  assert found[-1].kind == "dense"


def _train_step(module, batch):
  x = jnp.zeros((batch, *SHAPE), jnp.float32)
  y = jnp.zeros((batch,), jnp.int32)
  variables = module.init(jax.random.key(0), x[:1], train=False)

  def grads(params):
    def loss(p):
      logits = module.apply({"params": p}, x, train=False)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jax.grad(loss)(params)

  return grads, variables["params"]


@pytest.mark.parametrize("name", ["mlp_1x512", "mlp_3x512"])
def test_matches_xla_cost_analysis(name):
  module = models.get(name).build(10)
  fn, params = _train_step(module, 32)
  xla = flops.xla_flops(fn, params)
  if xla is None:
    pytest.skip("this backend gives no cost analysis")
  # XLA skips the first layer's input gradient too, and also counts the elementwise work
  # (bias, ReLU, softmax): within 3%.
  ours = flops.train_flops(module, SHAPE, 32, first_input_grad=False)
  assert ours == pytest.approx(xla, rel=0.03)


def test_transformer_counts_attention_projections_by_hand():
  # Three tokens (a, b, "="): query, key, value and output projections of 128 x 128, the
  # ReLU MLP (128 x 512 and back) at every position, the unembedding at "=" only.
  found = flops.layers(models.get("transformer_1l").build(113), (1, 2, 1))
  assert sorted(layer.name for layer in found) == sorted(
      ["query", "key", "value", "out", "Dense_0", "Dense_1", "Dense_2"])
  per_token = 4 * 128 * 128 + 2 * 128 * 512
  assert sum(layer.macs for layer in found) == 3 * per_token + 128 * 113


@pytest.mark.slow
def test_token_models_match_xla_cost_analysis():
  module = models.get("transformer_1l").build(23)
  x = jnp.zeros((16, 2), jnp.int32)
  y = jnp.zeros((16,), jnp.int32)
  params = module.init(jax.random.key(0), x[:1], train=False)["params"]

  def forward(p):
    return optax.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": p}, x, train=False), y).mean()

  xla = flops.xla_flops(forward, params)
  if xla is None:
    pytest.skip("this backend gives no cost analysis")
  # The forward pass only: the products counted here, plus attention's scores and
  # softmax (3 x 3 per head), embeddings and the loss, within 10%.
  assert 16 * flops.forward_flops(module, (1, 2, 1)) == pytest.approx(xla, rel=0.1)
