"""The MLP's first-layer product under ``vmap``, alone: R replicas' (128 x 2352) x (2352 x 512).

Run (2-core CPU, under a minute):

  python benchmarks/batched_matmul.py
  python benchmarks/batched_matmul.py --replicas 1,8,32 --batch 128 --din 2352 --dout 512

For each R: the batched ``einsum`` that ``vmap`` makes of the replicas' products, and a Python
loop of R plain products, each under ``jit``; then one n^3 product (``--matmul_n``) in the
same process for reference. GF/s, best of ``--repeats``. One JSON object per line; results:
benchmarks/RESULTS.md, "MLP at more replicas".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from layers_in_loops import best_seconds, sig  # noqa: E402  (this folder's helpers)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--replicas", default="1,8,32", help="comma-separated replica counts")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--din", type=int, default=2352, help="inputs (28 x 28 x 3)")
  p.add_argument("--dout", type=int, default=512)
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--repeats", type=int, default=10)
  args = p.parse_args(argv)
  info = dict(backend=jax.default_backend(), jax_version=jax.__version__,
              load_avg_1m=round(os.getloadavg()[0], 2))
  for r in (int(v) for v in args.replicas.split(",")):
    x = jax.random.normal(jax.random.key(0), (r, args.batch, args.din))
    w = jax.random.normal(jax.random.key(1), (r, args.din, args.dout))
    flops = 2 * r * args.batch * args.din * args.dout
    batched = jax.jit(lambda x, w: jnp.einsum("rbi,rio->rbo", x, w))
    looped = jax.jit(lambda x, w: jnp.stack([x[i] @ w[i] for i in range(x.shape[0])]))
    rates = {name: flops / best_seconds(fn, x, w, repeats=args.repeats) / 1e9
             for name, fn in (("batched", batched), ("loop", looped))}
    print(json.dumps(dict(replicas=r, batch=args.batch, din=args.din, dout=args.dout,
                          weight_bytes=4 * r * args.din * args.dout,
                          batched_gflops=sig(rates["batched"]),
                          loop_gflops=sig(rates["loop"]), **info)), flush=True)
  n = args.matmul_n
  a = jax.random.normal(jax.random.key(2), (n, n))
  rate = 2 * n**3 / best_seconds(jax.jit(jnp.dot), a, a, repeats=args.repeats) / 1e9
  print(json.dumps(dict(reference=f"{n}^3", gflops=sig(rate), **info)), flush=True)


if __name__ == "__main__":
  main()
