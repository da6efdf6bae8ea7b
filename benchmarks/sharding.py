"""Train-step throughput of a fixed replica grid sharded over 1, 2, 4 and 8 (fake) devices.

  python benchmarks/sharding.py   # mlp_1x512 R=8 batch 128, inception_small R=8 batch 2
  python benchmarks/sharding.py --quick         # fewer steps, repeats and rounds
  python benchmarks/sharding.py --plan replicas=vmap   # one execution plan for every count

inception_small keeps a small default batch (2) and 1 step per chunk so that 4 device counts
fit in minutes on 2 cores.

The parent starts one fresh subprocess of this script per (round, device count), with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` appended to any existing XLA_FLAGS and
``JAX_PLATFORMS=cpu`` (the flag must be set before JAX initializes, hence the subprocess).
Each child builds the grid with the trainer's own ``train.build`` on a mesh of shape (D, 1),
every device on the ``replica`` axis, so each device holds R/D replicas, and times
``train_chunk`` with ``benchmarks/throughput.py``'s functions. Device counts are run in
alternating order over ``--rounds`` rounds; the parent prints one JSON object per
(model, devices): ``step_ms`` is the median over rounds of each child's median chunk,
``step_ms_best`` the fastest chunk seen, and ``overhead_vs_1_device`` is ``step_ms`` with D
devices over ``step_ms`` with 1 device (the same ratio holds per replica, R being fixed);
``per_replica_overhead_ms`` is the extra step time per replica, (step(D) - step(1)) / R;
``plan`` is the execution plan the children ran under (``zhang/runtime/plan.py``; it depends on the
replicas per device).

The fake devices all share the host's cores: with 8 devices on 2 cores there is no more
compute than with 1, so this measures the *cost* of the sharded program (partitioning, the
per-device thread scheduling, collectives such as the gathered loss), not a speed-up. A
ratio near 1 means sharding is free; above 1, what it costs. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_MODELS = ("mlp_1x512", "inception_small")
COUNT_FLAG = "--xla_force_host_platform_device_count"


def child_env(devices: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(COUNT_FLAG)]
  env["XLA_FLAGS"] = " ".join(flags + [f"{COUNT_FLAG}={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
  return env


def run_child(args) -> None:
  """Times every model on this process's devices; prints one JSON object per model."""
  import jax

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import throughput

  if jax.device_count() != args.devices:
    raise RuntimeError(f"expected {args.devices} devices, JAX sees {jax.device_count()} "
                       f"(XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")
  shape = tuple(int(s) for s in args.input_shape.split(","))
  dataset = throughput.synthetic_dataset(args.n_train, shape)
  for name, replicas, batch, steps in _grids(args):
    mesh_shape = (args.devices, 1)
    program, d, reps, states = throughput.setup(name, replicas, dataset, batch, mesh_shape,
                                                plan=args.plan)
    padded = int(jax.tree.leaves(states)[0].shape[0])
    _, compile_s, times = throughput.time_chunks(program, d, reps, states, steps,
                                                 args.repeats, name)
    print(json.dumps(dict(
        model=name, devices=args.devices, replicas=replicas, padded_replicas=padded,
        plan=str(program.plan),
        mesh_shape=list(mesh_shape), batch_size=batch, steps=steps,
        chunk_s=[round(t, 5) for t in times], compile_s=round(compile_s, 3),
        load_avg_1m=round(os.getloadavg()[0], 2))), flush=True)


