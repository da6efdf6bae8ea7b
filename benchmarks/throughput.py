"""Train-step throughput of the replica grid, against the same process's fp32 matmul rate.

  python benchmarks/throughput.py                      # mlp_1x512 and mlp_3x512, R = 1, 8
  python benchmarks/throughput.py --models all --quick # every model, fewer steps
  python benchmarks/throughput.py --replicas 1,8,64 --max_seconds 60  # rows within a budget
  python benchmarks/throughput.py --models alexnet_small --plan replicas=map --plan replicas=vmap
  python benchmarks/throughput.py --models inception_small --plan cpu_kernels=default \
      --plan cpu_kernels=eigen
  python benchmarks/throughput.py --models mlp_1x512 --replicas 64 --up_to_memory  # 128, ...
  python benchmarks/throughput.py --models mlp_1x512 --replicas 8 --kind labels,random_pixels
  python benchmarks/throughput.py --models mlp_1x512 --replicas 8 --augmentation crop+flip

Prints one JSON object per (model, plan, kind, replicas). The timed program is the trainer's
own ``train_chunk`` (batch gather, scaling, randomization, whitening, forward, backward, SGD
momentum) on synthetic uint8 images, for a grid of R replicas of one ``--kind`` (corruption
0, seeds 0..R-1; ``labels`` unless said), every replica augmented by ``--augmentation``
(``zhang/experiment/augment.py``; ``none`` unless said).

``--plan`` (repeatable) compares execution plans (``zhang/runtime/plan.py``): each value is what
``ZHANG_PLAN`` takes, e.g. ``replicas=map,gradients=jax``; choices it leaves out, and
``auto`` (the default), are the automatic ones. A row's ``plan`` is the plan it ran under.

``flops_per_s`` uses the analytic count of ``zhang/runtime/flops.py`` (3 x forward);
``needed_flops_per_s`` leaves out the first layer's input gradient, which XLA never computes,
and is what ``xla_flops_per_step`` should agree with. ``fraction_of_matmul`` divides by the
best rate of a large ``jnp.dot`` timed in the same process just before and after each row (on
CPU the faster of the plan's two kernel sets). ``memory_bytes_per_s`` is the rate of an
elementwise pass over ``--memory_mb`` of fp32 timed after the row (the bandwidth
benchmarks/roofline.py takes). ``--up_to_memory`` doubles R after the listed rows while XLA's
estimate of the compiled chunk (``xla_memory_bytes``, checked before the row runs; the next
row's first predicted in proportion to R) stays within ``memory_limit_bytes``:
``--memory_fraction`` of the device's memory (GPU, TPU: the allocator's limit; CPU: physical
RAM). Every row skipped, and where the sweep stops, is said on stderr. Results:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zhang.errors import UsageError
from zhang.experiment import augment, models, randomize
from zhang.experiment import config as config_lib
from zhang.experiment import train as train_lib
from zhang.experiment.data import Dataset
from zhang.runtime import flops as flops_lib
from zhang.runtime import plan as plan_lib

DEFAULT_MODELS = ("mlp_1x512", "mlp_3x512")
AUTO = "auto"  # --plan value: every choice automatic


def is_conv(model: str) -> bool:
  return models.get(model).family == "conv"


def matmul_flops_per_s(n: int, repeats: int, dtype=jnp.float32) -> float:
  """Best rate of an (n, n) @ (n, n) product (fp32 by default), in FLOP/s. On CPU, the
  better of the plan's two kernel sets (``zhang/runtime/plan.py:COMPILER_OPTIONS``): a step may be
  compiled with either, and the reference should be the faster."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), dtype)
  b = jax.random.normal(keys[1], (n, n), dtype)
  kernel_sets = ([o for o in plan_lib.COMPILER_OPTIONS.values() if plan_lib.accepted(o)]
                 if jax.default_backend() == "cpu" else [{}])
  best = float("inf")
  for options in kernel_sets:
    dot = jax.jit(jnp.dot).lower(a, b).compile(dict(options) or None)
    dot(a, b).block_until_ready()
    for _ in range(repeats):
      t = time.perf_counter()
      dot(a, b).block_until_ready()
      best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def memory_bytes_per_s(n_bytes: int, repeats: int, passes: int = 10) -> float:
  """Best rate of elementwise passes over ``n_bytes`` of fp32 (each reads and writes them
  once), in bytes/s: the same-process reference for memory-bound work
  (benchmarks/roofline.py). The passes run in one loop, on one buffer: a fresh output per call
  would time the CPU's page faults instead of its memory."""
  x = jnp.ones((n_bytes // 4,), jnp.float32)
  scale = jax.jit(lambda x: jax.lax.fori_loop(
      0, passes, lambda i, x: x * 1.0001 + 0.5, x)).lower(x).compile()
  scale(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    scale(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * x.size * 4 * passes / best


def synthetic_dataset(n_train: int, input_shape, num_classes: int = 10) -> Dataset:
  """Random uint8 images and labels of the given shape (CIFAR-like, already cropped)."""
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, *input_shape), dtype=np.uint8)
  labels = lambda n: rng.integers(0, num_classes, n).astype(np.int32)
  return Dataset("synthetic", images(n_train), labels(n_train), images(256), labels(256),
                 num_classes)


def make_config(model: str, num_replicas: int, batch_size: int, mesh_shape=None,
                compute_dtype: str = "float32", kind: str = "labels",
                augmentation: str = "none"):
  """The resolved config of a grid of R replicas of one randomization ``kind`` (corruption
  0, seeds 0..R-1), each augmented by ``augmentation``."""
  c = config_lib.base_config()
  c.model = model
  c.augmentation = augmentation
  c.batch_size = batch_size
  c.compute_dtype = compute_dtype
  if mesh_shape is not None:
    c.mesh_shape = tuple(mesh_shape)
  c.grid = [dict(kinds=[kind], corruptions=[0.0], seeds=list(range(num_replicas)))]
  return config_lib.resolve(c)


def plan_arg(spec: str | None):
  """A ``--plan`` value as ``train.build`` takes it: None (automatic) or the plan string."""
  return None if spec in (None, "", AUTO) else spec


def setup(model: str, num_replicas: int, dataset: Dataset, batch_size: int,
          mesh_shape=None, plan: str | None = None, compute_dtype: str = "float32",
          kind: str = "labels", augmentation: str = "none"):
  """The trainer's own ``train.build`` for a grid of R replicas of one randomization ``kind``
  (p = 0, seeds 0..R-1), under ``plan`` (a ``--plan`` value; None: automatic).

  ``mesh_shape`` (replica, data) defaults to the config's, every device on ``replica``.
  Returns (program, data, constants, stacked TrainState).
  """
  c = make_config(model, num_replicas, batch_size, mesh_shape, compute_dtype, kind,
                  augmentation)
  return tuple(train_lib.build(c, config_lib.expand_grid(c), dataset,
                               plan=plan_arg(plan))[:4])


def compile_chunk(program, d, reps, states, steps: int):
  """Compiles ``program.train_chunk`` for ``steps`` steps. Returns (compiled, seconds)."""
  step0 = jnp.asarray(0, jnp.int32)
  num = jnp.asarray(steps, jnp.int32)
  t = time.perf_counter()
  compiled = program.train_chunk.lower(states, reps, d, step0, num).compile()
  return compiled, time.perf_counter() - t


def run_chunks(compiled, d, reps, states, steps: int, repeats: int, name: str = ""):
  """Runs a compiled chunk of ``steps`` steps once to warm up, then times ``repeats``
  chunks. Donates ``states``. Returns the per-chunk seconds."""
  num = jnp.asarray(steps, jnp.int32)
  states, loss = compiled(states, reps, d, jnp.asarray(0, jnp.int32), num)  # warm-up
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
  return times


def time_chunks(program, d, reps, states, steps: int, repeats: int, name: str = ""):
  """Compiles ``program.train_chunk`` for ``steps`` steps, runs it once to warm up, then
  times ``repeats`` chunks. Returns (compiled, compile seconds, per-chunk seconds)."""
  compiled, compile_s = compile_chunk(program, d, reps, states, steps)
  return compiled, compile_s, run_chunks(compiled, d, reps, states, steps, repeats, name)


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


def device_memory_bytes() -> int | None:
  """The first device's memory: the allocator's limit on GPU and TPU (None when it reports
  none), the machine's physical RAM on CPU."""
  if jax.default_backend() == "cpu":
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - not every backend answers
    stats = {}
  return int(stats["bytes_limit"]) if "bytes_limit" in stats else None


def _size(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.1f} {unit}"
    n /= 1024


class Prepared(NamedTuple):
  """One row, built and compiled but not yet run: what ``measure`` times."""
  model: str
  num_replicas: int
  dataset: Dataset
  batch_size: int
  steps: int
  compute_dtype: str
  kind: str  # the replicas' randomization (zhang/experiment/randomize.py)
  plan_asked: str  # the --plan value
  augmentation: str  # every replica's (zhang/experiment/augment.py)
  program: object
  d: object
  reps: object
  states: object
  compiled: object
  compile_s: float


def prepare(model: str, num_replicas: int, dataset: Dataset, batch_size: int, steps: int,
            plan: str | None = None, compute_dtype: str = "float32",
            kind: str = "labels", augmentation: str = "none") -> Prepared:
  """Builds the row's grid and compiles its chunk (``compile_chunk``), without running it."""
  program, d, reps, states = setup(model, num_replicas, dataset, batch_size, plan=plan,
                                   compute_dtype=compute_dtype, kind=kind,
                                   augmentation=augmentation)
  compiled, compile_s = compile_chunk(program, d, reps, states, steps)
  return Prepared(model, num_replicas, dataset, batch_size, steps, compute_dtype, kind,
                  plan or AUTO, augmentation, program, d, reps, states, compiled, compile_s)


def measure(prep: Prepared, repeats: int, matmul_rate: float,
            memory_limit: int | None = None) -> dict:
  """Times a prepared row (it donates the row's states) and returns its JSON row."""
  model, num_replicas, dataset, batch_size, steps = prep[:5]
  times = run_chunks(prep.compiled, prep.d, prep.reps, prep.states, steps, repeats, model)
  compiled = prep.compiled
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
      model=model, kind=prep.kind, augmentation=prep.augmentation, replicas=num_replicas,
      batch_size=batch_size,
      input_shape=list(shape), plan=str(prep.program.plan), plan_asked=prep.plan_asked,
      compute_dtype=prep.compute_dtype,
      n_train=len(dataset.train_labels), steps=steps, repeats=repeats,
      step_ms=round(best * 1e3, 3),
      step_ms_median=round(statistics.median(times) / steps * 1e3, 3),
      compile_s=round(prep.compile_s, 3),
      examples_per_s=round(num_replicas * batch_size / best, 1),
      flops_per_step=per_step, needed_flops_per_step=needed,
      xla_flops_per_step=xla_flops,
      flops_per_s=flops_per_s, needed_flops_per_s=needed / best,
      matmul_flops_per_s=matmul_rate,
      fraction_of_matmul=round(flops_per_s / matmul_rate, 4),
      needed_fraction_of_matmul=round(needed / best / matmul_rate, 4),
      **memory, memory_limit_bytes=memory_limit,
      backend=jax.default_backend(), device_kind=device.device_kind,
      jax_version=jax.__version__, cpu_count=os.cpu_count(),
      load_avg_1m=round(os.getloadavg()[0], 2))  # > cpu_count: others shared the machine


def replica_counts(listed, up_to_memory: bool):
  """(replicas, part of the sweep): the listed counts, then with ``up_to_memory`` doubles of
  the last, without end (the caller stops)."""
  yield from ((r, False) for r in listed)
  r = listed[-1]
  while up_to_memory:
    r *= 2
    yield r, True


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                 help=f"comma-separated names, or 'all' ({', '.join(models.names('images'))})")
  p.add_argument("--replicas", default="1,8", help="comma-separated replica counts")
  p.add_argument("--plan", action="append", default=None, metavar="PLAN",
                 help="an execution plan to time, as ZHANG_PLAN takes it, e.g. "
                 "replicas=map,gradients=jax (choices: " + "; ".join(
                     f"{k}={'|'.join(v)}" for k, v in plan_lib.CHOICES.items())
                 + "); repeat to compare; auto (the default): the automatic plan")
  p.add_argument("--steps", type=int, default=None,
                 help="steps per timed chunk (default 50 for MLPs, 2 for conv nets)")
  p.add_argument("--repeats", type=int, default=None, help="timed chunks (default 5)")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--n_train", type=int, default=2048)
  p.add_argument("--input_shape", default="28,28,3", help="H,W,C of the synthetic images")
  p.add_argument("--matmul_n", type=int, default=2048,
                 help="size of the reference matmul (8192 on a large GPU)")
  p.add_argument("--memory_mb", type=int, default=None,
                 help="MB of the reference elementwise pass (default 512; 16 with --quick)")
  p.add_argument("--quick", action="store_true", help="few steps and repeats (a smoke run)")
  p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--kind", default="labels",
                 help="the replicas' randomization: labels (the true labels; the default), "
                 "shuffled_pixels, random_pixels or gaussian (their inputs are made in the "
                 "step); comma-separated to compare")
  p.add_argument("--augmentation", default="none",
                 help="every replica's augmentation (zhang/experiment/augment.py), made in the "
                 "step: none (the default), crop, flip, color or several joined by '+', e.g. "
                 "crop+flip")
  p.add_argument("--max_seconds", type=float, default=None,
                 help="time budget: skip a row (said on stderr) once it would end past it, "
                 "predicted from the model's previous row")
  p.add_argument("--up_to_memory", action="store_true",
                 help="after the --replicas rows, keep doubling R while XLA's memory "
                 "estimate of the compiled chunk stays within --memory_fraction of the "
                 "device's memory (and R within --max_replicas, time within --max_seconds)")
  p.add_argument("--memory_fraction", type=float, default=0.8,
                 help="share of the device's memory (GPU/TPU: the allocator's limit; CPU: "
                 "physical RAM) that a row may take with --up_to_memory")
  p.add_argument("--max_replicas", type=int, default=4096,
                 help="largest R the --up_to_memory sweep tries")
  return p


