"""Where a train step's time goes: XLA ops of the trainer's compiled chunk, by time.

  python benchmarks/profile_step.py --model inception_small --batch_size 32
  python benchmarks/profile_step.py --model alexnet_small --batch_size 128 --plan gradients=jax
  python benchmarks/profile_step.py --model inception_small --batch_size 128 \
      --plan cpu_kernels=default
  python benchmarks/profile_step.py --model mlp_1x512 --input_shape 8,8,1 --replicas 15 \
      --batch_size 128 --steps 100
  python benchmarks/profile_step.py --model mlp_1x512 --input_shape 28,28,1 --replicas 4 \
      --batch_size 128 --steps 20 --kind random_pixels

Builds the grid as ``benchmarks/throughput.py`` does (synthetic images, 28x28x3 unless
``--input_shape`` says otherwise; R replicas of ``--kind``, ``labels`` unless said; the
automatic execution plan unless ``--plan`` says otherwise), runs one
chunk to warm up, traces one more with ``jax.profiler`` and reads the trace back
(``jax.profiler.ProfileData``). Prints the step time, the time per op kind (fusion names
without their numeric suffix) and the slowest convolutions and dots with their
shapes and dimension labels from the compiled HLO. Per step: the traced chunk's times divided
by its steps. Op times are summed over threads, so on several cores they can add up to more
than the step. With Eigen's convolutions (``cpu_kernels=eigen``, what conv nets get on CPU)
the trace shows only their dispatch: compare ``--plan cpu_kernels=default`` for a per-op view.

On a GPU (or TPU) only the device's own timeline counts: each kernel is charged to the HLO op
it ran for (its ``hlo_op`` stat), and a table of the kernels themselves follows, which says
which convolution algorithms cuDNN picked. On GPU, XLA runs sequences of kernels as CUDA
graphs ("command buffers"), whose kernels the profiler cannot charge to HLO ops; this script
turns them off (``--xla_gpu_enable_command_buffer=``, unless XLA_FLAGS sets it), so its
traced step can be a little slower than ``throughput.py``'s. The flag is read when the
backend starts: a process that has already used jax keeps its setting.

  python benchmarks/profile_step.py --model inception_small --replicas 8 --batch_size 128 \
      --plan replicas=map
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import pathlib
import re
import sys
import tempfile
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import throughput  # noqa: E402  (this folder's benchmark functions)

from zhang.errors import UsageError  # noqa: E402
from zhang.experiment import (
  models,
  randomize,  # noqa: E402
)
from zhang.runtime import plan as plan_lib  # noqa: E402

_WRAPPERS = ("ThunkExecutor", "$", "SlinkyThreadPool", "while", "PjitFunction",
             "CommonPjRt", "ParseArguments")


_ACCELERATORS = ("/device:GPU", "/device:TPU")
_DERIVED_LINES = ("XLA Modules", "Steps", "Launch Stats", "Source code", "XLA TraceMe",
                  "Async XLA Ops", "TensorFlow Ops", "TensorFlow Name Scope")


class Trace(NamedTuple):
  ops: collections.Counter  # nanoseconds per op: HLO op names, or CPU thunk and fusion names
  kernels: collections.Counter  # nanoseconds per accelerator kernel name (empty on CPU)
  calls: collections.Counter  # launches per kernel name
  source: str  # which planes and lines were read


def op_times(trace_dir: str) -> Trace:
  """Nanoseconds per op in the trace written under ``trace_dir``.

  On CPU: every event of every plane, by name. With an accelerator plane (``/device:GPU:N``
  or ``/device:TPU:N``): only those planes' kernel timelines (their ``XLA Ops`` line where
  the trace has one, else their ``Stream`` lines, else every line but the derived ones);
  each event is charged to its ``hlo_op`` stat (falling back to its name) and also counted
  by its own name, the kernel's."""
  files = sorted(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
  if not files:
    raise SystemExit(f"profile_step: no trace was written under {trace_dir}")
  return trace_times(jax.profiler.ProfileData.from_file(str(files[-1])))


def trace_times(data) -> Trace:
  """``op_times`` of a loaded ``jax.profiler.ProfileData``."""
  ops, kernels, calls = (collections.Counter() for _ in range(3))
  device = [p for p in data.planes if p.name.startswith(_ACCELERATORS)]
  if not device:
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          ops[event.name] += event.duration_ns
    return Trace(ops, kernels, calls, "every host event")
  used = []
  for plane in device:
    lines = list(plane.lines)
    chosen = ([line for line in lines if line.name == "XLA Ops"]
              or [line for line in lines if line.name.startswith("Stream")]
              or [line for line in lines if line.name not in _DERIVED_LINES])
    used.append(f"{plane.name}: {', '.join(sorted({line.name for line in chosen}))}")
    for line in chosen:
      for event in line.events:
        op = dict(event.stats).get("hlo_op") or event.name
        ops[op] += event.duration_ns
        kernels[event.name] += event.duration_ns
        calls[event.name] += 1
  return Trace(ops, kernels, calls, "; ".join(used))


def _dims(shape: str) -> list[int]:
  return [int(v) for v in re.findall(r"\d+", shape.split("[", 1)[1].split("]", 1)[0])]


def _conv_row(conv: re.Match, shapes: dict, label: str) -> tuple:
  """(label, 'conv', window and dim_labels, role, multiply-adds x 2) of a convolution line
  matched by ``_CONV``; ``shapes`` maps its operands' names to their shapes."""
  window = [int(v) for v in re.search(r"size=([\dx]+)", conv.group(4)).group(1).split("x")]
  result = _dims(conv.group(1))
  lhs = _dims(shapes.get(conv.group(2), "f32[0]"))
  flops = 2 * math.prod(result) * math.prod(window) * (lhs[-1] if lhs else 0)
  if "transpose(" not in conv.group(6):
    role = "forward"
  else:
    role = "weight grad" if math.prod(window) > math.prod(result[1:3]) else "input grad"
  return (label, "conv", f"{conv.group(5)} {conv.group(4)}", role, flops)


_CONV = (r"= (\S+) convolution\(%([\w.-]+), %([\w.-]+)\), window=\{([^}]*)\}, "
         r"dim_labels=([^,\s]+)(.*)")


_DOT = r"= (\S+) dot\(.*?\), (lhs_batch_dims=.*?rhs_contracting_dims=\{[\d,]*\})"

# cuDNN's convolutions on GPU: custom calls that keep the forward convolution's window and
# dim_labels whatever their kind (forward, or the input or weight gradient).
_CUDNN = (r"%([\w.-]+) = \(?(\w+\[[\d,]*\])\S* .*?custom-call\(([^)]*)\), "
          r"window=\{([^}]*)\}, dim_labels=([^,\s]+)(.*?)"
          r"custom_call_target=\"__cudnn\$conv(\w*)\"")
# cuBLAS's products on GPU (XLA's own, Triton's, are fusions with a dot inside).
_CUBLAS = (r"%([\w.-]+) = \(?(\w+\[[\d,]*\])\S* .*?custom-call\(.*?"
           r"custom_call_target=\"(__cublas\S*?)\"")


def _cudnn_row(conv: re.Match, shapes: dict) -> tuple:
  """(result shape, 'conv', window and dim_labels, role, multiply-adds x 2) of a cuDNN
  convolution matched by ``_CUDNN``; ``shapes`` maps operand names to their shapes."""
  _, result, operands, window, labels, rest, kind = conv.groups()
  inline = {n: sh for sh, n in re.findall(r"(\w+\[[\d,]*\])(?:\{[^}]*\})? %([\w.-]+)",
                                          operands)}
  dims = [_dims(inline.get(n) or shapes.get(n, "f32[]"))
          for n in re.findall(r"%([\w.-]+)", operands)[:2]] + [[], []]
  role = {"BackwardInput": "input grad", "BackwardFilter": "weight grad"}.get(kind, "forward")
  # The forward convolution's output and filter, wherever this kind has them.
  output, kernel = {"forward": (_dims(result), dims[1]), "input grad": (dims[0], dims[1]),
                    "weight grad": (dims[1], _dims(result))}[role]
  rhs = labels.split("->")[0].split("_")[-1]
  flops = 0
  if output and "o" in rhs and len(kernel) == len(rhs) and all(kernel):
    flops = 2 * math.prod(output) * math.prod(kernel) // kernel[rhs.index("o")]
  groups = re.search(r"feature_group_count=(\d+)", rest)
  return (result, "conv", f"{labels} {window}" + (f" groups={groups.group(1)}" if groups else ""),
          role, flops)


def fusion_contents(hlo: str) -> dict:
  """op name -> (result shape, 'conv' | 'dot' | '', window and dim_labels if a conv,
  the conv's role: 'forward', 'input grad' or 'weight grad', its multiply-adds x 2).

  Covers fusions (YNNPACK's convolutions and dots are fusions) and the convolutions and dots
  XLA runs unfused (Eigen's, when YNNPACK's are off: ``cpu_kernels=eigen``); an unfused dot's
  third field is its dimension numbers (lb, lc, rb, rc: lhs/rhs batch/contracting). On GPU,
  cuDNN's convolutions (FLOPs from their operands' shapes) and cuBLAS's products (third
  field: the custom-call target)."""
  out = {}
  fused = set()
  for m in re.finditer(r"%([\w.-]+) = (\S+) fusion\(.*?calls=%([\w.-]+)", hlo):
    fused.add(m.group(3))
    body = hlo.split(f"%{m.group(3)} ", 1)[-1].split("\n}\n", 1)[0]
    conv = re.search(_CONV, body)
    if not conv:
      out[m.group(1)] = (m.group(2).split("{")[0], "dot" if " dot(" in body else "", "", "", 0)
      continue
    params = dict(re.findall(r"%([\w.-]+) = (\S+) parameter\(", body))
    out[m.group(1)] = _conv_row(conv, params, m.group(2).split("{")[0])
  # Unfused convolutions: those outside every fused computation.
  shapes = dict(re.findall(r"%([\w.-]+) = (\w+\[[\d,]*\])", hlo))
  computation = None
  for line in hlo.splitlines():
    head = re.match(r"(?:ENTRY )?%([\w.-]+) .*\{$", line)
    if head and not line.startswith(" "):
      computation = head.group(1)
      continue
    if computation in fused:
      continue
    if "custom_call_target=\"__cudnn$conv" in line and (cudnn := re.search(_CUDNN, line)):
      out[cudnn.group(1)] = _cudnn_row(cudnn, shapes)  # GPU: cuDNN's convolutions
      continue
    if "custom_call_target=\"__cublas" in line and (gemm := re.search(_CUBLAS, line)):
      out[gemm.group(1)] = (gemm.group(2), "dot", gemm.group(3), "", 0)  # cuBLAS's products
      continue
    conv = re.search(_CONV, line)
    dot = re.search(_DOT, line)
    if conv:
      name = line.split(" = ", 1)[0].split("%")[-1]
      out[name] = _conv_row(conv, shapes, conv.group(1).split("{")[0])
    elif dot:  # Eigen's products (the MLPs' with cpu_kernels eigen)
      name = line.split(" = ", 1)[0].split("%")[-1]
      dims = re.sub(r"(lhs|rhs)_(batch|contracting)_dims=", lambda m: m.group(1)[0] +
                    m.group(2)[0], dot.group(2)).replace(", ", " ")
      out[name] = (dot.group(1).split("{")[0], "dot", dims, "", 0)
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="inception_small", choices=models.names())
  p.add_argument("--replicas", type=int, default=1)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--steps", type=int, default=2, help="steps in the traced chunk")
  p.add_argument("--plan", default=throughput.AUTO,
                 help="the execution plan, as ZHANG_PLAN takes it (e.g. replicas=map; "
                 "choices: " + "; ".join(f"{k}={'|'.join(v)}"
                                         for k, v in plan_lib.CHOICES.items())
                 + "); auto: the automatic plan")
  p.add_argument("--input_shape", default="28,28,3", help="H,W,C of the synthetic images")
  p.add_argument("--kind", default="labels", choices=randomize.KINDS,
                 help="the replicas' randomization (the pixel kinds' inputs are made in the "
                 "step)")
  p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--top", type=int, default=15, help="rows of each table")
  args = p.parse_args(argv)
  try:
    plan_lib.parse(throughput.plan_arg(args.plan))
  except UsageError as err:
    p.error(f"--plan: {str(err).removeprefix(plan_lib.ENV + ': ')}")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_gpu_enable_command_buffer" not in flags:  # read when the backend starts
    os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_enable_command_buffer=".strip()

  shape = tuple(int(v) for v in args.input_shape.split(","))
  dataset = throughput.synthetic_dataset(max(512, args.batch_size), shape)
  program, d, reps, states = throughput.setup(args.model, args.replicas, dataset,
                                              args.batch_size, plan=args.plan,
                                              compute_dtype=args.compute_dtype, kind=args.kind)
  compiled, _ = throughput.compile_chunk(program, d, reps, states, args.steps)
  num = jnp.asarray(args.steps, jnp.int32)
  states, loss = compiled(states, reps, d, jnp.asarray(0, jnp.int32), num)  # warm-up
  loss.block_until_ready()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    t = time.perf_counter()
    states, loss = compiled(states, reps, d, num, num)
    loss.block_until_ready()
    step_ms = (time.perf_counter() - t) / args.steps * 1e3
    jax.profiler.stop_trace()
    trace = op_times(trace_dir)

  per_step = lambda ns: ns / 1e6 / args.steps
  ops = {k: v for k, v in trace.ops.items() if not k.startswith(_WRAPPERS)}
  kinds = collections.Counter()
  for name, ns in ops.items():
    kinds[re.sub(r"\.\d+$", "", name)] += ns
  whole = sum(kinds.values())
  dtype = "" if args.compute_dtype == "float32" else f", {args.compute_dtype}"
  print(f"{args.model}, R = {args.replicas}, batch {args.batch_size}, plan "
        f"{program.plan}{dtype}, {jax.default_backend()} ({jax.devices()[0].device_kind}): "
        f"{step_ms:.1f} ms per step (traced), ops {per_step(whole):.1f} ms")
  print(f"trace: {trace.source}")
  print("\nms/step   share  op kind")
  for name, ns in kinds.most_common(args.top):
    print(f"{per_step(ns):7.1f}  {100 * ns / whole:5.1f}%  {name}")
  if trace.kernels:
    total = sum(trace.kernels.values())
    print("\nms/step   share  calls/step  kernel")
    for name, ns in trace.kernels.most_common(args.top):
      print(f"{per_step(ns):7.2f}  {100 * ns / total:5.1f}%  {trace.calls[name] / args.steps:10.1f}"
            f"  {name[:110]}")

  contents = fusion_contents(compiled.as_text())
  rows = [(per_step(ops.get(name, 0)), name, *c) for name, c in contents.items() if c[1]]
  rows.sort(reverse=True)
  gflops = lambda flops, ms: flops / args.steps / (ms * 1e6) if ms else 0.0
  for kind in ("conv", "dot"):
    chosen = [r for r in rows if r[3] == kind]
    if chosen:
      total = sum(r[0] for r in chosen)
      print(f"\n{kind}s: {total:.1f} ms/step ({100 * total / per_step(whole):.0f}% of ops)")
      if kind == "conv":
        roles = collections.defaultdict(lambda: [0.0, 0, 0])
        for ms, _, _, _, _, role, flops in chosen:
          roles[role][0] += ms
          roles[role][1] += flops
          roles[role][2] += 1
        for role, (ms, flops, n) in sorted(roles.items(), key=lambda kv: -kv[1][0]):
          print(f"{ms:7.1f}  {role:<12} {n:4d} ops  {gflops(flops, ms):6.1f} GF/s "
                "(nominal: dilation zeros counted)")
        print()
      for ms, name, shape, _, labels, role, flops in chosen[:args.top]:
        rate = f"{gflops(flops, ms):6.1f} GF/s  {role:<12}" if kind == "conv" else ""
        print(f"{ms:7.1f}  {name:<18} {shape:<24} {rate}{labels}")
  if any(c[1] == "conv" and "fusion" not in name for name, c in contents.items()):
    print("\nEigen's convolutions (unfused) run on the thread pool after their trace event "
          "ends: their times above are mostly dispatch, and the step's time beyond the ops, "
          f"{step_ms - per_step(whole):.0f} ms, is mostly theirs.")


if __name__ == "__main__":
  main()
