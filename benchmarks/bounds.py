"""The posterior optimization and the Monte Carlo draws of ``zhang bound`` against the train
step, timed in the same process.

  python benchmarks/bounds.py                                      # binary digits, mlp_1x600
  python benchmarks/bounds.py --config configs/bounds.py:n_train=10000   # binary Fashion-MNIST

``zhang bound`` spends its time on two loops per replica: steps of the posterior's
optimization (a network drawn from Q, a forward and backward pass on a minibatch, the KL and
its gradient, an RMSProp update of mu, log s and log lambda: ``posterior.optimize``) and
Monte Carlo draws (a network drawn from Q and its error on ``mc_batch`` examples:
``posterior.mc_error``). This script times each over every replica of the config's first
model in one program (``step.over_grid``, the run's plan and mesh, the probe's model:
``compute.model_of``), the optimization on minibatches of the config's batch size, against
the trainer's ``train_chunk`` on the same model, grid and batch size. Prints one JSON
object: replica-steps (and replica-draws) per second and each ``ratio`` to the train step's,
the best of ``--repeats`` timed calls after a compiling call, alternated so that all see the
same machine load. The parameters are the grid's initial ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import probe_timing  # noqa: E402  (benchmarks/, this script's folder)

from zhang.probes import run as run_lib  # noqa: E402
from zhang.probes.bounds import posterior  # noqa: E402
from zhang.probes.measures import compute, context  # noqa: E402


def _loops(run: run_lib.Run, s: posterior.Settings, chunk: int):
  """Jit-compiled grid functions of (params, batch stats, x, y, valid) that run ``s.steps``
  optimization steps or ``s.draws`` Monte Carlo draws per replica."""
  model = compute.model_of(run, chunk)

  def replica(kind, params, batch_stats, x, y, valid):
    rep = context.Replica(params, params, batch_stats, x, y, valid, jax.random.key(0))
    if kind == "step":
      post, trace = posterior.optimize(model, rep, s)
      return trace[-1]
    post = posterior.start(rep, s)
    return posterior.mc_error(model, rep, post, rep.key, s.draws, s.mc_batch)

  return probe_timing.grid_loops(run, replica, ("step", "draw"))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/bounds.py:dataset=digits")
  parser.add_argument("--steps", type=int, default=100, help="steps (and draws) per timed call")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  g = probe_timing.grid(args.config)
  config, replicas, run = g.config, g.replicas, g.run
  init = run.state(0)
  batch, k = config.batch_size, args.steps
  s = dataclasses.replace(posterior.Settings(), steps=k, batch=batch, draws=k,
                          trace_every=k)
  m = min(run.n, 4 * s.mc_batch)
  chunk = min(config.eval_batch_size, m)
  x, y, valid = compute.examples(run, m, chunk)
  loops = _loops(run, s, chunk)
  fixed = (init.params, init.batch_stats, x, y, valid)

  best = probe_timing.best_seconds(g.program, g.states, g.reps, g.d, k, loops, fixed,
                                   args.repeats)
  rate = {name: len(replicas) * k / sec for name, sec in best.items()}
  print(json.dumps(dict(
      config=args.config, model=config.model, replicas=len(replicas), batch=batch,
      mc_batch=s.mc_batch, steps=k, backend=jax.default_backend(), plan=str(run.plan),
      train_rate=round(rate["train"], 1), posterior_step_rate=round(rate["step"], 1),
      draw_rate=round(rate["draw"], 1),
      posterior_step_ratio=round(rate["step"] / rate["train"], 3),
      draw_ratio=round(rate["draw"] / rate["train"], 3))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