def parse(argv=None) -> argparse.Namespace:
  """The command line, checked (a wrong model, plan or kind exits 2 with one line)."""
  p = parser()
  args = p.parse_args(argv)
  everything = args.models == "all"
  args.models = models.names("images") if everything else args.models.split(",")
  args.plan = args.plan or [AUTO]
  try:
    for name in args.models:
      models.get(name)
  except UsageError as err:
    p.error(str(err))
  for spec in args.plan:
    try:
      plan_lib.parse(plan_arg(spec))
    except UsageError as err:
      p.error(f"--plan {spec}: {str(err).removeprefix(plan_lib.ENV + ': ')}")
  args.kind = args.kind.split(",")
  for kind in args.kind:
    if kind not in randomize.KINDS:
      p.error(f"--kind {kind!r}: use {', '.join(randomize.KINDS)} (comma-separated)")
  try:
    augment.check_name(args.augmentation)
  except UsageError as err:
    p.error(f"--augmentation: {err}")
  args.replicas = [int(s) for s in args.replicas.split(",")]
  args.input_shape = tuple(int(s) for s in args.input_shape.split(","))
  if everything:  # those that take the input's size (inception_v3: 75x75 and up)
    args.models = [m for m in args.models if models.get(m).min_size <= min(args.input_shape[:2])]
  if not 0 < args.memory_fraction:
    p.error(f"--memory_fraction {args.memory_fraction}: must be positive")
  args.device_memory = device_memory_bytes()
  args.limit = (None if args.device_memory is None
                else int(args.memory_fraction * args.device_memory))
  if args.up_to_memory and args.limit is None:
    p.error(f"--up_to_memory: {jax.devices()[0].device_kind} reports no memory limit")
  return args


