"""Train-step throughput of the replica grid, against the same process's fp32 matmul rate.

Run (2-core CPU, about 2 minutes):

  python benchmarks/throughput.py                      # mlp_1x512 and mlp_3x512, R = 1, 8
  python benchmarks/throughput.py --models all --quick # every model, fewer steps
  python benchmarks/throughput.py --replicas 1,8,64 --max_seconds 60  # rows within a budget

Prints one JSON object per (model, replicas). The timed program is the trainer's own
``train_chunk`` (batch gather, scaling, whitening, forward, backward, SGD momentum) on
synthetic uint8 images, for a grid of ``labels`` replicas (corruption 0, seeds 0..R-1).
``flops_per_s`` uses the analytic count of ``zhang/flops.py`` (3 x forward);
``needed_flops_per_s`` leaves out the first layer's input gradient, which XLA never computes,
and is what ``xla_flops_per_step`` should agree with. ``fraction_of_matmul`` divides by the
best rate of a large ``jnp.dot`` timed in the same process just before and after each row. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from zhang import config as config_lib
from zhang import flops as flops_lib
from zhang import models, train as train_lib
from zhang.data import Dataset

CONV_NETS = ("alexnet_small", "inception_small", "inception_small_nobn")
DEFAULT_MODELS = ("mlp_1x512", "mlp_3x512")


def matmul_flops_per_s(n: int, repeats: int, dtype=jnp.float32) -> float:
  """Best rate of an (n, n) @ (n, n) product (fp32 by default), in FLOP/s."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), dtype)
  b = jax.random.normal(keys[1], (n, n), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def synthetic_dataset(n_train: int, input_shape, num_classes: int = 10) -> Dataset:
  """Random uint8 images and labels of the given shape (CIFAR-like, already cropped)."""
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, *input_shape), dtype=np.uint8)
  labels = lambda n: rng.integers(0, num_classes, n).astype(np.int32)
  return Dataset("synthetic", images(n_train), labels(n_train), images(256), labels(256),
                 num_classes)


def setup(model: str, num_replicas: int, dataset: Dataset, batch_size: int,
          mesh_shape=None, strategy: str = "auto", compute_dtype: str = "float32"):
  """The trainer's own ``train.build`` for a grid of ``labels`` replicas (p = 0, seeds 0..R-1).

  ``mesh_shape`` (replica, data) defaults to the config's, every device on ``replica``.
  Returns (step.Functions, step.Data, step.Replicas, stacked TrainState).
  """
  c = config_lib.base_config()
  c.model = model
  c.batch_size = batch_size
  c.replica_strategy = strategy
  c.compute_dtype = compute_dtype
  if mesh_shape is not None:
    c.mesh_shape = tuple(mesh_shape)
  c.grid = [dict(kinds=["labels"], corruptions=[0.0], seeds=list(range(num_replicas)))]
  c = config_lib.resolve(c)
  replicas = config_lib.expand_grid(c)
  fns, d, reps, states = train_lib.build(c, replicas, dataset)[:4]
  return fns, d, reps, states


def time_chunks(fns, d, reps, states, steps: int, repeats: int, name: str = ""):
  """Compiles ``fns.train_chunk`` for ``steps`` steps, runs it once to warm up, then times
  ``repeats`` chunks. Returns (compiled, compile seconds, per-chunk seconds)."""
  step0 = jnp.asarray(0, jnp.int32)
  num = jnp.asarray(steps, jnp.int32)

  t = time.perf_counter()
  compiled = fns.train_chunk.lower(states, reps, d, step0, num).compile()
  compile_s = time.perf_counter() - t

  states, loss = compiled(states, reps, d, step0, num)  # warm-up (donates states)
  loss.block_until_ready()
  times = []
  for i in range(repeats):
    start = jnp.asarray((i + 1) * steps, jnp.int32)
    t = time.perf_counter()
    states, loss = compiled(states, reps, d, start, num)
    loss.block_until_ready()
    times.append(time.perf_counter() - t)
  if not np.all(np.isfinite(np.asarray(loss))):
    raise RuntimeError(f"{name}: non-finite loss {loss}")
  return compiled, compile_s, times


