"""The streaming input path's train-step rate against the in-memory path's, in one process.

  python benchmarks/stream.py                                # configs/digits.py's grid
  python benchmarks/stream.py --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,quick

Prints one JSON object. Both paths train the config's grid with one shared batch order
(``batch_order="shared"``), so they compute the same steps: ``train_chunk`` gathering its
batches from the training set on the device, and ``stream_chunk`` on batches that the grain
pipeline (``zhang.experiment.stream``, in this process, no workers) reads and the loop's
``feed.Feed`` puts on the device, a call's ``capacity`` steps at a time. The streaming time
includes what a run waits for of the host's reading and the transfer: as in the training
loop, the next call's batches are read and put on the device (``feed.Feed.prepare``) while a
call runs, and ``host_share`` is the part of a call spent waiting for them. Calls of
``capacity`` steps, alternated in-memory / streaming ``--repeats`` times after a compiling
call of each; ``ratio`` is the streaming path's steps per second over the in-memory path's
(best calls).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from zhang.errors import UsageError  # noqa: E402
from zhang.experiment import config as config_lib  # noqa: E402
from zhang.experiment import feed as feed_lib  # noqa: E402
from zhang.experiment import train  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def measure(spec: str, repeats: int) -> dict:
  config = config_lib.load(spec)
  config.batch_order, config.stream = "shared", True
  config = config_lib.resolve(config)
  replicas = config_lib.expand_grid(config)
  dataset = train.load_dataset(config)
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  mesh = reps.learning_rate.sharding.mesh
  feed = feed_lib.for_dataset(config, dataset, program.settings.augmentations, mesh, 0)
  k = feed.capacity
  loss = jnp.zeros(reps.learning_rate.shape, jnp.float32)
  step = 0

  def in_memory():
    nonlocal states, loss
    t0 = time.perf_counter()
    states, loss = program.train_chunk(states, reps, d, jnp.asarray(step, jnp.int32),
                                       jnp.asarray(k, jnp.int32), loss)
    np.asarray(loss)
    return time.perf_counter() - t0, 0.0

  def streaming():  # as the training loop calls it: the next call's batches put meanwhile
    nonlocal states, loss
    t0 = time.perf_counter()
    batches = feed.next(k)
    jax.block_until_ready(batches)
    host = time.perf_counter() - t0
    states, loss = program.stream_chunk(states, reps, d, batches,
                                        jnp.asarray(step, jnp.int32),
                                        jnp.asarray(k, jnp.int32), loss)
    feed.prepare()
    np.asarray(loss)
    return time.perf_counter() - t0, host

  t0 = time.perf_counter()
  in_memory()
  compile_memory = time.perf_counter() - t0
  t0 = time.perf_counter()
  streaming()
  compile_stream = time.perf_counter() - t0
  mem, stream, host = [], [], []
  for _ in range(repeats):
    mem.append(in_memory()[0])
    s, h = streaming()
    stream.append(s)
    host.append(h)
  best_mem, best_stream = min(mem), min(stream)
  return dict(
      config=spec, model=config.model, dataset=config.dataset, replicas=len(replicas),
      batch_size=config.batch_size, steps_per_call=k, repeats=repeats,
      in_memory_step_ms=round(best_mem / k * 1e3, 3),
      stream_step_ms=round(best_stream / k * 1e3, 3),
      ratio=round(best_mem / best_stream, 3),
      host_share=round(float(np.median(host)) / float(np.median(stream)), 3),
      first_calls_s=dict(in_memory=round(compile_memory, 2), stream=round(compile_stream, 2)),
      backend=jax.default_backend(), cpu_count=os.cpu_count(),
      load_avg_1m=round(os.getloadavg()[0], 2))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/digits.py")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  path = args.config.split(".py:")[0].removesuffix(".py") + ".py"
  if not pathlib.Path(path).exists() and (ROOT / path).exists():
    args.config = str(ROOT / args.config)
  try:
    if args.repeats < 1:
      raise UsageError("--repeats must be at least 1")
    print(json.dumps(measure(args.config, args.repeats)), flush=True)
  except UsageError as e:
    print(f"benchmarks/stream.py: {e}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
  main()
