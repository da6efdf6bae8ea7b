"""The modular-addition grid's train-step rate, against the same process's fp32 matmul rate.

  python benchmarks/modadd.py                                   # configs/modadd.py's default
  python benchmarks/modadd.py --config configs/modadd.py:quick
  python benchmarks/modadd.py \
      --config configs/modadd.py:model=transformer_1l,modulus=113,train_fraction=0.3 \
      --steps 2 --repeats 2                                     # Nanda et al.'s setting

Prints one JSON object. The timed program is the trainer's own ``train_chunk`` for the
config's whole grid (every replica in one program, full-batch AdamW on the real ``modadd``
split), built by ``train.build`` as ``zhang train`` builds it; evaluation and checkpoints
are left out (``eval_share`` in a run's summary.json says what they add: about 1%).

``flops_per_step`` is the analytic count of ``zhang/runtime/flops.py`` (3 x forward of the Dense
and attention projections, every replica); ``xla_flops_per_step`` is XLA's own estimate of
the compiled step (which counts a loop's body once: under a plan that loops over the
replicas, ``replicas=map``, one replica's, multiplied here by the replicas).
``fraction_of_matmul`` divides the analytic rate by the best rate of an (N, N) fp32
``jnp.dot`` (``--matmul_n``) timed in the same process just before and after the row.
``run_seconds_estimate`` is ``max_steps`` x the median step time (a run's training time is a
sum of its calls, so the median rather than the best): what the config's training takes,
less compilation, evaluation and checkpoints. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from throughput import compile_chunk, matmul_flops_per_s, run_chunks  # noqa: E402

from zhang.errors import UsageError  # noqa: E402
from zhang.experiment import config as config_lib  # noqa: E402
from zhang.experiment import models
from zhang.experiment import train as train_lib  # noqa: E402
from zhang.runtime import flops as flops_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "configs/modadd.py"  # relative to the repository root, or to the cwd


def row(spec: str, steps: int, repeats: int, matmul_n: int, matmul_repeats: int) -> dict:
  config = config_lib.resolve(config_lib.load(spec))
  replicas = config_lib.expand_grid(config)
  dataset = train_lib.load_dataset(config)
  program, d, reps, states = train_lib.build(config, replicas, dataset)[:4]
  compiled, compile_s = compile_chunk(program, d, reps, states, steps)
  before = matmul_flops_per_s(matmul_n, matmul_repeats)
  times = run_chunks(compiled, d, reps, states, steps, repeats, config.model)
  after = matmul_flops_per_s(matmul_n, matmul_repeats)
  matmul = max(before, after)

  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  xla = float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None
  if xla is not None and program.plan.replicas == "map":
    xla *= len(replicas)  # XLA counts a loop's body once: here, one replica's step
  module = models.get(config.model).build(dataset.num_classes)
  per_step = len(replicas) * flops_lib.train_flops(module, dataset.image_shape,
                                                   config.batch_size)
  best, median = min(times) / steps, statistics.median(times) / steps
  return dict(
      config=spec, model=config.model, modulus=config.modulus,
      train_fraction=config.train_fraction, n_train=len(dataset.train_labels),
      batch_size=config.batch_size, replicas=len(replicas), plan=str(program.plan),
      steps=steps, repeats=repeats, step_ms=round(best * 1e3, 3),
      step_ms_median=round(median * 1e3, 3),
      replica_steps_per_s=round(len(replicas) / best, 2), compile_s=round(compile_s, 2),
      flops_per_step=per_step, xla_flops_per_step=xla, flops_per_s=per_step / best,
      matmul_n=matmul_n, matmul_flops_per_s=matmul, matmul_before=before,
      matmul_after=after, fraction_of_matmul=round(per_step / best / matmul, 4),
      max_steps=config.max_steps, run_seconds_estimate=round(config.max_steps * median, 1),
      backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
      jax_version=jax.__version__, cpu_count=os.cpu_count(),
      load_avg_1m=round(os.getloadavg()[0], 2))  # > cpu_count: others shared the machine


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=DEFAULT_CONFIG,
                 help="a modadd config, path.py[:ARGS] (default configs/modadd.py)")
  p.add_argument("--steps", type=int, default=20, help="steps per timed chunk")
  p.add_argument("--repeats", type=int, default=3, help="timed chunks (after one warm-up)")
  p.add_argument("--matmul_n", type=int, default=2048, help="the reference matmul's size")
  p.add_argument("--matmul_repeats", type=int, default=5)
  args = p.parse_args(argv)
  path = args.config.split(".py:")[0].removesuffix(".py") + ".py"
  if not pathlib.Path(path).exists() and (ROOT / path).exists():
    args.config = str(ROOT / args.config)
  try:
    if args.steps < 1 or args.repeats < 1:
      raise UsageError("--steps and --repeats must be at least 1")
    config = config_lib.load(args.config)
    if config.dataset != "modadd":
      raise UsageError(f"{args.config} trains on {config.dataset}, not modadd: "
                       f"benchmarks/throughput.py times image grids")
    print(json.dumps(row(args.config, args.steps, args.repeats, args.matmul_n,
                         args.matmul_repeats)), flush=True)
  except UsageError as e:
    print(f"benchmarks/modadd.py: {e}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
  main()
