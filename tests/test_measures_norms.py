"""The norm, spectral and margin measures against independent computations on small networks:
numpy SVDs of dense kernels and of convolutions' operator matrices, path sums by nested
loops, margins from numpy matmuls."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang.experiment import models
from zhang.probes.measures import margins, net, norms, spectral
from zhang.probes.measures.context import Model, Replica


class TinyConv(nn.Module):
  """Two convolutions (one strided, SAME; one VALID) and a Dense layer, on 5x5x2 inputs."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Conv(3, (3, 3), strides=2, padding="SAME")(x))
    x = nn.relu(nn.Conv(4, (2, 2), padding="VALID")(x))
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


class TinyBatchNorm(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(4)(x.reshape(x.shape[0], -1))
    return nn.Dense(3)(nn.relu(nn.BatchNorm(use_running_average=not train)(x)))


def _fill(shapes, rng):
  """Arrays of the given shapes from numpy: kernels N(0, 1/fan_in), other parameters N(0,
  0.1^2), batch-norm variances 1 (no random number program to compile)."""
  def one(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "var":
      return jnp.ones(a.shape, a.dtype)
    scale = 1 / np.sqrt(np.prod(a.shape[:-1])) if name == "kernel" else 0.1
    return jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype)
  return jax.tree_util.tree_map_with_path(one, shapes)


def build(module, shape, m=8, chunk=4, classes=None, seed=0):
  """A Model and a Replica of ``module`` on inputs of ``shape``: parameters and initial
  parameters drawn apart (so W != W0), nonzero biases, random examples and labels."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((m, *shape)), jnp.float32)
  shapes = jax.eval_shape(lambda k, x: module.init(k, x, train=False), jax.random.key(0), x[:1])
  params, init = _fill(shapes["params"], rng), _fill(shapes["params"], rng)
  stats = _fill(shapes.get("batch_stats", {}), rng)
  logits = lambda p, bs, x: module.apply({"params": p, **({"batch_stats": bs} if bs else {})},
                                         x, train=False)
  classes = classes or jax.eval_shape(logits, params, stats, x[:1]).shape[-1]
  y = jnp.asarray(rng.integers(0, classes, m), jnp.int32)
  model = Model(logits, module, net.layers(module, params, stats, x[:1]), chunk)
  return model, Replica(params, init, stats, x, y, jnp.ones(m), jax.random.key(seed))


def operator(layer, kernel):
  """The matrix (inputs, outputs) of a layer's bias-free map, column by column from the
  basis vectors of its input: a Dense kernel as it is, a convolution through lax."""
  kernel = np.asarray(kernel)
  if layer.kind == "dense":
    return kernel
  size = int(np.prod(layer.input_shape))
  basis = jnp.eye(size).reshape(size, *layer.input_shape)
  m = layer.module
  strides = (m.strides,) * 2 if isinstance(m.strides, int) else m.strides
  out = jax.lax.conv_general_dilated(basis, kernel, strides, m.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return np.asarray(out).reshape(size, -1)


def svd_norms(model, params):
  return np.array([np.linalg.svd(operator(layer, net.kernel(params, layer)),
                                 compute_uv=False)[0] for layer in model.layers])


def test_layers_are_the_dense_and_conv_kernels_with_their_inputs():
  model, rep = build(TinyConv(), (5, 5, 2))
  assert [(la.path, la.kind, la.input_shape) for la in model.layers] == [
      (("Conv_0", "kernel"), "conv", (5, 5, 2)), (("Conv_1", "kernel"), "conv", (3, 3, 3)),
      (("Dense_0", "kernel"), "dense", (16,))]
  assert hash(model.layers) == hash(build(TinyConv(), (5, 5, 2), seed=1)[0].layers)
  bn, _ = build(TinyBatchNorm(), (3,))
  assert net.names(bn.layers) == ["Dense_0", "Dense_1"]  # batch norm is no layer
  # The layer's map is the module's output less its bias.
  layer, p = model.layers[0], rep.params["Conv_0"]
  x = rep.x[:2]
  want = nn.Conv(3, (3, 3), strides=2, padding="SAME").apply({"params": p}, x) - p["bias"]
  np.testing.assert_allclose(layer.linear(p["kernel"], x), want, rtol=1e-5, atol=1e-6)


def test_transformer_layers_are_its_dense_layers():
  module = models.OneLayerTransformer(5, d_model=8, heads=2, d_mlp=6)
  model, rep = build(module, (2,), classes=5)
  assert [la.path for la in model.layers] == [
      ("Dense_1", "kernel"), ("Dense_0", "kernel"), ("Dense_2", "kernel")]
  assert [la.input_shape for la in model.layers] == [(3, 8), (3, 6), (8,)]
  assert np.isnan(norms.path_norm(model, rep))  # attention and embeddings: no path sum


@pytest.mark.parametrize("name", ["mlp_1x512", "alexnet_small"])
def test_params_counts_as_the_models_registry(name):
  module = models.get(name).build(10)
  x = jnp.zeros((1, 28, 28, 3))
  params = jax.eval_shape(module.init, jax.random.key(0), x, False)["params"]
  assert norms.params_count(params) == models.param_count(name, (28, 28, 3), 10)


def test_params_leave_batch_norm_out():
  model, rep = build(TinyBatchNorm(), (3,))
  assert norms.measures(model, rep)["params"] == 3 * 4 + 4 + 4 * 3 + 3
  assert np.isnan(norms.path_norm(model, rep))


def test_frobenius_and_distances_as_numpy():
  model, rep = build(TinyConv(), (5, 5, 2))
  got = jax.jit(lambda r: norms.measures(model, r))(rep)
  w = [np.asarray(rep.params[n]["kernel"], np.float64) for n in ("Conv_0", "Conv_1", "Dense_0")]
  w0 = [np.asarray(rep.init_params[n]["kernel"], np.float64)
        for n in ("Conv_0", "Conv_1", "Dense_0")]
  sq = [np.sum(a ** 2) for a in w]
  dist = [np.sum((a - b) ** 2) for a, b in zip(w, w0)]
  rel = np.mean([np.sqrt(d / np.sum(b ** 2)) for d, b in zip(dist, w0)])
  np.testing.assert_allclose(
      [got["frobenius_sum"], got["frobenius_product"], got["init_distance"],
       got["init_distance_relative"]], [sum(sq), np.prod(sq), sum(dist), rel], rtol=1e-5)
  details = jax.jit(lambda r: norms.layer_details(model, r))(rep)
  np.testing.assert_allclose(details["frobenius"], np.sqrt(sq), rtol=1e-5)
  np.testing.assert_allclose(details["init_distance_relative"],
                             [np.sqrt(d / np.sum(b ** 2)) for d, b in zip(dist, w0)],
                             rtol=1e-5)
  np.testing.assert_allclose(details["spectral"], svd_norms(model, rep.params), rtol=1e-4)


def test_path_norm_is_the_sum_over_paths():
  """A 2-hidden-layer MLP (3 -> 3 -> 4 -> 2) with nonzero biases: the sum over every
  input-output path of the product of its squared weights, by nested loops."""

  class Two(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.relu(nn.Dense(3)(x.reshape(x.shape[0], -1)))
      x = nn.relu(nn.Dense(4)(x))
      return nn.Dense(2)(x)

  model, rep = build(Two(), (3,))
  w1, w2, w3 = (np.asarray(rep.params[f"Dense_{i}"]["kernel"], np.float64) for i in range(3))
  assert all(np.any(rep.params[f"Dense_{i}"]["bias"] != 0) for i in range(3))
  total = 0.0
  for i in range(3):
    for j in range(3):
      for k in range(4):
        for o in range(2):
          total += w1[i, j] ** 2 * w2[j, k] ** 2 * w3[k, o] ** 2
  np.testing.assert_allclose(norms.measures(model, rep)["path_norm"], total, rtol=1e-5)


def test_spectral_norms_of_dense_and_conv_operators_as_svd():
  """Power iteration on the layers' maps against the SVD of their matrices: a dense kernel,
  and a strided SAME and a VALID convolution's operator over its whole input."""
  model, rep = build(TinyConv(), (5, 5, 2))
  got = jax.jit(lambda p, k: spectral.norms(model, p, k))(rep.params, rep.key)
  want = svd_norms(model, rep.params)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # The operator is not the kernel reshaped: a strided convolution's norm differs from it.
  kernel = np.asarray(rep.params["Conv_0"]["kernel"]).reshape(-1, 3)
  assert abs(np.linalg.svd(kernel, compute_uv=False)[0] / want[0] - 1) > 0.05


def test_spectral_measures_as_numpy():
  model, rep = build(TinyConv(), (5, 5, 2))
  got = jax.jit(lambda r: spectral.measures(model, r))(rep)
  s = svd_norms(model, rep.params).astype(np.float64)
  two_one = []
  for layer in model.layers:
    change = np.asarray(net.kernel(rep.params, layer) - net.kernel(rep.init_params, layer),
                        np.float64)
    columns = change.reshape(-1, change.shape[-1])
    two_one.append(sum(np.sqrt(np.sum(columns[:, j] ** 2)) for j in range(columns.shape[1])))
  complexity = np.prod(s) ** 2 * np.sum((np.array(two_one) / s) ** (2 / 3)) ** 3
  np.testing.assert_allclose(
      [got["spectral_product"], got["spectral_sum"], got["spectral_complexity"]],
      [np.prod(s ** 2), np.sum(s ** 2), complexity], rtol=1e-3)


def _converges(module, shape):
  model, rep = build(module, shape)
  init = rep.init_params  # at initialization the top singular values crowd: slowest
  got = jax.jit(lambda p, k: spectral.norms(model, p, k))(init, rep.key)
  np.testing.assert_allclose(got, svd_norms(model, init), rtol=1e-3)


def test_default_iterations_converge_on_the_digits_mlp():
  _converges(models.MLP(1, 10), (8, 8, 1))


@pytest.mark.slow
def test_default_iterations_converge_on_alexnet_on_digits():
  _converges(models.AlexNetSmall(10), (8, 8, 1))


def test_margin_is_numpys_percentile_over_the_real_examples():
  """A one-hidden-layer MLP's margins from numpy matmuls; the last 2 of 12 examples are
  padding (labels that would make them the smallest margins), passes of 4."""
  model, rep = build(models.MLP(1, 4, width=5), (2, 2, 1), m=12, chunk=4)
  valid = (np.arange(12) < 10).astype(np.float32)
  rep = rep._replace(valid=jnp.asarray(valid))
  p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in rep.params.items()}
  x = np.asarray(rep.x, np.float64).reshape(12, -1)
  h = np.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
  logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  y = np.array(rep.y)
  y[10:] = logits[10:].argmin(axis=1)
  rep = rep._replace(y=jnp.asarray(y))
  want = [logits[i, y[i]] - np.max(np.delete(logits[i], y[i])) for i in range(12)]
  np.testing.assert_allclose(margins.margins(model, rep), want, rtol=1e-5, atol=1e-6)
  for q in (10, 50, 95):
    gamma = margins.margin(model, rep, q)
    np.testing.assert_allclose(gamma, np.percentile(want[:10], q, method="linear"),
                               rtol=1e-5, atol=1e-6)
  gamma = margins.margin(model, rep)
  inverse = margins.measures(model, rep)["inverse_margin"]
  if gamma > 0:
    np.testing.assert_allclose(inverse, 1 / gamma ** 2, rtol=1e-6)
  else:
    assert np.isnan(inverse)


