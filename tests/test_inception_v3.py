"""zhang/experiment/inception_v3.py: Keras' parameter count, the FLOP count, shapes, and the
CPU plan's explicit gradients, against an independent layer-by-layer arithmetic."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import data, inception_v3, models, train
from zhang.runtime import flops, layers

KERAS_TOTAL, KERAS_TRAINABLE, KERAS_STATISTICS = 23_851_784, 23_817_352, 34_432


def arithmetic(size: int, classes: int) -> dict:
  """Inception V3 counted by hand from Szegedy et al. (2016) and Keras' ``InceptionV3``:
  conv kernels (no biases), batch norm offsets and statistics (2 per channel), the logits'
  weights and biases, and the multiply-adds of one example at ``size`` x ``size``."""
  total = dict(kernels=0, channels=0, macs=0)
  valid = lambda n: (n - 3) // 2 + 1  # a 3x3 window of stride 2, no padding
  last = lambda *outputs: outputs[-1]  # a branch: its layers in order, its last one's width

  def conv(out, cin, cout, kh, kw=None):
    """A kh x kw convolution with ``out`` x ``out`` outputs; its output channels."""
    kw = kh if kw is None else kw
    total["kernels"] += kh * kw * cin * cout
    total["channels"] += cout
    total["macs"] += out * out * kh * kw * cin * cout
    return cout

  n = valid(size)
  conv(n, 3, 32, 3)
  conv(n - 2, 32, 32, 3)
  n -= 2
  c = conv(n, 32, 64, 3)
  n = valid(n)  # max pool
  conv(n, c, 80, 1)
  c = conv(n - 2, 80, 192, 3)
  n = valid(n - 2)  # max pool
  for pool in (32, 64, 64):  # Mixed_5b-5d
    c = (conv(n, c, 64, 1) + last(conv(n, c, 48, 1), conv(n, 48, 64, 5))
         + last(conv(n, c, 64, 1), conv(n, 64, 96, 3), conv(n, 96, 96, 3))
         + conv(n, c, pool, 1))
  m = valid(n)  # Mixed_6a: two strided branches and a max pool
  c = (conv(m, c, 384, 3)
       + last(conv(n, c, 64, 1), conv(n, 64, 96, 3), conv(m, 96, 96, 3)) + c)
  n = m
  for k in (128, 160, 160, 192):  # Mixed_6b-6e
    c = (conv(n, c, 192, 1)
         + last(conv(n, c, k, 1), conv(n, k, k, 1, 7), conv(n, k, 192, 7, 1))
         + last(conv(n, c, k, 1), conv(n, k, k, 7, 1), conv(n, k, k, 1, 7),
                conv(n, k, k, 7, 1), conv(n, k, 192, 1, 7))
         + conv(n, c, 192, 1))
  m = valid(n)  # Mixed_7a
  c = (last(conv(n, c, 192, 1), conv(m, 192, 320, 3))
       + last(conv(n, c, 192, 1), conv(n, 192, 192, 1, 7), conv(n, 192, 192, 7, 1),
              conv(m, 192, 192, 3)) + c)
  n = m
  for _ in range(2):  # Mixed_7b, 7c: 1x3 and 3x1 side by side at the end of two branches
    split = lambda cin: conv(n, cin, 384, 1, 3) + conv(n, cin, 384, 3, 1)
    c = (conv(n, c, 320, 1) + last(conv(n, c, 384, 1), split(384))
         + last(conv(n, c, 448, 1), conv(n, 448, 384, 3), split(384))
         + conv(n, c, 192, 1))
  assert c == 2048
  total["macs"] += c * classes
  total["params"] = total["kernels"] + total["channels"] + c * classes + classes
  total["statistics"] = 2 * total["channels"]
  return total


def _sizes(variables) -> dict:
  return {k: int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(v)))
          for k, v in variables.items()}


def test_parameter_count_is_keras():
  """Keras' InceptionV3 (1,000 classes, no auxiliary head): its trainable parameters (conv
  kernels, batch-norm offsets, logits) and its batch-norm statistics, from shapes alone."""
  sizes = _sizes(models.variable_shapes("inception_v3", (299, 299, 3), 1000))
  hand = arithmetic(299, 1000)
  assert sizes == {"params": KERAS_TRAINABLE, "batch_stats": KERAS_STATISTICS}
  assert (hand["params"], hand["statistics"]) == (KERAS_TRAINABLE, KERAS_STATISTICS)
  assert sum(sizes.values()) == KERAS_TOTAL
  # As the paper counts its models: batch-norm offsets left out.
  assert models.param_count("inception_v3", (299, 299, 3), 1000) == (
      KERAS_TRAINABLE - hand["channels"])


def test_flops_match_the_arithmetic_and_the_published_count():
  """zhang.runtime.flops counts every convolution and the logits: the multiply-adds by hand
  at 75x75 exactly, and at 299x299 the published 5.7 billion multiply-adds of a forward pass
  (FLOPs, 2 per multiply-add: 11.4 billion)."""
  small = flops.layers(models.get("inception_v3").build(10), (75, 75, 3))
  assert [layer.kind for layer in small].count("conv") == 94 and small[-1].kind == "dense"
  assert sum(layer.macs for layer in small) == arithmetic(75, 10)["macs"]
  module = models.get("inception_v3").build(1000)
  macs = arithmetic(299, 1000)["macs"]
  assert flops.forward_flops(module, (299, 299, 3)) == 2 * macs == 11_426_432_192
  assert macs == pytest.approx(5.7e9, rel=0.01)


@pytest.mark.parametrize("shape", [(75, 75, 3), (99, 131, 3)])
def test_output_shapes_and_the_smallest_input(shape):
  module = models.get("inception_v3").build(7)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  variables = jax.eval_shape(lambda k, x: module.init(k, x, train=False), jax.random.key(0), x)
  logits = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
  assert logits.shape == (2, 7)
  assert models.get("inception_v3").min_size == inception_v3.MIN_SIZE == 75
  small = jax.ShapeDtypeStruct((2, 74, 80, 3), jnp.float32)
  with pytest.raises(UsageError, match="inception_v3 takes inputs of at least 75x75 pixels"):
    jax.eval_shape(lambda k, x: module.init(k, x, train=False), jax.random.key(0), small)


def _random_variables(module, x):
  """Variables of the model's shapes without its initializers (whose compilation takes half
  a minute): kernels normal / sqrt(fan-in), offsets small, unit statistics."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
  leaves, tree = jax.tree.flatten_with_path(shapes)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  out = []
  for (path, s), k in zip(leaves, keys):
    name = str(path[-1])
    if "var" in name:
      out.append(jnp.ones(s.shape))
    elif "mean" in name:
      out.append(jnp.zeros(s.shape))
    else:
      scale = 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
      out.append(scale * jax.random.normal(k, s.shape))
  return jax.tree.unflatten(tree, out)


