"""`zhang ntk`'s time and FLOPs on a finished run, against the same process's fp32 matmul rate.

  python benchmarks/ntk.py runs/digits                   # the whole command, structured
  python benchmarks/ntk.py runs/digits --jacobian 1      # and one kernel by per-leaf jacobians
  python benchmarks/ntk.py runs/digits --n 512 --out /tmp/ntk_bench

Prints one JSON object per measurement:

  command   ``ntk_predict.compute`` and ``write`` as ``zhang ntk RUN --out OUT`` runs them:
            ``wall_s`` (the process's imports excluded), ``kernel_s`` and ``kernel_flops``
            summed over the run's kernels (``TangentKernel.flops``: the analytic count of
            the features' forward and backward passes and of the contractions), their rate
            ``kernel_flops_per_s`` and ``fraction_of_matmul``.
  jacobian  with ``--jacobian K``: the first K kernels again by the ``jacobian`` method
            (every leaf's per-example jacobian, contracted as J J^T): the same kernel,
            ``max_abs_difference`` from the structured one relative to its largest entry,
            and that method's FLOPs and rate.

``matmul_flops_per_s`` is the best rate of an (N, N) fp32 ``jnp.dot`` (``--matmul_n``) timed
before and after, as benchmarks/throughput.py times it. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from throughput import matmul_flops_per_s  # noqa: E402  (this folder's matmul timer)

from zhang.errors import UsageError  # noqa: E402
from zhang.experiment import randomize  # noqa: E402
from zhang.probes.ntk import empirical as ntk
from zhang.probes.ntk import predict as ntk_predict
from zhang.probes.ntk import request as ntk_run


def _machine() -> dict:
  return dict(backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
              device_count=jax.device_count())


def command_row(run: str, request: ntk_run.Request, out: str, matmul_n: int,
                repeats: int) -> dict:
  before = matmul_flops_per_s(matmul_n, repeats)
  start = time.perf_counter()
  result = ntk_predict.compute(run, request, out=out, log=lambda line: None)
  ntk_predict.write(result, out)
  wall = time.perf_counter() - start
  after = matmul_flops_per_s(matmul_n, repeats)
  s, t = result["settings"], result["settings"]["timing"]
  rate = t["kernel_flops"] / t["kernel_seconds"]
  matmul = max(before, after)
  return dict(what="command", run=run, model=s["model"], dataset=s["dataset"], n=s["n"],
              n_test=s["n_test"], method=s["kernel_method"],
              kernels=len({r["kernel"] for r in result["replicas"]}), wall_s=round(wall, 2),
              kernel_s=t["kernel_seconds"], kernel_flops=t["kernel_flops"],
              kernel_flops_per_s=rate, matmul_flops_per_s=matmul,
              matmul_before=before, matmul_after=after,
              fraction_of_matmul=round(rate / matmul, 4), **_machine())


def jacobian_rows(run: str, request: ntk_run.Request, count: int, matmul_n: int,
                  repeats: int) -> list[dict]:
  """The first ``count`` kernels by both methods: their agreement, FLOPs and rates."""
  setup = ntk_run.prepare(run, request)
  rebuilt = setup.run
  init = rebuilt.state(0)
  seen, firsts = set(), []
  for r in setup.run.replicas:
    if ntk_run.kernel_key(r) not in seen:
      seen.add(ntk_run.kernel_key(r))
      firsts.append(r)
  shape = rebuilt.data.test_images.shape[1:]
  kernels = {m: ntk.TangentKernel(setup.module, setup.dataset.num_classes, shape, m)
             for m in ntk.METHODS}
  rows = []
  for r in firsts[:count]:
    params, state = rebuilt.variables(init, r)
    x = rebuilt.inputs(r, randomize.TRAIN)[:setup.n]
    x_test = rebuilt.inputs(r, randomize.TEST)[:setup.n_test] if setup.n_test else None
    before = matmul_flops_per_s(matmul_n, repeats)
    out = {}
    for method, tk in kernels.items():
      plan = ntk.plan_memory(setup.n, setup.n_test, setup.dataset.num_classes,
                             tk.floats_per_example, len(setup.record_steps), request.block,
                             None if request.memory_gb is None else
                             int(request.memory_gb * 1e9))
      if not plan.fits:
        raise UsageError(f"the {method} kernel needs {plan.total_bytes / 1e9:.3g} GB: use "
                         f"--n {plan.max_n} or less")
      tk.matrices(params, state, x[:8], None, block=8)  # compile outside the timing
      k, k_test, stats = tk.matrices(params, state, x, x_test, block=plan.block,
                                     hold=plan.hold)
      out[method] = (k, stats, tk.flops(stats), plan.block)
    after = matmul_flops_per_s(matmul_n, repeats)
    matmul = max(before, after)
    k_ref = out["jacobian"][0]
    for method, (k, stats, flop, block) in out.items():
      rate = flop["total"] / stats.seconds
      rows.append(dict(
          what="jacobian" if method == "jacobian" else "structured", run=run,
          replica=r.index, kind=r.kind, seed=r.seed, method=method, n=setup.n,
          n_test=setup.n_test, block=block, seconds=round(stats.seconds, 3),
          feature_flops=flop["features"], contraction_flops=flop["contraction"],
          flops=flop["total"], flops_per_s=rate, matmul_flops_per_s=matmul,
          fraction_of_matmul=round(rate / matmul, 4),
          max_abs_difference=float(np.abs(k - k_ref).max() / np.abs(k_ref).max()),
          **_machine()))
  return rows


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("run", help="a finished zhang train workdir")
  p.add_argument("--out", default=None, help="ntk.json's folder (default: a temporary one)")
  p.add_argument("--n", type=int, default=None)
  p.add_argument("--n_test", type=int, default=None)
  p.add_argument("--block", type=int, default=None)
  p.add_argument("--method", choices=ntk.METHODS, default="structured")
  p.add_argument("--jacobian", type=int, default=0, metavar="K",
                 help="also time the first K kernels by both methods")
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  request = ntk_run.Request(n=args.n, n_test=args.n_test, block=args.block,
                            method=args.method)
  try:
    with tempfile.TemporaryDirectory() as tmp:
      print(json.dumps(command_row(args.run, request, args.out or tmp, args.matmul_n,
                                   args.repeats)), flush=True)
    for row in jacobian_rows(args.run, request, args.jacobian, args.matmul_n, args.repeats):
      print(json.dumps(row), flush=True)
  except UsageError as e:
    print(f"benchmarks/ntk.py: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