def test_over_margin_divides_by_gamma_squared_and_refuses_nonpositive_gamma():
  values = {"frobenius_sum": 2.0, "spectral_sum": 3.0, "params": 5.0}
  got = margins.over_margin(values, jnp.float32(0.5))
  assert set(got) == {"frobenius_sum_over_margin", "spectral_sum_over_margin"}
  np.testing.assert_allclose([got["frobenius_sum_over_margin"],
                              got["spectral_sum_over_margin"]], [8.0, 12.0])
  for gamma in (0.0, -0.1):
    assert all(np.isnan(v) for v in margins.over_margin(values, jnp.float32(gamma)).values())
  np.testing.assert_allclose(margins.percentile(jnp.array([3.0, 1.0, 2.0, 9.0]),
                                                jnp.array([1, 1, 1, 0]), 50), 2.0)
  assert np.isnan(margins.percentile(jnp.ones(3), jnp.zeros(3), 10))


def test_vmap_over_replicas_equals_each_alone():
  model, a = build(TinyConv(), (5, 5, 2), seed=0)
  _, b = build(TinyConv(), (5, 5, 2), seed=1)

  def everything(rep):
    s = spectral.norms(model, rep.params, rep.key, 20)
    gamma = margins.margin(model, rep)
    out = {**norms.measures(model, rep), **spectral.measures(model, rep, spectral=s),
           **margins.measures(model, rep, gamma)}
    out.update(margins.over_margin(out, gamma))
    return out, norms.layer_details(model, rep, spectral_norms=s), gamma

  stacked = jax.tree.map(lambda *r: jnp.stack(r), a, b)
  both = jax.jit(jax.vmap(everything))(stacked)
  one = jax.jit(everything)
  for i, rep in enumerate((a, b)):
    mine = jax.tree.map(lambda x, i=i: x[i], both)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5), mine, one(rep))
  assert not np.allclose(both[0]["frobenius_sum"][0], both[0]["frobenius_sum"][1])
