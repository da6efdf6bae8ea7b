"""The searches of ``zhang measures`` against the train step, timed in the same process.

  python benchmarks/measures.py                          # the digits grid (15 MLPs)
  python benchmarks/measures.py --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,quick

The flatness search and the Hessian power iteration repeat a few kinds of step per replica,
each over a batch of examples: a Monte Carlo draw of the PAC-Bayes search (Gaussian noise on
every parameter and a forward pass: ``flatness.perturbed_accuracy``), a projected ascent step
of the sharpness search (a forward and backward pass: ``flatness.ascent_step``) and a
Hessian-vector product (``curvature.hvp``: forward over reverse, or reverse over reverse
for a conv net under the explicit CPU gradients). This script times each
over every replica of the config's grid in one program (``step.over_grid``, the run's plan
and mesh, the measures' own model: ``compute.model_of``), on batches of the config's batch
size, against the trainer's ``train_chunk`` on the same model, grid and batch size. Prints
one JSON object: replica-steps per second of each and its ``ratio`` to the train step's,
each the best of ``--repeats`` timed calls of ``--steps`` steps after a compiling call,
alternated so that all see the same machine load. The parameters are the grid's initial
ones (the rates do not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import probe_timing  # noqa: E402  (benchmarks/, this script's folder)

from zhang.probes import run as run_lib  # noqa: E402
from zhang.probes.measures import compute, context, curvature, flatness  # noqa: E402


def _loops(run: run_lib.Run, batch: int, steps: int):
  """Jit-compiled grid functions of (params, batch stats, x, y, valid) that run ``steps``
  draws, ascent steps or Hessian-vector products per replica on one batch each."""
  model = compute.model_of(run, batch)

  def replica(kind, params, batch_stats, x, y, valid):
    rep = context.Replica(params, params, batch_stats, x, y, valid, jax.random.key(0))
    if kind == "draw":
      std = jax.tree.map(lambda p: jnp.float32(1e-2), params)
      body = lambda i, total: total + flatness.perturbed_accuracy(
          model, rep, std, jax.random.fold_in(rep.key, i))
      return jax.lax.fori_loop(0, steps, body, jnp.float32(0.0))
    if kind == "ascent":
      u = jax.tree.map(jnp.zeros_like, params)
      u = jax.lax.fori_loop(0, steps, lambda _, u: flatness.ascent_step(
          model, rep, u, 1e-2, 1e-3), u)
      return curvature.tree_dot(u, u)
    v = jax.tree.map(jnp.ones_like, params)
    v = jax.lax.fori_loop(0, steps, lambda _, v: jax.tree.map(
        lambda h: h / jnp.maximum(jnp.max(jnp.abs(h)), 1e-12), curvature.hvp(model, rep, v)),
        v)
    return curvature.tree_dot(v, v)

  return probe_timing.grid_loops(run, replica, ("draw", "ascent", "hvp"))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--steps", type=int, default=100, help="steps per timed call")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  g = probe_timing.grid(args.config)
  config, replicas, run = g.config, g.replicas, g.run
  init = run.state(0)
  batch, k = config.batch_size, args.steps
  x, y, valid = compute.examples(run, batch, batch)
  loops = _loops(run, batch, k)
  fixed = (init.params, init.batch_stats, x, y, valid)

  best = probe_timing.best_seconds(g.program, g.states, g.reps, g.d, k, loops, fixed,
                                   args.repeats)
  rate = {name: len(replicas) * k / s for name, s in best.items()}
  print(json.dumps(dict(
      config=args.config, model=config.model, replicas=len(replicas), batch=batch, steps=k,
      backend=jax.default_backend(), plan=str(run.plan),
      train_rate=round(rate["train"], 1),
      **{f"{kind}_rate": round(rate[kind], 1) for kind in loops},
      **{f"{kind}_ratio": round(rate[kind] / rate["train"], 3) for kind in loops})))
  return 0


if __name__ == "__main__":
  sys.exit(main())
