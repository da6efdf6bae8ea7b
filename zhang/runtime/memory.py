"""Device memory: how much a grid (or a probe's chains) needs, told before anything compiles.

XLA learns that a program does not fit only when it allocates, after minutes of compiling,
with a 40-line RESOURCE_EXHAUSTED. The estimate here is a lower bound from the model's shapes
alone: per replica (or chain) its parameters with their gradients and optimizer slots, its
per-example arrays (labels, fit steps), and the Dense and Conv outputs of one batch, kept for
the backward pass with their gradients (of every replica at once where the plan vmaps them,
one at a time where it loops). What XLA adds (temporaries, ReLU outputs, fusion buffers)
only makes the truth larger, so a refusal is never wrong about the order of magnitude; a grid
the estimate passes may still not fit.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax

from zhang.errors import UsageError
from zhang.runtime import flops as flops_lib

_GB = 1e9
_F32 = 4  # bytes


def available_host_bytes() -> int:
  """MemAvailable from /proc/meminfo, else total physical memory."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_bytes() -> tuple[int, str]:
  """(bytes one device can hold, what they are): an accelerator's own limit, or on CPU the
  host memory available now."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"one {device.device_kind}'s memory"
  return available_host_bytes(), "the host memory available"


@dataclasses.dataclass(frozen=True)
class Need:
  """A lower bound on one device's bytes, by part."""
  copies: int  # replicas (or replica-chains) on the device
  state: int  # bytes of one copy's parameters, gradients, optimizer slots (and kept copies)
  per_example: int  # bytes of one copy's per-example arrays
  activations: int  # bytes of one copy's activations at the larger of train and evaluation
  live: int  # copies whose activations are held at once

  @property
  def total(self) -> int:
    return self.copies * (self.state + self.per_example) + self.live * self.activations

  def describe(self) -> str:
    return (f"{self.copies:,} x ({self.state / 1e6:.3g} MB of parameters, gradients and "
            f"optimizer state + {self.per_example / 1e6:.3g} MB per-example arrays) + "
            f"{self.live:,} x {self.activations / 1e6:.3g} MB of activations")


def activation_bytes(module, input_shape, batch: int, eval_batch: int) -> int:
  """One copy's Dense and Conv outputs: a train batch's, kept with their gradients, or an
  evaluation batch's widest layer in and out, whichever is larger."""
  outs = [math.prod(layer.out_shape) for layer in flops_lib.layers(module, input_shape)]
  if not outs:
    return 0
  return _F32 * max(2 * batch * sum(outs), 2 * eval_batch * max(outs))


def need(module, input_shape, params: int, copies: int, live: int, batch: int,
         eval_batch: int = 0, slots: int = 1, per_example: int = 0, kept: int = 0) -> Need:
  """The estimate for ``copies`` of a model with ``params`` parameters; ``slots``: the
  optimizer's arrays per parameter (1 momentum, 2 Adam); ``kept``: more copies of the
  parameters each holds (the trainer keeps w_0 beside the state)."""
  return Need(copies, _F32 * params * (2 + slots + kept), per_example,
              activation_bytes(module, input_shape, batch, eval_batch), live)


def check(estimate: Need, what: str, lower: str) -> None:
  """UsageError (one line) when the estimate is over what one device holds: the estimate,
  the device's memory, and what to lower."""
  have, where = device_bytes()
  if estimate.total > have:
    raise UsageError(f"{what} needs at least {estimate.total / _GB:.3g} GB on each device "
                     f"({estimate.describe()}), more than {where} ({have / _GB:.3g} GB): "
                     f"{lower}")