def rows(args: argparse.Namespace):
  """Yields the JSON rows of parsed ``args`` (``parse``), one per (model, plan, kind, R)."""
  dataset = synthetic_dataset(args.n_train, args.input_shape)
  repeats = args.repeats or (2 if args.quick else 5)
  mm_repeats = 3 if args.quick else 10
  memory_mb = args.memory_mb or (16 if args.quick else 512)
  limit = args.limit
  start = time.perf_counter()
  for name, spec, kind in [(n, s, k) for n in args.models for s in args.plan
                           for k in args.kind]:
    steps = args.steps or {(False, False): 50, (False, True): 10,
                           (True, False): 2, (True, True): 1}[is_conv(name), args.quick]
    previous = None  # (replicas, seconds that stay, seconds that grow with R): last row
    memory = None  # (replicas, XLA's estimate in bytes): the last row compiled
    for r, sweep in replica_counts(args.replicas, args.up_to_memory):
      # A listed row that does not fit is skipped; the sweep stops at the first.
      def give_up(reason: str, sweep=sweep, name=name, r=r, spec=spec) -> None:
        print(f"throughput: {'stopped' if sweep else 'skipped'} {name} R={r} plan {spec}: "
              f"{reason}", file=sys.stderr, flush=True)

      if sweep and r > args.max_replicas:
        give_up(f"above --max_replicas {args.max_replicas}")
        break
      t_row = time.perf_counter()
      if args.max_seconds is not None:
        # The timed steps are taken to grow linearly with R; compilation, setup and the
        # reference matmul to stay.
        guess = 0.0 if previous is None else previous[1] + previous[2] * r / previous[0]
        if t_row - start + guess > args.max_seconds:
          give_up(f"{t_row - start:.0f} s spent, about {guess:.0f} s more needed, budget "
                  f"{args.max_seconds:.0f} s")
          if sweep:
            break
          continue
      if sweep and memory is None:
        give_up("no memory estimate from XLA for an earlier row to go by")
        break
      if args.up_to_memory and memory is not None:
        # Taken as proportional to R: an over-estimate by the part that does not grow.
        predicted = memory[1] * r / memory[0]
        if predicted > limit:
          give_up(f"predicted {_size(predicted)} from R={memory[0]}'s {_size(memory[1])}, "
                  f"above the limit {_size(limit)} ({args.memory_fraction:g} of "
                  f"{_size(args.device_memory)})")
          if sweep:
            break
          continue
      prep = prepare(name, r, dataset, args.batch_size, steps, plan_arg(spec),
                     args.compute_dtype, kind, args.augmentation)
      if args.up_to_memory:
        estimate = _memory(prep.compiled).get("xla_memory_bytes")
        memory = None if estimate is None else (r, estimate)
        if estimate is not None and estimate > limit:
          give_up(f"XLA's estimate {_size(estimate)} is above the limit {_size(limit)} "
                  f"({args.memory_fraction:g} of {_size(args.device_memory)}); not run")
          del prep
          if sweep:
            break
          continue
      # On a shared machine the reference is timed on each side of the step and the faster
      # taken, so contention lowers the fraction rather than raising it.
      before = matmul_flops_per_s(args.matmul_n, mm_repeats)
      row = measure(prep, repeats, before, limit)
      del prep  # the row's device buffers, before the next row's are made
      after = matmul_flops_per_s(args.matmul_n, mm_repeats)
      if after > before:
        rate = row["flops_per_s"]
        row.update(matmul_flops_per_s=after, fraction_of_matmul=round(rate / after, 4),
                   needed_fraction_of_matmul=round(row["needed_flops_per_s"] / after, 4))
      row["memory_bytes_per_s"] = memory_bytes_per_s(memory_mb << 20, mm_repeats)
      if jax.default_backend() != "cpu":  # bf16 matmul units; CPU has none worth timing
        row["matmul_bf16_flops_per_s"] = matmul_flops_per_s(args.matmul_n, mm_repeats,
                                                            jnp.bfloat16)
      yield row
      wall = time.perf_counter() - t_row
      grows = min(row["step_ms_median"] / 1e3 * steps * (repeats + 1), wall)  # + warm-up
      previous = (r, wall - grows, grows)


def main(argv=None) -> None:
  for row in rows(parse(argv)):
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