def _grids(args):
  """(model, replicas, batch size, steps per chunk) for each model."""
  from zhang.experiment import models

  for name in args.models.split(","):
    conv = models.get(name).family == "conv"
    replicas = args.conv_replicas if conv else args.replicas
    batch = args.conv_batch_size if conv else args.batch_size
    steps = args.steps or {(False, False): 20, (False, True): 5,
                           (True, False): 1, (True, True): 1}[conv, args.quick]
    yield name, replicas, batch, steps


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated names")
  p.add_argument("--devices", default="1,2,4,8", help="comma-separated fake device counts "
                 "(in the child: this process's count)")
  p.add_argument("--replicas", type=int, default=8, help="replicas of an MLP (fixed total)")
  p.add_argument("--conv_replicas", type=int, default=8, help="replicas of a conv net")
  p.add_argument("--batch_size", type=int, default=128, help="batch of an MLP")
  p.add_argument("--conv_batch_size", type=int, default=2,
                 help="batch of a conv net (small: conv nets are slow on CPU)")
  p.add_argument("--steps", type=int, default=None,
                 help="steps per timed chunk (default 20 for MLPs, 1 for conv nets)")
  p.add_argument("--repeats", type=int, default=None, help="timed chunks per child (default 5)")
  p.add_argument("--rounds", type=int, default=None,
                 help="sweeps over the device counts, alternating order (default 2)")
  p.add_argument("--n_train", type=int, default=2048)
  p.add_argument("--input_shape", default="28,28,3", help="H,W,C of the synthetic images")
  p.add_argument("--plan", default="auto",
                 help="the execution plan, as ZHANG_PLAN takes it (e.g. replicas=vmap); "
                 "auto: the automatic plan (see benchmarks/throughput.py --help)")
  p.add_argument("--quick", action="store_true", help="few steps, repeats, one round")
  p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.repeats = args.repeats or (2 if args.quick else 5)
  rounds = args.rounds or (1 if args.quick else 2)

  if args._child:
    args.devices = int(args.devices)
    run_child(args)
    return

  counts = [int(s) for s in args.devices.split(",")]
  for name, replicas, _, _ in _grids(args):
    for dc in counts:
      if replicas % dc:
        print(f"note: {name} R={replicas} is padded to a multiple of {dc} devices; "
              f"the padded replicas are timed too", file=sys.stderr)
  rows = {}  # (model, devices) -> list of child rows
  for r in range(rounds):
    for dc in (counts if r % 2 == 0 else counts[::-1]):
      cmd = [sys.executable, os.path.abspath(__file__), "--_child", "--devices", str(dc)]
      for k in ("models", "replicas", "conv_replicas", "batch_size", "conv_batch_size",
                "steps", "repeats", "n_train", "input_shape", "plan"):
        v = getattr(args, k)
        if v is not None:
          cmd += [f"--{k}", str(v)]
      if args.quick:
        cmd.append("--quick")
      out = subprocess.run(cmd, env=child_env(dc), stdout=subprocess.PIPE, text=True,
                           check=True).stdout
      for line in out.splitlines():
        if line.startswith("{"):
          row = json.loads(line)
          rows.setdefault((row["model"], dc), []).append(row)

  def step_of(runs):  # median over rounds of each child's median chunk, per step
    return statistics.median(statistics.median(x["chunk_s"]) / x["steps"] for x in runs)

  for name, _, _, _ in _grids(args):
    base = step_of(rows[name, 1]) if (name, 1) in rows else None
    for dc in sorted(counts):
      runs = rows[name, dc]
      medians = [statistics.median(x["chunk_s"]) / x["steps"] for x in runs]
      best = min(min(x["chunk_s"]) / x["steps"] for x in runs)
      step = step_of(runs)
      first = runs[0]
      out = dict(
          model=name, devices=dc, replicas=first["replicas"],
          padded_replicas=first["padded_replicas"], mesh_shape=first["mesh_shape"],
          plan=first["plan"],
          batch_size=first["batch_size"], steps=first["steps"], repeats=args.repeats,
          rounds=len(runs),
          examples_per_s=round(first["replicas"] * first["batch_size"] / step, 1),
          step_ms=round(step * 1e3, 3), step_ms_best=round(best * 1e3, 3),
          step_ms_rounds=[round(m * 1e3, 3) for m in medians],
          per_replica_step_ms=round(step / first["replicas"] * 1e3, 3),
          compile_s=round(statistics.median(x["compile_s"] for x in runs), 3),
          overhead_vs_1_device=round(step / base, 3) if base else None,
          per_replica_overhead_ms=(round((step - base) / first["replicas"] * 1e3, 3)
                                   if base else None),
          load_avg_1m=round(statistics.median(x["load_avg_1m"] for x in runs), 2),
          load_avg_1m_rounds=[x["load_avg_1m"] for x in runs],
          cpu_count=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
      print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
