"""One conv layer's and one max pool's gradients, outside and inside a loop, JAX's and ours.

Run (2-core CPU, about a minute):

  python benchmarks/layers_in_loops.py
  python benchmarks/layers_in_loops.py --batch 128 --size 28 --cin 96 --cout 32
  python benchmarks/layers_in_loops.py --batch 128 --kernel 1   # a 1x1 layer (no max pool)

The trainer's steps run inside a ``while`` body, where XLA CPU runs JAX's own convolution
gradients with a naive loop nest (jax-ml/jax#12868). This times, for one 3x3 SAME convolution
(NHWC), the forward pass, the weight gradient and the input gradient, in GF/s:

- ``plain``: under ``jit``;
- ``loop_jax``: inside a ``fori_loop``, JAX's gradients;
- ``loop_explicit_whole``: inside a ``fori_loop``, ``zhang/layers.py``'s gradients without
  their batch chunks (the whole batch in one convolution per gradient);
- ``loop_explicit``: the same with them, as the trainer runs them;

and, for 3x3 only, two other ways to write the weight gradient inside a loop that were tried
and are slower (``im2col``: one matmul over stacked shifted inputs; ``slices``: one matmul per
kernel offset). Then the gradient of a 3x3/2 SAME max pool after the layer (batch, size, 64
channels), in ms, JAX's and ours, inside a loop. One JSON object per line; results:
benchmarks/RESULTS.md, "Convolutions inside loops".
"""

from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zhang import layers

DN = ("NHWC", "HWIO", "NHWC")


def sig(x: float) -> float:
  """Three significant digits (tiny test shapes run at well under 0.1 GF/s)."""
  return float(f"{x:.3g}")


def best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def in_loop(fn):
  """``fn(a, b)`` evaluated inside a one-trip ``fori_loop`` (the trip count is an argument,
  so XLA cannot unroll it)."""
  def looped(a, b, n):
    out = jax.eval_shape(fn, a, b)
    zeros = jnp.zeros(out.shape, out.dtype)
    return lax.fori_loop(0, n, lambda i, acc: acc + fn(a, b), zeros)
  return jax.jit(looped)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--size", type=int, default=28, help="height and width")
  p.add_argument("--cin", type=int, default=96)
  p.add_argument("--cout", type=int, default=32)
  p.add_argument("--kernel", type=int, default=3, choices=(1, 3),
                 help="1: a 1x1 layer, which zhang/layers.py computes as a matrix product")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  b, s, cin, cout, k = args.batch, args.size, args.cin, args.cout, args.kernel
  layer = f"conv{k}x{k}"
  x = jax.random.normal(jax.random.key(0), (b, s, s, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.05
  dy = jax.random.normal(jax.random.key(2), (b, s, s, cout))
  flops = 2 * b * s * s * cin * cout * k * k
  one = jnp.asarray(1)
  info = dict(batch=b, size=s, cin=cin, cout=cout, kernel=k, backend=jax.default_backend(),
              jax_version=jax.__version__, load_avg_1m=round(os.getloadavg()[0], 2))

  def grads(conv):
    value = lambda x, w: jnp.sum(conv(x, w) * dy)
    return jax.grad(value, 1), jax.grad(value, 0)

  jax_conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=DN)
  our_conv = lambda x, w: layers.conv_general_dilated(x, w, (1, 1), "SAME",
                                                      dimension_numbers=DN)
  rows = {"plain": (jax.jit(jax_conv), *(jax.jit(g) for g in grads(jax_conv))),
          "loop_jax": (in_loop(jax_conv), *(in_loop(g) for g in grads(jax_conv))),
          "loop_explicit_whole": (in_loop(our_conv), *(in_loop(g) for g in grads(our_conv))),
          "loop_explicit": (in_loop(our_conv), *(in_loop(g) for g in grads(our_conv)))}
  for name, fns in rows.items():
    extra = () if name == "plain" else (one,)
    # loop_explicit_whole is traced (on its first call) without batch chunks.
    budgets = ((None, None) if name == "loop_explicit_whole" else
               (layers.INPUT_GRAD_CHUNK_BYTES, layers.WEIGHT_GRAD_CHUNK_BYTES))
    with layers.grad_chunk_budgets(*budgets):
      rates = [flops / best_seconds(f, x, w, *extra, repeats=args.repeats) / 1e9
               for f in fns]
    print(json.dumps(dict(layer=layer, how=name, forward_gflops=sig(rates[0]),
                          weight_grad_gflops=sig(rates[1]),
                          input_grad_gflops=sig(rates[2]), **info)), flush=True)

  if k != 3:  # the alternatives below are written for 3x3
    return
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))

  def im2col_dw(x, dy):
    xp = jnp.pad(x, pad)
    cols = jnp.concatenate([xp[:, i:i + s, j:j + s] for i in range(k) for j in range(k)], -1)
    return jnp.einsum("bhwk,bhwo->ko", cols, dy).reshape(k, k, cin, cout)

  def slices_dw(x, dy):
    xp = jnp.pad(x, pad)
    return jnp.stack([jnp.stack([jnp.einsum("bhwc,bhwo->co", xp[:, i:i + s, j:j + s], dy)
                                 for j in range(k)]) for i in range(k)])

  for name, fn in (("im2col", im2col_dw), ("slices", slices_dw)):
    rate = flops / best_seconds(in_loop(fn), x, dy, one, repeats=args.repeats) / 1e9
    print(json.dumps(dict(layer="conv3x3", how=f"loop_{name}", weight_grad_gflops=sig(rate),
                          **info)), flush=True)

  xp = jax.nn.relu(jax.random.normal(jax.random.key(3), (b, s, s, 64)))
  y_shape = jax.eval_shape(lambda x: layers.max_pool(x, (3, 3), (2, 2)), xp).shape
  cot = jax.random.normal(jax.random.key(4), y_shape)
  pools = {"loop_jax": lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME"),
           "loop_explicit": lambda x: layers.max_pool(x, (3, 3), (2, 2))}
  for name, pool in pools.items():
    grad = jax.grad(lambda x, c: jnp.sum(pool(x) * c))
    ms = best_seconds(in_loop(grad), xp, cot, one, repeats=args.repeats) * 1e3
    print(json.dumps(dict(layer="max_pool3x3s2", how=name, channels=64,
                          gradient_ms=sig(ms), **info)), flush=True)


if __name__ == "__main__":
  main()