def _memory(compiled) -> dict:
  """Device memory of the compiled chunk: XLA's static estimate, and the allocator's peak
  where the backend reports one (GPU, TPU; not CPU)."""
  out = {}
  try:
    m = compiled.memory_analysis()
    out["xla_memory_bytes"] = int(m.argument_size_in_bytes + m.output_size_in_bytes
                                  + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001 - not every backend answers
    pass
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  return out


def measure(model: str, num_replicas: int, dataset: Dataset, batch_size: int, steps: int,
            repeats: int, matmul_rate: float, strategy: str = "auto",
            compute_dtype: str = "float32") -> dict:
  fns, d, reps, states = setup(model, num_replicas, dataset, batch_size,
                               strategy=strategy, compute_dtype=compute_dtype)
  compiled, compile_s, times = time_chunks(fns, d, reps, states, steps, repeats, model)
  # XLA counts a while loop's body once, so one chunk's estimate is one step's.
  memory = _memory(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  xla_flops = float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None

  module = models.get(model).build(dataset.num_classes)
  shape = dataset.image_shape
  per_step = num_replicas * flops_lib.train_flops(module, shape, batch_size)
  needed = num_replicas * flops_lib.train_flops(module, shape, batch_size,
                                                first_input_grad=False)
  best = min(times) / steps
  flops_per_s = per_step / best
  device = jax.devices()[0]
  return dict(
      model=model, replicas=num_replicas, batch_size=batch_size, input_shape=list(shape),
      strategy=fns.hyper.strategy, compute_dtype=compute_dtype,
      n_train=len(dataset.train_labels), steps=steps, repeats=repeats,
      step_ms=round(best * 1e3, 3),
      step_ms_median=round(statistics.median(times) / steps * 1e3, 3),
      compile_s=round(compile_s, 3),
      examples_per_s=round(num_replicas * batch_size / best, 1),
      flops_per_step=per_step, needed_flops_per_step=needed,
      xla_flops_per_step=xla_flops,
      flops_per_s=flops_per_s, needed_flops_per_s=needed / best,
      matmul_flops_per_s=matmul_rate,
      fraction_of_matmul=round(flops_per_s / matmul_rate, 4),
      needed_fraction_of_matmul=round(needed / best / matmul_rate, 4),
      **memory,
      backend=jax.default_backend(), device_kind=device.device_kind,
      jax_version=jax.__version__, cpu_count=os.cpu_count(),
      load_avg_1m=round(os.getloadavg()[0], 2))  # > cpu_count: others shared the machine


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                 help=f"comma-separated names, or 'all' ({', '.join(models.names())})")
  p.add_argument("--replicas", default="1,8", help="comma-separated replica counts")
  p.add_argument("--steps", type=int, default=None,
                 help="steps per timed chunk (default 50 for MLPs, 2 for conv nets)")
  p.add_argument("--repeats", type=int, default=None, help="timed chunks (default 5)")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--n_train", type=int, default=2048)
  p.add_argument("--input_shape", default="28,28,3", help="H,W,C of the synthetic images")
  p.add_argument("--matmul_n", type=int, default=2048, help="size of the reference matmul")
  p.add_argument("--quick", action="store_true", help="few steps and repeats (a smoke run)")
  p.add_argument("--strategy", default="auto",
                 help="how replicas run on a device (config field replica_strategy): auto, "
                 "vmap or map; comma-separated to compare")
  p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--max_seconds", type=float, default=None,
                 help="time budget: skip a row (said on stderr) once it would end past it, "
                 "predicted from the model's previous row")
  args = p.parse_args(argv)

  names = models.names() if args.models == "all" else args.models.split(",")
  for name in names:
    models.get(name)  # fails early on a typo
  shape = tuple(int(s) for s in args.input_shape.split(","))
  dataset = synthetic_dataset(args.n_train, shape)
  repeats = args.repeats or (2 if args.quick else 5)
  mm_repeats = 3 if args.quick else 10
  start = time.perf_counter()
  strategies = args.strategy.split(",")
  for strategy in strategies:
    if strategy not in ("auto", "vmap", "map"):
      p.error(f"--strategy {strategy!r}: use auto, vmap or map (comma-separated)")
  for name, strategy in [(n, s) for n in names for s in strategies]:
    conv = name in CONV_NETS
    steps = args.steps or {(False, False): 50, (False, True): 10,
                           (True, False): 2, (True, True): 1}[conv, args.quick]
    previous = None  # (replicas, seconds that stay, seconds that grow with R): last row
    for r in (int(s) for s in args.replicas.split(",")):
      t_row = time.perf_counter()
      if args.max_seconds is not None:
        # The timed steps are taken to grow linearly with R; compilation, setup and the
        # reference matmul to stay.
        guess = 0.0 if previous is None else previous[1] + previous[2] * r / previous[0]
        if t_row - start + guess > args.max_seconds:
          print(f"throughput: skipped {name} R={r}: {t_row - start:.0f} s spent, about "
                f"{guess:.0f} s more needed, budget {args.max_seconds:.0f} s",
                file=sys.stderr, flush=True)
          continue
      # On a shared machine the reference is timed on each side of the step and the faster
      # taken, so contention lowers the fraction rather than raising it.
      before = matmul_flops_per_s(args.matmul_n, mm_repeats)
      row = measure(name, r, dataset, args.batch_size, steps, repeats, before,
                    strategy, args.compute_dtype)
      after = matmul_flops_per_s(args.matmul_n, mm_repeats)
      if after > before:
        rate = row["flops_per_s"]
        row.update(matmul_flops_per_s=after, fraction_of_matmul=round(rate / after, 4),
                   needed_fraction_of_matmul=round(row["needed_flops_per_s"] / after, 4))
      if jax.default_backend() != "cpu":  # bf16 matmul units; CPU has none worth timing
        row["matmul_bf16_flops_per_s"] = matmul_flops_per_s(args.matmul_n, mm_repeats,
                                                            jnp.bfloat16)
      print(json.dumps(row), flush=True)
      wall = time.perf_counter() - t_row
      grows = min(row["step_ms_median"] / 1e3 * steps * (repeats + 1), wall)  # + warm-up
      previous = (r, wall - grows, grows)


if __name__ == "__main__":
  main()
