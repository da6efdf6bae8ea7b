"""Shared fixtures: small configs that train in seconds on 2 CPU cores."""

import os

# Keep each test process to the cores it was given (pytest-xdist runs two). Most of the
# suite's time is XLA compiling small programs: LLVM's optimization of XLA's CPU code is off
# (the HLO passes and XLA's kernel choices are unchanged), which took the suite from 14.5 to
# 9.7 minutes on 2 AVX2 cores. Results differ from an optimized build only in float rounding
# (about 2e-5 in 300 digits steps); every comparison a test makes is between runs under the
# same flags. Benchmarks and users' runs keep the default optimization.
os.environ.setdefault("XLA_FLAGS",
                      "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

from zhang.experiment import config as config_lib  # noqa: E402


def pytest_configure(config):
  """Many tests build the same small programs, and the kill-and-resume tests compile them
  again in child processes. JAX's persistent compilation cache compiles each once per test
  run: in a fresh folder that the xdist workers and their children inherit through the
  environment (they start after this hook), removed at the end. Every program, however
  quick to compile: each ``train.build`` compiles a handful of small ones (under 0.5 s each)
  anew, and caching them too took about 10% off the quick tier's CPU time."""
  if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  folder = tempfile.mkdtemp(prefix="zhang-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
  import jax  # already imported without xdist: tell it too
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def tiny_config():
  """MLP on 256 digits, a few replicas of every kind, 60 steps."""
  c = config_lib.base_config()
  c.model = "mlp_1x512"
  c.dataset = "digits"
  c.n_train, c.n_test = 256, 128
  c.batch_size = 32
  c.max_steps = 60
  c.eval_every = 20
  c.eval_batch_size = 100
  c.lr_decay_every = 25
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 0.5], seeds=[0, 1]),
            dict(kinds=["shuffled_pixels", "random_pixels", "gaussian"], corruptions=[0.0],
                 seeds=[3])]
  return c


@pytest.fixture(scope="session")
def fitting_config():
  """A factory of a small grid whose replicas all fit within seconds: four MLPs (mlp_1x64) on
  128 digits, true and random labels at learning rates 0.05 and 0.1, a constant rate, each
  kept as it fitted (fits at steps 30 to 120), checkpoints every 100 steps and at the end.
  Keyword arguments set other fields; the config comes back resolved."""
  def make(**fields):
    c = config_lib.base_config()
    c.model = "mlp_1x64"
    c.dataset = "digits"
    c.n_train, c.n_test = 128, 64
    c.batch_size = 32
    c.max_steps = 400
    c.eval_every = 10
    c.eval_batch_size = 64
    c.checkpoint_every = 100
    c.freeze_at_fit = True
    c.lr_decay = 1.0
    c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0],
                   learning_rates=[0.05, 0.1])]
    for key, value in fields.items():
      c[key] = value
    return config_lib.resolve(c)
  return make
