"""zhang/layers.py: the same layers and gradients as JAX's, in forms XLA CPU keeps fast inside
the step loop."""

import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zhang import config as config_lib
import flax.linen as nn

from zhang import data, layers, train

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_step  # noqa: E402  (its reading of compiled HLO)

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
# Batch chunks (for YNNPACK's kernels) on one case of each gradient form: stride 1 with x or
# dy transposed, and the stride phases with an odd size.
CHUNKED = [CONVS[0], CONVS[2], CONVS[12]]


@pytest.mark.parametrize(
    "shape,kernel,stride,padding,chunk_images",
    [c + (None,) for c in CONVS] + [c + (k,) for c in CHUNKED for k in (1, 2)])
def test_value_and_gradients_equal_jax(monkeypatch, shape, kernel, stride, padding,
                                       chunk_images):
  """Also with the gradients' batch cut into chunks of 1 or 2 images (a remainder chunk
  where the batch is odd)."""
  kx, kw, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (shape[0] + 1,) + shape[1:]) if chunk_images else \
      jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (kernel, kernel, shape[-1], 5))
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                              dimension_numbers=DN)
  if chunk_images:
    # Both gradients size their chunks by x's and dy's elements per image.
    per_image = 4 * (np.prod(x.shape[1:]) + np.prod(jax.eval_shape(ref, x, w).shape[1:]))
    for name in ("INPUT_GRAD_CHUNK_BYTES", "WEIGHT_GRAD_CHUNK_BYTES"):
      monkeypatch.setattr(layers, name, int(chunk_images * per_image))
    expected = [(lo, min(lo + chunk_images, x.shape[0]))
                for lo in range(0, x.shape[0], chunk_images)]
    assert layers.batch_chunks(x.shape[0], per_image // 4, 4,
                               layers.WEIGHT_GRAD_CHUNK_BYTES) == expected
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


def test_batch_chunks_cover_the_batch_within_the_budget():
  # 10 elements of 4 bytes per image: a 100-byte budget holds 2 images.
  assert layers.batch_chunks(5, 10, 4, 100) == [(0, 2), (2, 4), (4, 5)]
  assert layers.batch_chunks(5, 10, 4, 10_000) == [(0, 5)]
  assert layers.batch_chunks(3, 10, 4, 1) == [(0, 1), (1, 2), (2, 3)]  # at least one image
  assert layers.batch_chunks(7, 10, 4, None) == [(0, 7)]


def test_other_convolutions_are_passed_to_lax():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 2, 6))  # two feature groups
  args = ((1, 1), "SAME")
  kw = dict(dimension_numbers=DN, feature_group_count=2)
  f = lambda x, w: jnp.sum(layers.conv_general_dilated(x, w, *args, **kw) ** 2)
  g = lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, *args, **kw) ** 2)
  for a, b in zip(jax.grad(f, (0, 1))(x, w), jax.grad(g, (0, 1))(x, w)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 9, 5), (2, 28, 28, 4), (1, 2, 2, 3)])
def test_max_pool_value_and_gradient_equal_jax(shape):
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape))
  x = jnp.round(x * 4) / 4  # many ties (zeros from the ReLU, and repeated values)
  ref = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
  ours = lambda x: layers.max_pool(x, (3, 3), (2, 2))
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
                                layers.lrn_forward(x, *args))
  g_ref = jax.grad(lambda x: jnp.sum(layers.lrn_forward(x, *args) * cot))(x)
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


def _grid(tiny_config, conv_gradient, image_size=8, model="inception_small_nobn",
          cpu_kernels="auto"):
  """A conv net on 64 images: digits (8x8), or random CIFAR-sized (28x28x3) ones."""
  tiny_config.model = model
  tiny_config.n_train, tiny_config.n_test, tiny_config.batch_size = 64, 32, 8
  tiny_config.learning_rate = 0.001
  tiny_config.conv_gradient = conv_gradient
  tiny_config.cpu_kernels = cpu_kernels
  tiny_config.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0])]
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  dataset = data.load("digits").subset(64, 32)
  if image_size != 8:
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    dataset = data.Dataset("random", images(64), dataset.train_labels, images(32),
                           dataset.test_labels, dataset.num_classes)
  return train.build(config, replicas, dataset)[:4]


