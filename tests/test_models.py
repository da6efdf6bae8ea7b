import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import data, models, train
from zhang.probes import run as probe_run

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
@pytest.mark.slow
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


def test_any_mlp_size_is_a_model_and_the_paper_names_keep_their_meaning():
  """mlp_DxW builds D hidden layers of W; mlp_1x512 and mlp_3x512 are the same networks
  (the same parameters from the same key) as the registered ones."""
  x = jnp.ones((2, 8, 8, 1))
  params = models.get("mlp_2x24").build(10).init(jax.random.key(0), x)["params"]
  shapes = [params[f"Dense_{i}"]["kernel"].shape for i in range(3)]
  assert shapes == [(64, 24), (24, 24), (24, 10)]
  for name, depth in (("mlp_1x512", 1), ("mlp_3x512", 3)):
    assert models.get(name).description == models.sized_mlp(name).description
    a = models.get(name).build(10).init(jax.random.key(1), x)
    b = models.MLP(depth, 10, 512).init(jax.random.key(1), x)
    assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b))
  with pytest.raises(UsageError, match="mlp_DxW needs a depth"):
    models.get("mlp_0x8")
  with pytest.raises(UsageError, match="built in"):
    models.register("mlp_2x7", lambda k: models.MLP(2, k, 7), learning_rate=0.1)


def test_unknown_model_is_a_usage_error():
  from zhang.errors import UsageError
  with pytest.raises(UsageError, match="unknown model 'resnet'"):
    models.get("resnet")


# --- A user's own model and dataset, registered in their module. -----------------------------

_USER_MODULE = '''
import flax.linen as nn
import numpy as np

from zhang.experiment import data, models


class Linear(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train=True):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


models.register("user_linear", Linear, learning_rate=0.05, description="one dense layer")


@data.register("user_bars")
def bars(data_dir):
  """4x4 images, class c: row c bright. 64 training and 32 test images."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 96).astype(np.int32)
  images = rng.integers(0, 60, (96, 4, 4, 1)).astype(np.uint8)
  images[np.arange(96), labels] += 150
  return data.Dataset("user_bars", images[:64], labels[:64], images[64:], labels[64:], 4)
'''


@pytest.mark.slow
def test_a_registered_model_and_dataset_train_and_are_found_again_by_the_probes(
    tmp_path, monkeypatch):
  monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))  # noqa: SLF001 - restored after
  monkeypatch.setattr(data, "_LOADERS", dict(data._LOADERS))  # noqa: SLF001
  (tmp_path / "user_registry_mod.py").write_text(_USER_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  c = config_lib.base_config()
  c.imports = ["user_registry_mod"]
  c.model, c.dataset = "user_linear", "user_bars"
  c.batch_size, c.max_steps, c.eval_every, c.eval_batch_size = 16, 20, 10, 32
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0])]
  workdir = tmp_path / "run"
  summary = train.run(c, workdir, progress=False)
  assert summary["steps_run"] == 20 and len(summary["replicas"]) == 2
  assert [r["learning_rate"] for r in summary["replicas"]] == [0.05, 0.05]  # the model's rate
  assert json.loads((workdir / "config.json").read_text())["imports"] == ["user_registry_mod"]
  # A fresh process has neither name until it imports the module that config.json records.
  del models._MODELS["user_linear"], data._LOADERS["user_bars"]  # noqa: SLF001
  sys.modules.pop("user_registry_mod")
  with pytest.raises(UsageError, match="unknown dataset 'user_bars'"):
    data.check_name("user_bars")
  run = probe_run.open(workdir)
  assert run.dataset.num_classes == 4 and len(run.dataset.train_labels) == 64
  evaluated = {r["replica"]: r for r in run.evaluate(20)}
  recorded = run.recorded(20)
  for i in (0, 1):
    assert evaluated[i]["test_acc"] == pytest.approx(recorded[i]["test_acc"], abs=1e-6)
    assert evaluated[i]["train_loss"] == pytest.approx(recorded[i]["train_loss"], rel=1e-4)


def test_a_built_in_name_cannot_be_registered_again():
  with pytest.raises(UsageError, match="built in"):
    models.register("mlp_1x512", models.MLP, learning_rate=0.01)


def test_a_module_that_cannot_be_imported_is_one_line():
  c = config_lib.base_config()
  c.imports = ["no_such_module_of_models"]
  with pytest.raises(UsageError, match="imports: module 'no_such_module_of_models' cannot be "
                     "imported"):
    config_lib.validate(c)


def test_defaults_agree_with_the_modadd_config():
  """`zhang models` shows each token model's rate, and `zhang kernel --dataset modadd` takes
  its split, as configs/modadd.py trains them by default."""
  import pathlib  # pylint: disable=g-import-not-at-top

  from zhang import cli  # pylint: disable=g-import-not-at-top
  config_file = pathlib.Path(__file__).resolve().parents[1] / "configs" / "modadd.py"
  for model in ("mlp_tokens", "transformer_1l"):
    config = config_lib.load(f"{config_file}:model={model}")
    assert models.get(model).learning_rate == config.learning_rate, model
  config = config_lib.load(str(config_file))
  args = cli.build_parser().parse_args(["kernel", "--dataset", "modadd"])
  assert (args.modulus, args.train_fraction) == (config.modulus, config.train_fraction)


@pytest.mark.parametrize("scale,unit_values", [(0.5, False), (1.0, True)])
def test_one_hot_dense_equals_a_dense_product(scale, unit_values):
  """mlp_tokens' first layer (a gather of kernel rows, a scatter-add for its gradient, each
  with its own rule under vmap) against the dense product of the one-hot vectors it stands
  for: the same outputs and gradients, for a stack of replicas (vmap), for one, for a
  scaled one-hot input (a parameterization's multiplier) and for plain one-hot vectors
  taken as such (``unit_values``)."""
  import flax.linen as nn
  vocab, tokens, features, batch, replicas = 7, 2, 5, 11, 3
  ids = jax.random.randint(jax.random.key(0), (batch, tokens), 0, vocab)
  onehot = jax.nn.one_hot(ids, vocab).reshape(batch, -1) * scale
  dy = jax.random.normal(jax.random.key(1), (replicas, batch, features))
  layer = models.OneHotDense(features, vocab=vocab, unit_values=unit_values)
  dense = nn.Dense(features)
  params = jax.vmap(lambda k: layer.init(k, onehot))(jax.random.split(jax.random.key(2),
                                                                         replicas))

  def pullback(module):
    def one(p, g):
      y, vjp = jax.vjp(lambda q: module.apply(q, onehot), p)
      return y, vjp(g)[0]
    return jax.vmap(one)(params, dy)

  (y, g), (y_ref, g_ref) = pullback(layer), pullback(dense)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  single = jax.tree.map(lambda a: a[0], params)
  grad = jax.grad(lambda p: jnp.sum(layer.apply(p, onehot) * dy[0]))(single)
  np.testing.assert_allclose(grad["params"]["kernel"], g_ref["params"]["kernel"][0],
                             rtol=1e-5, atol=1e-6)
