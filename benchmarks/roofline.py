"""How fast a measured train step could be: its FLOPs against its unavoidable memory traffic.

  python benchmarks/roofline.py benchmarks/results/h200_2026-11-28/throughput_*.jsonl \
      --bandwidth_gbps 4800
  python benchmarks/roofline.py OUT/device_check.json   # rows with a measured bandwidth

For every throughput row (benchmarks/throughput.py's JSON lines, or benchmarks/device_check.py's
JSON) it counts, per step:

  FLOPs       the row's ``flops_per_step`` (3 x forward; zhang/runtime/flops.py).
  state       the bytes the SGD-momentum step must move for the parameters, however well it
              is fused: the forward reads the weights (1 pass), the backward writes their
              gradient (1), the update reads weights, gradient and momentum and writes weights
              and momentum (5): 7 passes over the fp32 parameters of every replica. An update
              fused into the weight-gradient product would skip writing and re-reading the
              gradient: 5 passes (``--state_passes``).
  layers      a lower bound on the activations' traffic: each Dense or Conv layer reads its
              input and writes its output in the forward pass; the backward reads both again
              (input for the weight gradient, output gradient for both gradients) and writes
              the input gradient (not for the first layer). Everything between layers
              (activations, pooling, normalization) is taken as fused into them: free.
              Bytes per element from the row's ``compute_dtype``. (compute_dtype=bfloat16
              also casts the fp32 weights every step; that traffic is not counted.)

and from these, at the row's own matrix-product rate (``matmul_flops_per_s``, measured in the
same process) and memory bandwidth: ``--bandwidth_gbps`` where given, else the row's
``memory_bytes_per_s`` (an elementwise pass timed in the same process; the oldest rows have
none):

  floor_ms    max(FLOPs / matmul rate, bytes / bandwidth): the step if compute and memory
              overlapped perfectly.
  best        FLOPs / floor / matmul rate: the highest fraction of the matmul rate a step can
              reach. ``fraction_of_matmul`` is the row's measured one.
  of_floor    floor / measured step: how close the measured step is to its floor.

Prints a markdown table; ``--json`` writes the same numbers. The parameter and layer shapes
come from tracing each model abstractly (jax.eval_shape) on the row's input shape.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from estimate_fig1b import load_rows, row_plan  # noqa: E402  (this folder's row reader)

from zhang.experiment import models  # noqa: E402
from zhang.runtime import flops as flops_lib  # noqa: E402

BYTES = {"float32": 4, "bfloat16": 2}


@functools.lru_cache(maxsize=None)
def shapes(model: str, input_shape: tuple[int, ...], num_classes: int = 10):
  """(parameters of one replica, [(input elements, output elements) per layer] per example)."""
  module = models.get(model).build(num_classes)
  x = jnp.zeros((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
  params = sum(math.prod(a.shape) for a in jax.tree.leaves(variables["params"]))
  layers = [(math.prod(layer.in_shape), math.prod(layer.out_shape))
            for layer in flops_lib.layers(module, input_shape)]
  return params, layers


def traffic(model: str, input_shape, batch_size: int, replicas: int,
            compute_dtype: str = "float32", state_passes: int = 7) -> dict:
  """Bytes one train step of ``replicas`` replicas must move (module docstring)."""
  params, layers = shapes(model, tuple(input_shape))
  state = state_passes * 4 * params * replicas
  elements = sum(2 * i + 2 * o + (i if k else 0) for k, (i, o) in enumerate(layers))
  activations = BYTES[compute_dtype] * elements * batch_size * replicas
  return dict(params_per_replica=params, state_bytes=state, layer_bytes=activations,
              bytes=state + activations)


def analyse(row: dict, bandwidth: float | None = None, state_passes: int = 7) -> dict:
  """The row against its floor; ``bandwidth`` (bytes/s) None: the row's measured one."""
  measured = bandwidth is None
  if measured:
    bandwidth = row["memory_bytes_per_s"]
  t = traffic(row["model"], row["input_shape"], row["batch_size"], row["replicas"],
              row.get("compute_dtype", "float32"), state_passes)
  matmul = row["matmul_flops_per_s"]
  compute_s = row["flops_per_step"] / matmul
  memory_s = t["bytes"] / bandwidth
  floor_s = max(compute_s, memory_s)
  step_s = row["step_ms_median"] / 1e3
  return dict(
      model=row["model"], replicas=row["replicas"], batch_size=row["batch_size"],
      plan=row_plan(row), compute_dtype=row.get("compute_dtype", "float32"),
      device_kind=row.get("device_kind"), **t, flops=row["flops_per_step"],
      bandwidth_bytes_per_s=bandwidth, bandwidth_measured=measured,
      compute_ms=compute_s * 1e3, memory_ms=memory_s * 1e3, floor_ms=floor_s * 1e3,
      bound="memory" if memory_s > compute_s else "compute",
      step_ms=row["step_ms_median"], best_fraction=row["flops_per_step"] / floor_s / matmul,
      fraction_of_matmul=row["fraction_of_matmul"], of_floor=floor_s / step_s)


