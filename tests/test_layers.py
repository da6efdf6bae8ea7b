"""zhang/runtime/layers.py: the same layers and gradients as JAX's, in forms XLA CPU keeps fast
inside the step loop."""

import contextlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from zhang.experiment import config as config_lib
from zhang.experiment import data, models, train
from zhang.runtime import layers

DN = ("NHWC", "HWIO", "NHWC")


CONVS = [
    ((2, 7, 7, 3), 3, 1, "SAME"),     # inception's 3x3
    ((2, 8, 8, 3), 3, 2, "SAME"),     # its stride-2 downsampling, even size
    ((2, 7, 9, 3), 3, 2, "SAME"),     # odd and unequal sizes
    ((3, 12, 12, 4), 5, 1, "SAME"),   # alexnet's 5x5
    ((2, 9, 9, 4), 1, 1, "SAME"),     # 1x1
    ((2, 9, 9, 4), 3, 2, "VALID"),
    ((2, 10, 10, 4), 5, 3, "SAME"),
    ((2, 9, 9, 4), 1, 2, "SAME"),     # kernel smaller than the stride: inputs no tap reaches
    ((2, 8, 7, 3), 2, 2, "VALID"),    # one tap per stride phase
    ((1, 6, 6, 2), 2, 1, "SAME"),     # even kernel: asymmetric padding
    ((2, 6, 6, 2), 3, 1, ((2, 0), (1, 3))),  # explicit padding
    ((2, 7, 6, 8), 3, 1, "SAME"),     # fewer output than input channels: dy is transposed
    ((2, 6, 7, 8), 3, 1, ((2, 0), (1, 3))),
]


@pytest.mark.parametrize("shape,kernel,stride,padding", CONVS)
def test_value_and_gradients_equal_jax(shape, kernel, stride, padding):
  kx, kw, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (kernel, kernel, shape[-1], 5))
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                              dimension_numbers=DN)
  ours = lambda x, w: layers.conv_general_dilated(x, w, (stride, stride), padding,
                                                dimension_numbers=DN)
  y = ref(x, w)
  if kernel == 1 and stride == 1:  # a matrix product: the same sums, perhaps reordered
    np.testing.assert_allclose(ours(x, w), y, rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_array_equal(ours(x, w), y)
  cot = jax.random.normal(kc, y.shape)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * cot)
  for g_ref, g_ours in zip(jax.grad(loss(ref), (0, 1))(x, w),
                           jax.grad(loss(ours), (0, 1))(x, w)):
    assert g_ours.shape == g_ref.shape
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-4)


def test_other_convolutions_are_passed_to_lax():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 2, 6))  # two feature groups
  args = ((1, 1), "SAME")
  kw = dict(dimension_numbers=DN, feature_group_count=2)
  f = lambda x, w: jnp.sum(layers.conv_general_dilated(x, w, *args, **kw) ** 2)
  g = lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, *args, **kw) ** 2)
  for a, b in zip(jax.grad(f, (0, 1))(x, w), jax.grad(g, (0, 1))(x, w)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape,padding", [
    ((2, 8, 8, 3), "SAME"), ((3, 7, 9, 5), "SAME"), ((2, 28, 28, 4), "SAME"),
    ((1, 2, 2, 3), "SAME"),
    ((2, 8, 8, 3), "VALID"), ((3, 7, 10, 5), "VALID"), ((1, 3, 3, 2), "VALID")])  # inception_v3
def test_max_pool_value_and_gradient_equal_jax(shape, padding):
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape))
  x = jnp.round(x * 4) / 4  # many ties (zeros from the ReLU, and repeated values)
  ref = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)
  ours = lambda x: layers.max_pool(x, (3, 3), (2, 2), padding)
  y = ref(x)
  np.testing.assert_array_equal(ours(x), y)
  cot = jax.random.normal(jax.random.key(1), y.shape)
  g_ref = jax.grad(lambda x: jnp.sum(ref(x) * cot))(x)
  g_ours = jax.grad(lambda x: jnp.sum(ours(x) * cot))(x)
  # Ties go to the same (first) element: a different choice would differ by a whole cot.
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6, atol=1e-5)
  assert np.count_nonzero(g_ours) == np.count_nonzero(g_ref)