@pytest.mark.slow
def test_explicit_gradients_equal_jax():
  """The CPU plan's layers (zhang/runtime/layers.py) around inception_v3 at 75x75: every
  convolution but the 1x1 products (54), the four VALID max pools and the logits taken by
  them, and the loss and gradients of JAX's own rules to float rounding. Batch norm on its
  running statistics: at 75x75 the last modules are 1x1, and batch statistics over two
  examples would turn rounding into sign flips."""
  module = models.get("inception_v3").build(5)
  x = jax.random.normal(jax.random.key(0), (2, 75, 75, 3))
  y = jnp.arange(2)
  variables = _random_variables(module, x)

  def loss(params, explicit):
    with layers.explicit_gradients() if explicit else contextlib.nullcontext():
      logits = module.apply({**variables, "params": params}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  for explicit, calls in ((False, 0), (True, 54 + 4 + 1)):
    jaxpr = str(jax.make_jaxpr(loss, static_argnums=1)(variables["params"], explicit))
    assert jaxpr.count("custom_vjp_call") == calls
  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  (v_jax, g_jax), (v_ours, g_ours) = (value_and_grad(variables["params"], e)
                                      for e in (False, True))
  np.testing.assert_allclose(v_ours, v_jax, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_jax)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.slow
def test_a_grid_of_dropout_rates_trains_inception_v3_under_the_cpu_plan():
  """inception_v3 in the grid program (a minute to compile on 2 cores): two replicas of one
  seed at dropout 0 and 0.5 on 75x75 images, one step under the CPU plan (explicit
  gradients). They start equal and see the same batch, so only dropout sets them apart."""
  c = config_lib.base_config()
  c.model, c.dataset = "inception_v3", "digits"
  c.n_train, c.n_test, c.batch_size, c.eval_batch_size = 8, 2, 4, 8
  c.grid = [dict(kinds=["labels"], corruptions=[0.0], seeds=[0], dropouts=[0.0, 0.5])]
  config = config_lib.resolve(c)
  replicas = config_lib.expand_grid(config)
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, 75, 75, 3), dtype=np.uint8)
  dataset = data.Dataset("random", images(8), np.arange(8) % 3, images(2), np.arange(2) % 3, 3)
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  assert program.settings.dropout and program.plan.gradients == "explicit"
  start = jax.tree.map(np.asarray, states.params)
  states, loss = program.train_chunk(states, reps, d, 0, 1)
  assert np.all(np.isfinite(np.asarray(loss)))
  for leaf in jax.tree.leaves(start):
    np.testing.assert_array_equal(leaf[0], leaf[1])
  moved = np.asarray(states.params["Logits"]["kernel"]) - start["Logits"]["kernel"]
  assert np.all(np.isfinite(moved)) and not np.array_equal(moved[0], moved[1])