def markdown(results: list[dict], bandwidth: float | None, state_passes: int) -> str:
  said = (f"{bandwidth / 1e9:,.0f} GB/s (given)" if bandwidth else
          "each row's own (measured, GB/s in the table)")
  lines = [f"Bandwidth {said}; parameter state {state_passes} passes; matmul rate: each "
           "row's own.", "",
           "| model | R | plan / dtype | GB/s | state MB | layers MB | compute ms "
           "| memory ms | floor ms (bound) | step ms | best fraction | measured fraction "
           "| of floor |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    lines.append(
        f"| {r['model']} | {r['replicas']} | {r['plan']} / {r['compute_dtype']} | "
        f"{r['bandwidth_bytes_per_s'] / 1e9:,.0f} | "
        f"{r['state_bytes'] / 1e6:,.1f} | {r['layer_bytes'] / 1e6:,.1f} | "
        f"{r['compute_ms']:.3f} | {r['memory_ms']:.3f} | {r['floor_ms']:.3f} ({r['bound']}) | "
        f"{r['step_ms']:.3f} | {r['best_fraction']:.3f} | {r['fraction_of_matmul']:.3f} | "
        f"{r['of_floor']:.2f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("rows", nargs="+", help="throughput.py JSON-lines files")
  p.add_argument("--bandwidth_gbps", type=float, default=None,
                 help="memory bandwidth in GB/s (default: each row's measured "
                      "memory_bytes_per_s; the H200's specification is 4800)")
  p.add_argument("--state_passes", type=int, default=7,
                 help="passes over the fp32 parameters per step (7; 5 with a fused update)")
  p.add_argument("--models", default=None, help="only these models (comma-separated)")
  p.add_argument("--json", default=None, help="also write the numbers here")
  args = p.parse_args(argv)
  if (args.bandwidth_gbps is not None and args.bandwidth_gbps <= 0) or args.state_passes < 1:
    p.error("--bandwidth_gbps must be positive and --state_passes at least 1")
  for path in args.rows:
    if not pathlib.Path(path).is_file():
      p.error(f"{path}: no such file (throughput.py writes these rows)")
  rows = [r for r in load_rows(args.rows)
          if "matmul_flops_per_s" in r and "flops_per_step" in r]
  if args.models:
    wanted = args.models.split(",")
    rows = [r for r in rows if r["model"] in wanted]
  if not rows:
    p.error("no throughput rows in the files given (for the models asked)")
  bandwidth = args.bandwidth_gbps * 1e9 if args.bandwidth_gbps else None
  if bandwidth is None and any("memory_bytes_per_s" not in r for r in rows):
    p.error("some rows have no measured memory_bytes_per_s (from an older throughput.py): "
            "give the device's bandwidth with --bandwidth_gbps")
  results = [analyse(r, bandwidth, args.state_passes) for r in rows]
  print(markdown(results, bandwidth, args.state_passes))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
  sys.exit(main())