@pytest.mark.parametrize("model", ["inception_small_nobn", "alexnet_small"])
def test_training_with_either_gradient_agrees(tiny_config, model):
  results = {}
  for how in ("jax", "explicit"):
    fns, d, reps, states = _grid(tiny_config, how, model=model)
    states, _ = fns.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(3))
    results[how] = jax.device_get((states.params, fns.evaluate(states, reps, d)))
  for a, b in zip(jax.tree.leaves(results["jax"]), jax.tree.leaves(results["explicit"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's compiled program")
def test_every_convolution_in_the_cpu_step_loop_is_canonical(tiny_config):
  """The property behind the speed: inside the compiled step loop XLA CPU runs a convolution
  fast only in the canonical NHWC x HWIO layout (benchmarks/RESULTS.md). On CIFAR-sized
  images: where a layer's input is no larger than its kernel (8x8 digits), XLA rewrites the
  convolution its own way."""
  fns, d, reps, states = _grid(tiny_config, "auto", image_size=28)
  hlo = fns.train_chunk.lower(states, reps, d, jnp.asarray(0), jnp.asarray(2)).compile()
  labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo.as_text())
  # 19 conv layers, 8 of them 1x1 (matrix products). Each of the other 11: a forward, an
  # input gradient (except the first layer's) and weight gradients (one per batch chunk).
  assert len(labels) >= 3 * 11 - 1
  assert set(labels) == {"b01f_01io->b01f"}


def _convolutions(hlo: str) -> tuple[int, int]:
  """(convolutions XLA runs as its own instructions, convolutions inside library fusions),
  as benchmarks/profile_step.py finds them."""
  convs = [name for name, c in profile_step.fusion_contents(hlo).items() if c[1] == "conv"]
  outside = sum("fusion" not in name for name in convs)
  return outside, len(convs) - outside


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's compiled program")
def test_cpu_kernels_choose_the_convolution_library_and_agree(tiny_config):
  """cpu_kernels="default": YNNPACK's convolutions (library fusions), the gradients in batch
  chunks; "eigen": XLA's own convolution instructions (Eigen's), the whole batch in one, so
  fewer of them. Training agrees to float rounding."""
  results, counts = {}, {}
  for kernels in ("default", "eigen"):
    fns, d, reps, states = _grid(tiny_config, "explicit", image_size=28,
                                 model="alexnet_small", cpu_kernels=kernels)
    compiled = fns.train_chunk.lower(states, reps, d, jnp.asarray(0), jnp.asarray(3)).compile()
    counts[kernels] = _convolutions(compiled.as_text())
    states, _ = compiled(states, reps, d, jnp.asarray(0), jnp.asarray(3))
    results[kernels] = jax.device_get((states.params, fns.evaluate(states, reps, d)))
  # alexnet_small: 2 forwards, 2 weight gradients, 1 input gradient without chunks.
  assert counts["eigen"] == (5, 0)
  assert counts["default"][0] == 0 and counts["default"][1] > 5
  for a, b in zip(jax.tree.leaves(results["default"]), jax.tree.leaves(results["eigen"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_max_pool_gradient_has_no_select_and_scatter(tiny_config):
  """JAX's max-pool gradient is a select_and_scatter (XLA CPU expands it into index arrays
  and a scatter); the explicit one routes dy with slices and pads."""
  for how, expected in (("jax", True), ("explicit", False)):
    fns, d, reps, states = _grid(tiny_config, how)
    text = fns.train_chunk.lower(states, reps, d, jnp.asarray(0), jnp.asarray(2)).as_text()
    assert ("select_and_scatter" in text) == expected, how
