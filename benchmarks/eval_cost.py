"""What tracking per-example fit times adds to an evaluation, in the same process.

  python benchmarks/eval_cost.py                                     # configs/digits.py
  python benchmarks/eval_cost.py \
      --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,n_train=4000 --repeats 5

Builds the config's grid as ``zhang train`` does and times, alternately, the evaluation
without (``evaluate``) and with (``evaluate_and_track``: the same pass, plus the update of
every training example's fit step on the devices) the per-example fit times, ``--repeats``
times each after a compiling call. Prints one JSON object: the median seconds of each and
their ratio (``track_over_plain``), which is the cost of the fit times (the other evaluation
fields, clean and noisy accuracies and calibration, are in both).

Beside them, the known work: ``eval_flops``, the analytic FLOPs of one evaluation (every
replica's forward pass over its training and test sets, ``zhang/runtime/flops.py``), and the
best rate of an (N, N) fp32 matmul (``--matmul_n``) timed in the same process before and
after. An evaluation cannot run its FLOPs faster than that matmul (``*_fraction_of_matmul``
<= 1): a time that says so did not wait for the work.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from throughput import matmul_flops_per_s  # noqa: E402

from zhang.experiment import config as config_lib  # noqa: E402
from zhang.experiment import models, train  # noqa: E402
from zhang.runtime import flops as flops_lib  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--matmul_n", type=int, default=1024, help="the reference matmul's size")
  args = parser.parse_args()
  config = config_lib.resolve(config_lib.load(args.config))
  replicas = config_lib.expand_grid(config)
  dataset = train.load_dataset(config)
  matmul_before = matmul_flops_per_s(args.matmul_n, 3)
  times = time_evaluations(config, replicas, dataset, args.repeats)
  matmul = max(matmul_before, matmul_flops_per_s(args.matmul_n, 3))
  med = {k: statistics.median(v) for k, v in times.items()}
  module = models.get(config.model).build(dataset.num_classes)
  eval_flops = len(replicas) * (len(dataset.train_labels) + len(dataset.test_labels)) * (
      flops_lib.forward_flops(module, dataset.image_shape))
  print(json.dumps(dict(
      config=args.config, model=config.model, replicas=len(replicas),
      n_train=len(dataset.train_labels), n_test=len(dataset.test_labels),
      backend=jax.default_backend(), repeats=args.repeats,
      plain_seconds=round(med["plain"], 5), track_seconds=round(med["track"], 5),
      track_over_plain=round(med["track"] / med["plain"], 4),
      eval_flops=eval_flops, matmul_n=args.matmul_n, matmul_flops_per_s=matmul,
      plain_fraction_of_matmul=round(eval_flops / med["plain"] / matmul, 4),
      track_fraction_of_matmul=round(eval_flops / med["track"] / matmul, 4),
      plain_all=[round(t, 5) for t in times["plain"]],
      track_all=[round(t, 5) for t in times["track"]])))


def time_evaluations(config, replicas, dataset, repeats: int) -> dict[str, list[float]]:
  """Seconds of each of ``repeats`` calls of the evaluation without (``plain``) and with
  (``track``) the fit times, alternated, after a compiling call of each."""
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  fit = jax.jit(lambda labels: jnp.full(labels.shape, -1, jnp.int32),
                out_shardings=reps.labels.sharding)(reps.labels)
  step = jnp.asarray(0, jnp.int32)

  def plain():
    jax.block_until_ready(program.evaluate(states, reps, d))

  def track():
    nonlocal fit
    out, fit = program.evaluate_and_track(states, reps, d, fit, step)
    jax.block_until_ready((out, fit))

  times = {"plain": [], "track": []}
  plain(), track()  # compile
  for _ in range(repeats):
    for name, fn in (("plain", plain), ("track", track)):
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return times


if __name__ == "__main__":
  main()
