import jax
import jax.numpy as jnp
import pytest

from zhang.experiment import models

PAPER_COUNTS = {
    "mlp_1x512": 1_209_866,
    "mlp_3x512": 1_735_178,
    "alexnet_small": 1_387_786,
    "inception_small": 1_649_402,
    "inception_small_nobn": 1_649_402,
}


@pytest.mark.parametrize("name,count", PAPER_COUNTS.items())
def test_parameter_counts_match_the_paper(name, count):
  assert models.param_count(name, (28, 28, 3), 10) == count


def test_batch_norm_parameters_are_excluded_but_exist():
  with_bn = models.param_count("inception_small", include_batch_norm=True)
  # One scale and one offset per channel of every conv module.
  assert with_bn - PAPER_COUNTS["inception_small"] == 2 * 1712
  assert models.param_count("inception_small_nobn", include_batch_norm=True) == 1_649_402


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
@pytest.mark.parametrize("shape", [(28, 28, 3), (8, 8, 1)])
def test_output_shapes(name, shape):
  """Shapes from ``jax.eval_shape`` of init and apply: traced, nothing computed."""
  module = models.get(name).build(7)
  x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
  variables = jax.eval_shape(lambda k, x: module.init(k, x, train=False), jax.random.key(0), x)
  logits = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", ["alexnet_small", "inception_small"])
def test_forward_pass_is_finite(name):
  """One real forward pass on the smallest input, of the conv nets (LRN, batch norm)."""
  module = models.get(name).build(7)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  logits = jax.jit(lambda k, x: module.apply(module.init(k, x, train=False), x,
                                             train=False))(jax.random.key(0), x)
  assert logits.shape == (2, 7) and bool(jnp.all(jnp.isfinite(logits)))


def test_local_response_norm_matches_definition():
  x = jax.random.normal(jax.random.key(1), (2, 3, 3, 12))
  out = models.local_response_norm(x, depth_radius=2, bias=1.0, alpha=0.5, beta=0.75)
  c = 5
  window = jnp.sum(jnp.square(x[..., c - 2:c + 3]), axis=-1)
  assert jnp.allclose(out[..., c], x[..., c] / (1.0 + 0.5 * window) ** 0.75, rtol=1e-5)
  edge = jnp.sum(jnp.square(x[..., 0:3]), axis=-1)
  assert jnp.allclose(out[..., 0], x[..., 0] / (1.0 + 0.5 * edge) ** 0.75, rtol=1e-5)


def test_unknown_model_is_a_usage_error():
  from zhang.errors import UsageError
  with pytest.raises(UsageError, match="unknown model 'resnet'"):
    models.get("resnet")