def test_local_response_norm_value_and_gradient_equal_jax():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 12)) * 3
  cot = jax.random.normal(jax.random.key(1), x.shape)
  args = (2, 1.5, 0.3, 0.75)  # depth_radius, bias, alpha, beta: large enough to matter
  np.testing.assert_array_equal(layers.local_response_norm(x, *args),
                                models.local_response_norm(x, *args))
  g_ref = jax.grad(lambda x: jnp.sum(models.local_response_norm(x, *args) * cot))(x)
  g_ours = jax.grad(lambda x: jnp.sum(layers.local_response_norm(x, *args) * cot))(x)
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("features_in,features_out", [(512, 10), (64, 512), (24, 31)])
def test_dense_value_and_gradients_equal_jax(features_in, features_out):
  """Narrow layers (fewer than NARROW_DENSE outputs) take the (out, in) weight gradient;
  under vmap over replicas and inside a loop too, as the trainer runs them."""
  x = jax.random.normal(jax.random.key(0), (3, 16, features_in))
  w = jax.random.normal(jax.random.key(1), (3, features_in, features_out))
  cot = jax.random.normal(jax.random.key(2), (3, 16, features_out))
  dims = (((1,), (0,)), ((), ()))
  ref = lambda x, w: jnp.sum(jax.vmap(lambda x, w: x @ w)(x, w) * cot)
  ours = lambda x, w: jnp.sum(jax.vmap(
      lambda x, w: layers.dense_dot_general(x, w, dims))(x, w) * cot)
  np.testing.assert_array_equal(jax.vmap(lambda x, w: layers.dense_dot_general(x, w, dims))(
      x, w), jax.vmap(lambda x, w: x @ w)(x, w))
  g_ref = jax.jit(jax.grad(ref, (0, 1)))(x, w)
  looped = jax.jit(lambda x, w: jax.lax.fori_loop(
      0, 2, lambda i, g: jax.tree.map(jnp.add, g, jax.grad(ours, (0, 1))(x, w)),
      jax.tree.map(jnp.zeros_like, (x, w))))
  for a, b in zip(looped(x, w), g_ref):
    np.testing.assert_allclose(a, 2 * b, rtol=1e-5, atol=1e-4)
  assert (features_out < layers.NARROW_DENSE) == (features_out in (10, 31))


@pytest.mark.parametrize("name", ["alexnet_small", "inception_small", "mlp_1x512"])
@pytest.mark.slow
def test_explicit_gradients_around_a_plain_model_equal_jax(name):
  """``layers.explicit_gradients`` around a plain model: the same parameters, the same
  forward values (1x1 convolutions to rounding), gradients to float rounding, and every
  convolution, max pool and LRN of the model really taken by zhang/runtime/layers.py."""
  module = models.get(name).build(10)
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  y = jnp.arange(4) % 10
  init = lambda k, x: module.init(k, x, train=False)
  variables = jax.jit(init)(jax.random.key(1), x)
  with layers.explicit_gradients():
    assert jax.tree.map(jnp.shape, jax.eval_shape(init, jax.random.key(1), x)) == \
        jax.tree.map(jnp.shape, variables)

  def loss(params, explicit):
    ctx = layers.explicit_gradients() if explicit else contextlib.nullcontext()
    with ctx:
      logits, _ = module.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # Every layer zhang/runtime/layers.py rewrites is one custom_vjp call under the context.
  layers_of = {"alexnet_small": 2 + 2 + 2 + 3, "inception_small": 11 + 2 + 1,
               "mlp_1x512": 2}  # convs (not 1x1: products) + max pools + LRNs + dense
  for explicit in (False, True):
    jaxpr = str(jax.make_jaxpr(loss, static_argnums=1)(variables["params"], explicit))
    assert jaxpr.count("custom_vjp_call") == (layers_of[name] if explicit else 0)
  # Compiled, not run op by op (a conv net's ops one at a time take a minute on 2 cores).
  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  value, grads = {}, {}
  for e in (False, True):
    value[e], grads[e] = value_and_grad(variables["params"], e)
  np.testing.assert_allclose(value[True], value[False], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,c_in,canonical", [
    (3, 1, "SAME", 3, True), (3, 1, "SAME", 6, True), (3, 2, "SAME", 3, False),
    (5, 2, "VALID", 3, False), (3, 1, ((2, 0), (1, 3)), 6, False)])
