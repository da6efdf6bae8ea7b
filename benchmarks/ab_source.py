"""A/B of source edits to a zhang module: the trainer's step, variants timed in one process.

Run (2-core CPU; a few minutes for a conv net at batch 128):

  python benchmarks/ab_source.py --model inception_small --batch_size 128 --steps 2 \
      --variant 'pairs=dy_as_batch = (sh, sw) == (1, 1) and dy.shape[3] < x.shape[3]>>>dy_as_batch = False' \
      --variant current

This machine's speed drifts by 10-20% within minutes (benchmarks/RESULTS.md), more than many
changes worth making. Timing each variant in its own process, minutes apart, cannot tell
such changes from the drift. Here every variant is compiled first. Then the variants take
turns, one chunk each per round, so that each round compares them within seconds.

``--variant NAME=OLD>>>NEW`` replaces the text OLD (which must occur in ``--module``'s source;
``\\n`` stands for a newline) by NEW, re-executes the module in place and builds the grid with
``throughput.setup``. ``--variant NAME`` alone is the source as it is. Only code that reads
the module's globals at trace time sees the edit. ``zhang.layers``, ``zhang.data`` and
``zhang.step`` are read that way. Prints one JSON line per variant: best and median ms per step,
and every round.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import pathlib
import time

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import throughput  # noqa: E402  (this folder's benchmark helpers)
from zhang import randomize  # noqa: E402


def variant(spec: str, source: str) -> tuple[str, str]:
  """(name, edited source) of ``NAME`` or ``NAME=OLD>>>NEW``."""
  name, sep, edit = spec.partition("=")
  if not sep:
    return name, source
  old, arrow, new = edit.partition(">>>")
  if not arrow:
    raise SystemExit(f"ab_source: --variant {spec!r}: write NAME=OLD>>>NEW, or NAME alone")
  old, new = (s.replace("\\n", "\n") for s in (old, new))
  count = source.count(old)
  if count != 1:
    raise SystemExit(f"ab_source: --variant {name}: the text to replace occurs {count} times "
                     "in the module's source, not once; quote more of it")
  return name, source.replace(old, new)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--module", default="zhang.layers")
  p.add_argument("--variant", action="append", required=True,
                 help="NAME (the source as it is) or NAME=OLD>>>NEW; two or more")
  p.add_argument("--model", default="inception_small")
  p.add_argument("--replicas", type=int, default=1)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--steps", type=int, default=2, help="steps per timed chunk")
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--input_shape", default="28,28,3")
  p.add_argument("--kind", default="labels", choices=randomize.KINDS,
                 help="the replicas' randomization (throughput.py --kind)")
  args = p.parse_args(argv)

  module = importlib.import_module(args.module)
  source = inspect.getsource(module)
  variants = dict(variant(spec, source) for spec in args.variant)
  if len(variants) < 2:
    raise SystemExit("ab_source: give two or more --variant with different names")
  shape = tuple(int(v) for v in args.input_shape.split(","))
  dataset = throughput.synthetic_dataset(max(512, args.batch_size), shape)
  num = jnp.asarray(args.steps, jnp.int32)
  built = {}
  try:
    for name, text in variants.items():
      exec(compile(text, module.__file__, "exec"), module.__dict__)  # noqa: S102
      fns, d, reps, states = throughput.setup(args.model, args.replicas, dataset,
                                              args.batch_size, kind=args.kind)
      compiled, compile_s = throughput.compile_chunk(fns, d, reps, states, args.steps)
      states, loss = compiled(states, reps, d, jnp.asarray(0, jnp.int32), num)  # warm-up
      loss.block_until_ready()
      built[name] = [compiled, d, reps, states, compile_s]
  finally:  # the module as it is again, for whoever imports it next in this process
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102
  times = {name: [] for name in built}
  for _ in range(args.rounds):
    for name, entry in built.items():
      compiled, d, reps, states, _ = entry
      t = time.perf_counter()
      states, loss = compiled(states, reps, d, num, num)
      loss.block_until_ready()
      times[name].append((time.perf_counter() - t) / args.steps * 1e3)
      entry[3] = states
  for name, ms in times.items():
    print(json.dumps({"variant": name, "module": args.module, "model": args.model,
                      "kind": args.kind, "input_shape": list(shape),
                      "replicas": args.replicas, "batch_size": args.batch_size,
                      "steps": args.steps, "best_ms": round(min(ms), 2),
                      "median_ms": round(float(np.median(ms)), 2),
                      "rounds_ms": [round(v, 2) for v in ms],
                      "compile_s": round(built[name][4], 2)}), flush=True)


if __name__ == "__main__":
  main()
