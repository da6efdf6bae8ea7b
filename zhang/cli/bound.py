"""`zhang bound`: Dziugaite and Roy (2017)'s PAC-Bayes bound of every replica of a two-class run.

  zhang bound runs/bounds --out b_report
  zhang bound runs/bounds_digits/mlp_1x600 --out b_report --steps 500 --draws 200

Writes OUT/bound.json (never into the run's directory); `zhang report RUN --out OUT` then
shows each replica's bound beside its test error. The bound, its settings and tests:
``zhang/probes/bounds/``; every field of bound.json: docs/bounds.md.
"""

from __future__ import annotations

import argparse

from zhang.rundir import storage

# The posterior.Settings fields the command sets (None: the default of posterior.Settings).
_SETTINGS = ("steps", "learning_rate", "variance_learning_rate", "draws", "mc_batch", "delta")


def register(subparsers) -> argparse.ArgumentParser:
  """Adds the `bound` sub-command to an argparse subparsers object."""
  p = subparsers.add_parser(
      "bound", help="PAC-Bayes bound of every replica of a two-class run (Dziugaite & Roy)",
      description="Dziugaite and Roy (2017)'s PAC-Bayes bound on the test error of every "
      "replica of a two-class run (trained with --config.binary=true), or of each model of a "
      "study, in one compiled program per model: a Gaussian posterior around the trained "
      "weights is optimized against a prior around the initialization on all of the "
      "replica's training examples (its labels, its randomized inputs), then certified with "
      "probability 1 - delta - 0.01. Writes OUT/bound.json.")
  p.add_argument("run", metavar="RUN", help="a run's or a study's --workdir")
  p.add_argument("--out", required=True, help="output folder (created; outside RUN)")
  p.add_argument("--step", default=None,
                 help="fit (each replica as it fitted: a run trained with freeze_at_fit, or "
                 "checkpoints at the fit steps), final, or a saved step (default: fit for a "
                 "freeze_at_fit run, else final)")
  p.add_argument("--steps", type=int, default=None,
                 help="the posterior's optimization steps (default 5000)")
  p.add_argument("--learning_rate", type=float, default=None,
                 help="the RMSProp rate of the posterior's mean, x0.1 after half of the steps "
                 "(default 0.001)")
  p.add_argument("--variance_learning_rate", type=float, default=None,
                 help="the RMSProp rate of the posterior's and the prior's log variances, "
                 "x0.1 after half of the steps (default 0.03)")
  p.add_argument("--draws", type=int, default=None,
                 help="networks drawn from the posterior to estimate its training error "
                 "(default 1000)")
  p.add_argument("--mc_batch", type=int, default=None,
                 help="training examples each drawn network is measured on, drawn with "
                 "replacement (default 1000; 0: every one)")
  p.add_argument("--delta", type=float, default=None,
                 help="the PAC-Bayes bound's failure probability, in (0, 1) (default 0.025; "
                 "the Monte Carlo estimate adds 0.01)")
  p.add_argument("--seed", type=int, default=0, help="the draws of every replica's posterior")
  p.add_argument("--data_dir", default=None, help="where the run's dataset is, if not where "
                 "the run read it")
  p.set_defaults(func=run_bound_command)
  return p


def run_bound_command(args) -> int:
  """Runs `zhang bound`; bad input raises UsageError naming settings in backticks, which
  ``zhang.cli.main`` prints as these flags (exit 2)."""
  from zhang.probes.bounds import posterior, probe  # deferred: the parser builds without JAX
  storage.check_path(args.run, "run", write=False, flag="RUN")
  storage.check_path(args.data_dir, "data_dir", write=False)
  storage.check_out(args.out)
  given = {k: getattr(args, k) for k in _SETTINGS if getattr(args, k) is not None}
  result = probe.bound(args.run, args.out, args.step, posterior.Settings(**given), args.seed,
                       args.data_dir)
  for line in summary(result):
    print(line)
  print(f"Wrote {args.out}/{probe.JSON}; `zhang report {args.run} --out {args.out}` adds "
        f"the bounds' section and figure")
  return 0


def summary(result: dict) -> list[str]:
  """Per corruption level: the mean test error and bound, and the replicas certified below
  chance: what the command prints."""
  from zhang.analysis import bound as analysis
  s = result["settings"]
  lines = [f"{len(result['replicas'])} replicas, n = {s['examples']:,} training examples, "
           f"confidence {s['confidence']:g}; per corruption level:"]
  return lines + ["  " + line for line in analysis.text_table(analysis.table(result))]
