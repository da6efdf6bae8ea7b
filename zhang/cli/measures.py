"""`zhang measures`: Jiang et al. (2020)'s complexity measures of every replica of a run.

  zhang measures runs/measures --out report
  zhang measures runs/digits --out report --measures spectral,flatness

Writes OUT/measures.json (never into the run's directory); `zhang report RUN --out OUT`
then ranks the measures by Kendall's tau with the generalization gap. The measures, their
settings and tests: ``zhang/probes/measures/``; their definitions: docs/measures.md.
"""

from __future__ import annotations

import argparse
import textwrap

from zhang.rundir import storage

_GROUPS = ("norms: params, frobenius_sum, frobenius_product, init_distance, "
           "init_distance_relative, path_norm; spectral: spectral_product, spectral_sum, "
           "spectral_complexity; margin: inverse_margin and NORM_over_margin; flatness: "
           "pacbayes_flatness, pacbayes_mag_flatness, sharpness; curvature: hessian_top, "
           "hessian_trace; run: fit_step, loss_sum_to_fit, llc (from OUT/llc.json)")


def register(subparsers) -> argparse.ArgumentParser:
  """Adds the `measures` sub-command to an argparse subparsers object."""
  p = subparsers.add_parser(
      "measures", help="complexity measures of every replica (norms, margins, flatness, ...)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Every complexity measure of every replica of a run (or of each model of a "
      "study), in one compiled program per model, on each replica's own training set (its "
      "labels and randomized inputs, no augmentation), beside its train and test accuracy "
      "and its generalization gap (test error - train error). Writes OUT/measures.json.",
      epilog=textwrap.fill("Measures by group (--measures takes groups or names): " + _GROUPS,
                           88))
  p.add_argument("run", metavar="RUN", help="a run's or a study's --workdir")
  p.add_argument("--out", required=True, help="output folder (created; outside RUN)")
  p.add_argument("--step", default=None,
                 help="fit (each replica as it fitted: a run trained with freeze_at_fit, or "
                 "checkpoints at the fit steps), final, or a saved step (default: fit for a "
                 "freeze_at_fit run, else final)")
  p.add_argument("--measures", default=None, metavar="NAMES",
                 help="comma-separated groups or measures (default: all)")
  p.add_argument("--examples", type=int, default=5000,
                 help="training examples per replica the measures use, the first ones "
                 "(default 5000; all when the run has fewer)")
  p.add_argument("--seed", type=int, default=0, help="the random draws of every search")
  p.add_argument("--data_dir", default=None, help="where the run's dataset is, if not where "
                 "the run read it")
  p.set_defaults(func=run_measures_command)
  return p


def run_measures_command(args) -> int:
  """Runs `zhang measures`; bad input raises UsageError naming settings in backticks, which
  ``zhang.cli.main`` prints as these flags (exit 2)."""
  from zhang.probes.measures import compute, probe  # deferred: the parser builds without JAX
  storage.check_path(args.run, "run", write=False, flag="RUN")
  storage.check_path(args.data_dir, "data_dir", write=False)
  storage.check_out(args.out)
  settings = compute.Settings(examples=args.examples, seed=args.seed)
  result = probe.measure(args.run, args.out, args.step, args.measures, settings,
                         args.data_dir)
  for line in summary(result):
    print(line)
  print(f"Wrote {args.out}/{probe.JSON}; `zhang report {args.run} --out {args.out}` writes "
        f"measures.md (every setting, the granulated taus, the randomization test) and plots")
  return 0


def summary(result: dict) -> list[str]:
  """Kendall's tau of each measure with the gap, in the analysis' main setting, highest
  first: what the command prints."""
  from zhang.analysis import measures as analysis
  a = analysis.analyze(result)
  table = a.taus[a.primary]
  lines = [f"{len(result['replicas'])} replicas; Kendall's tau with the gap (test error - "
           f"train error) over the {a.primary} replicas, and Psi (granulated by axis):",
           f"  {'measure':<32} {'n':>4} {'tau':>6} {'Psi':>6}"]
  for row in table.itertuples():
    number = lambda v: "     -" if v != v else f"{v:6.2f}"  # NaN: constant or too few values
    lines.append(f"  {row.measure:<32} {row.n:>4} {number(row.tau)} {number(row.psi)}")
  return lines
