"""The execution plan: how a device runs a grid's replicas. It is chosen for speed.

An experiment (``zhang/experiment/config.py``) says what to train; the plan says how this
backend runs it fastest, from measurements (``benchmarks/RESULTS.md``, "Execution plan"). It is
chosen from the backend, the model and the replicas per device, and is not part of the config: it
does not enter ``config.json``, its hash or the workdir check, so a run resumes under another plan
(the summary records the plan each run used). Plans compute the same sums in other orders: they
agree to float rounding, not to the bit, and over thousands of steps that can move a fit step by an
evaluation or more (README, "Scale out").

Three choices:

- ``replicas``: ``vmap`` (one batched program over the replica axis) or ``map`` (a loop
  over replicas). A vmapped convolution is one grouped convolution, which XLA CPU and the
  H200 ran slower than a loop of ordinary ones; the MLPs' batched products are as fast
  either way, so they keep ``vmap``, but for the token MLP (modadd's full batches) on CPU: a
  replica's activations (1,740 x 512 floats) stay in cache when replicas take turns, and its
  step ran 1.1-1.2x faster in a loop (benchmarks/modadd.py).
- ``gradients``: ``jax`` (JAX's own rules) or ``explicit`` (``zhang/runtime/layers.py``, applied
  around the plain models by ``layers.explicit_gradients``). Only on CPU, where it pays for
  real runs: inside the step loop XLA CPU runs JAX's convolution and max-pool gradients far
  slower than outside one (tens of times for the conv nets, the difference between a conv
  net test that runs in CI and one that does not), and the MLPs' logits layer's weight
  gradient in a slow layout (the README's digits run). Accelerators keep JAX's rules.
- ``cpu_kernels``: ``default`` (XLA's own: YNNPACK, one core per convolution) or ``eigen``
  (Eigen's convolutions and products, which use every core): faster for the conv nets, and
  for the MLPs from ``MLP_EIGEN_FROM`` replicas per device on. Ignored off CPU.

One override, for benchmarks: the environment variable ``ZHANG_PLAN`` (or ``override=``),
e.g. ``ZHANG_PLAN=replicas=map,gradients=jax``; choices it leaves out stay automatic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp

from zhang.errors import UsageError
from zhang.experiment import models
from zhang.runtime import layers

ENV = "ZHANG_PLAN"
CHOICES = {"replicas": ("vmap", "map"), "gradients": ("jax", "explicit"),
           "cpu_kernels": ("default", "eigen")}

# Measured tables (benchmarks/RESULTS.md, "Execution plan"). Anything not listed: the
# first choice of CHOICES. TPU entries wait for a TPU measurement.
REPLICAS = {("cpu", "conv"): "map", ("gpu", "conv"): "map", ("cpu", "token_mlp"): "map"}
GRADIENTS = {"cpu": "explicit"}
MLP_EIGEN_FROM = 8  # replicas per device
COMPILER_OPTIONS = {
    "default": {},
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}}


@dataclasses.dataclass(frozen=True)
class Plan:
  replicas: str = "vmap"
  gradients: str = "jax"
  cpu_kernels: str = "default"
  backend: str = "cpu"

  def __str__(self) -> str:
    text = f"replicas={self.replicas},gradients={self.gradients}"
    return text + (f",cpu_kernels={self.cpu_kernels}" if self.backend == "cpu" else "")

  def compiler_options(self) -> dict:
    """XLA options for the grid's compiled functions (``cpu_kernels``, on CPU only)."""
    return dict(COMPILER_OPTIONS[self.cpu_kernels]) if self.backend == "cpu" else {}

  def model_context(self):
    """The context a model is applied (traced) in: ``explicit`` gradients, or nothing."""
    if self.gradients == "explicit":
      return layers.explicit_gradients()
    return contextlib.nullcontext()

  def over_replicas(self, fn, *args):
    """``fn`` on each replica's slice of ``args`` (leading axis): batched or in a loop."""
    if self.replicas == "map":
      return jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn)(*args)


def parse(override: str | dict | None) -> dict:
  """``"replicas=map,gradients=jax"`` (or such a dict) -> dict; a UsageError names a wrong
  key or value."""
  if isinstance(override, dict):
    items = list(override.items())
  else:
    items = [item.partition("=")[::2]
             for item in filter(None, (override or "").replace(" ", "").split(","))]
  out = {}
  for key, value in items:
    if key not in CHOICES:
      raise UsageError(f"{ENV}: unknown plan choice {key!r}: known are "
                       f"{', '.join(CHOICES)} (e.g. {ENV}=replicas=map)")
    if value not in CHOICES[key]:
      raise UsageError(f"{ENV}: {key}={value!r} must be one of {', '.join(CHOICES[key])}")
    out[key] = value
  return out


def choose(model: str, replicas_per_device: int, backend: str | None = None,
           override: str | dict | None = None) -> Plan:
  """The measured fastest plan for ``model`` at ``replicas_per_device`` on ``backend``
  (default: JAX's), with ``override`` (default: ``$ZHANG_PLAN``) taking precedence."""
  backend = backend or jax.default_backend()
  family = models.get(model).family
  if override is None:
    override = os.environ.get(ENV)
  forced = parse(override)
  eigen = backend == "cpu" and (family == "conv" or replicas_per_device >= MLP_EIGEN_FROM)
  kernels = "eigen" if eigen else "default"
  plan = Plan(replicas=forced.get("replicas", REPLICAS.get((backend, family), "vmap")),
              gradients=forced.get("gradients", GRADIENTS.get(backend, "jax")),
              cpu_kernels=forced.get("cpu_kernels", kernels), backend=backend)
  if backend == "cpu" and not accepted(plan.compiler_options()):
    # An experimental XLA option this jaxlib no longer takes: fall back, unless asked for.
    if "cpu_kernels" in forced:
      raise UsageError(f"{ENV}: cpu_kernels={plan.cpu_kernels} needs the XLA option(s) "
                       f"{plan.compiler_options()}, which jaxlib {jax.__version__} refuses: "
                       f"use cpu_kernels=default")
    plan = dataclasses.replace(plan, cpu_kernels="default")
  return plan


@functools.cache
def _accepted(options: tuple) -> bool:
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros(())).compile(dict(options))
    return True
  except Exception:  # noqa: BLE001 - XLA answers an unknown option or value with an error
    return False


def accepted(options: dict) -> bool:
  """Whether this jaxlib's XLA takes these compiler options."""
  return not options or _accepted(tuple(sorted(options.items())))