def test_hessian_vector_products_through_the_explicit_gradients_equal_jax(
    kernel, stride, padding, c_in, canonical):
  """Reverse over reverse through the explicit gradients (a convolution, max pool, LRN and
  dense layer) equals JAX's forward over reverse. With stride 1 every convolution the
  product differentiates is canonical: the gradients' own convolutions go through the
  explicit rules too. Not with a stride (the weight gradient is a dilated convolution) or
  a padding larger than the kernel's reach (a gradient's padding is negative): those are
  left to JAX's rules."""
  keys = jax.random.split(jax.random.key(kernel + stride), 5)
  x = jax.random.normal(keys[0], (2, 8, 8, c_in))
  y = jnp.asarray([1, 2])
  params = dict(w=0.3 * jax.random.normal(keys[1], (kernel, kernel, c_in, 4)))
  conv_shape = jax.eval_shape(lambda: lax.conv_general_dilated(
      x, params["w"], (stride, stride), padding, dimension_numbers=DN)).shape
  params["d"] = 0.2 * jax.random.normal(keys[2], (int(np.prod(conv_shape[1:])), 3))
  v = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape), params,
                   dict(w=keys[3], d=keys[4]))

  def loss(p, explicit):
    conv = layers.conv_general_dilated if explicit else lax.conv_general_dilated
    h = conv(x, p["w"], (stride, stride), padding, dimension_numbers=DN)
    h = (layers.max_pool(h, (2, 2), (1, 1)) if explicit
         else nn.max_pool(h, (2, 2), strides=(1, 1), padding="SAME"))
    h = layers.local_response_norm(h) if explicit else models.local_response_norm(h)
    logits = h.reshape(2, -1) @ p["d"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  dot = lambda a, b: sum(jnp.vdot(p, q) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  reverse = lambda p: jax.grad(lambda q: dot(jax.grad(loss)(q, True), v))(p)
  want = jax.jvp(lambda p: jax.grad(loss)(p, False), (params,), (v,))[1]
  got = jax.jit(reverse)(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
  specs = re.findall(r"lhs_spec=(\(.*?\)), rhs_spec=(\(.*?\)), out_spec=(\(.*?\))",
                     str(jax.make_jaxpr(reverse)(params)))
  canonical_specs = ("(0, 3, 1, 2)", "(3, 2, 0, 1)", "(0, 3, 1, 2)")
  assert len(specs) >= 6  # the forward, two gradients and their derivatives
  assert (set(specs) == {canonical_specs}) == canonical, set(specs)


def _grid(tiny_config, plan, image_size=8, model="inception_small_nobn"):
  """A conv net on 32 images: digits (8x8), or random CIFAR-sized (28x28x3) ones. Small
  batches: inside the step loop JAX's conv gradients take about half a second per image on
  2 CPU cores."""
  tiny_config.model = model
  tiny_config.n_train, tiny_config.n_test, tiny_config.batch_size = 32, 16, 4
  tiny_config.learning_rate = 0.001
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0])]
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(32, 16)
  if image_size != 8:
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    dataset = data.Dataset("random", images(32), dataset.train_labels, images(16),
                           dataset.test_labels, dataset.num_classes)
  return train.build(config, replicas, dataset, plan=plan)[:4]


@pytest.mark.slow
def test_training_with_either_gradient_agrees(tiny_config):
  """AlexNet (LRN, 5x5 convs); inception_small_nobn's training under every plan is
  tests/test_train.py's test_execution_plans_give_the_same_results."""
  results = {}
  for how in ("jax", "explicit"):
    program, d, reps, states = _grid(tiny_config, f"gradients={how}", model="alexnet_small")
    states, _ = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(3))
    results[how] = jax.device_get((states.params, program.evaluate(states, reps, d)))
  for a, b in zip(jax.tree.leaves(results["jax"]), jax.tree.leaves(results["explicit"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's compiled program")
def test_every_convolution_in_the_cpu_step_loop_is_canonical(tiny_config):
  """The property behind the speed: inside the compiled step loop XLA CPU runs a convolution
  fast only in the canonical NHWC x HWIO layout (benchmarks/RESULTS.md). On CIFAR-sized
  images: where a layer's input is no larger than its kernel (8x8 digits), XLA rewrites the
  convolution its own way."""
  program, d, reps, states = _grid(tiny_config, None, image_size=28)
  assert program.plan.gradients == "explicit"
  hlo = program.train_chunk.lower(states, reps, d, jnp.asarray(0), jnp.asarray(2)).compile()
  labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo.as_text())
  # 19 conv layers, 8 of them 1x1 (matrix products). Each of the other 11: a forward, an
  # input gradient (except the first layer's) and a weight gradient.
  assert len(labels) >= 3 * 11 - 1
  assert set(labels) == {"b01f_01io->b01f"}


def test_max_pool_gradient_has_no_select_and_scatter(tiny_config):
  """JAX's max-pool gradient is a select_and_scatter (XLA CPU expands it into index arrays
  and a scatter); the explicit one routes dy with slices and pads."""
  for how, expected in (("jax", True), ("explicit", False)):
    program, d, reps, states = _grid(tiny_config, f"gradients={how}", model="alexnet_small")
    text = program.train_chunk.lower(states, reps, d, jnp.asarray(0),
                                     jnp.asarray(2)).as_text()
    assert ("select_and_scatter" in text) == expected, how
