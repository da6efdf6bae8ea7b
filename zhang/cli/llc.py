"""`zhang llc`: the local learning coefficient of every replica of a run, by SGLD.

  zhang llc runs/digits --out runs/digits_llc
  zhang llc runs/digits --out runs/digits_llc --steps all
  zhang llc runs/digits --sweep step_size=1e-5,1e-4,gamma=100,1000

Writes OUT/llc.json, OUT/llc_traces.npz, OUT/llc_traces.png, OUT/llc_vs_corruption.png (and
OUT/llc_vs_step.png with several steps); never writes into the run's directory. The
estimator, its settings and their calibration: ``zhang/probes/llc/sgld.py``; on a run:
``zhang/probes/llc/estimate.py``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from zhang.errors import UsageError, on_command_line
from zhang.rundir import storage

_D = dict(step_size=1e-4, gamma=100.0, chains=4, draws=1000, burnin=300)  # = sgld.Settings()
_EPILOG = "\n\n".join(textwrap.fill(paragraph, 88) for paragraph in (
    "n beta: 'n' (the default, recommended) is n / log n with n the training-set size: the "
    "paper's temperature 1 / log n, at which the theory ties the tempered posterior to the "
    "learning coefficient, and one temperature for every replica of a run (they share n). "
    "'batch' is m / log m with m the batch size (devinterp's default): a hotter, broader "
    "posterior (n beta 26 instead of 198 on the digits run) with less minibatch-gradient "
    "noise and smaller estimates. A number sets n beta itself.",
    "Defaults: calibrated so that known learning coefficients are recovered within 15% (a "
    "linear regression, d/2; the degenerate f(x) = a b x, 1/2 rather than 1) and every "
    "chain of the digits run settles; zhang/probes/llc/sgld.py has the measurements. The estimate "
    "moves with these settings (gamma most): compare them with --sweep, e.g. --sweep "
    "step_size=3e-5,1e-4,3e-4,gamma=100,1000 (a NAME=V token starts a setting, the tokens "
    "after it are more of its values; sweepable: step_size, gamma, nbeta, chains, draws, "
    "burnin, batch_size).",
    "Warnings (stderr) name the setting to change: chains that diverged (lower "
    "--step_size), chains that have not settled (raise --burnin), a negative estimate "
    "(raise --gamma). Every chain diverged: exit 2."))


def register(subparsers) -> argparse.ArgumentParser:
  """Adds the `llc` sub-command to an argparse subparsers object."""
  p = subparsers.add_parser(
      "llc", help="local learning coefficient (lambda-hat) of every replica by SGLD",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="lambda-hat = n beta (E[L_n(w)] - L_n(w*)) (Lau et al. 2023; the devinterp "
      "estimator) for every replica of a run, from its checkpoints: SGLD chains of the "
      "localized tempered posterior exp(-n beta L_n(w) - gamma/2 |w - w*|^2) on each "
      "replica's own training set (its labels and randomized inputs, no augmentation), all "
      "in one compiled program. Batch-norm statistics stay at w*'s (eval mode).",
      epilog=_EPILOG)
  p.add_argument("run", metavar="RUN", help="a run's --workdir (with checkpoints/)")
  p.add_argument("--out", help="output folder (created; outside RUN); required unless --sweep")
  p.add_argument("--steps", default="last",
                 help="checkpoints to estimate: last (default), all, or steps e.g. 1000,2000")
  p.add_argument("--step_size", type=float, default=_D["step_size"],
                 help=f"SGLD step size eps (default {_D['step_size']:g})")
  p.add_argument("--gamma", type=float, default=_D["gamma"],
                 help=f"localization strength (default {_D['gamma']:g})")
  p.add_argument("--nbeta", default="n",
                 help="n (n / log n, default), batch (m / log m), or a number")
  p.add_argument("--chains", type=int, default=_D["chains"],
                 help=f"chains per replica (default {_D['chains']})")
  p.add_argument("--draws", type=int, default=_D["draws"],
                 help=f"SGLD steps averaged after burn-in (default {_D['draws']})")
  p.add_argument("--burnin", type=int, default=_D["burnin"],
                 help=f"SGLD steps before the draws (default {_D['burnin']})")
  p.add_argument("--batch_size", type=int, default=None,
                 help="minibatch size m (default: the run's batch size)")
  p.add_argument("--seed", type=int, default=0, help="the chains' noise and batch orders")
  p.add_argument("--data_dir", default=None, help="where the run's dataset is, if not where "
                 "the run read it")
  p.add_argument("--sweep", action="append", metavar="NAME=V,V[,NAME=V,V]",
                 help="print lambda-hat for every combination of these settings (repeatable)")
  p.add_argument("--no_plots", action="store_true", help="write no PNG files")
  p.set_defaults(func=run_llc_command)
  return p


def run_llc_command(args) -> int:
  """Runs `zhang llc`; bad input raises UsageError naming settings in backticks, which
  ``zhang.cli.main`` prints as these flags (exit 2); the warnings are printed the same way."""
  from zhang.probes.llc import (
    estimate as llc,  # deferred: the parser must build without importing JAX
  )
  flags = getattr(args, "flags", None)
  warn = lambda message: print(f"zhang llc: warning: {on_command_line(message, flags)}",
                               file=sys.stderr, flush=True)
  settings = llc.Settings(step_size=args.step_size, gamma=args.gamma,
                          nbeta=llc.parse_nbeta(args.nbeta), chains=args.chains,
                          draws=args.draws, burnin=args.burnin, batch_size=args.batch_size,
                          seed=args.seed)
  settings.check()
  storage.check_path(args.run, "run", write=False, flag="RUN")
  storage.check_path(args.data_dir, "data_dir", write=False)
  if args.out:
    storage.check_out(args.out)
  if args.sweep:
    grid = llc.parse_sweep(args.sweep)
    result = llc.sweep(args.run, grid, settings, args.steps, args.data_dir, args.out)
    print("\n".join(llc.sweep_lines(result)))
    return 0
  if not args.out:
    raise UsageError("--out DIR is required (where llc.json and the plots go)")
  result = llc.estimate_run(args.run, args.out, settings, args.steps, args.data_dir,
                            plots=not args.no_plots, warn=warn)
  written = [f"{args.out}/{name}" for name in (llc.JSON, llc.TRACES)]
  if not args.no_plots:
    written += [str(p) for p in llc.plot(result, args.out)]
    written.append(f"{args.out}/{llc.TRACE_PLOT}")
  for line in llc.report_lines(result)[4:]:
    print(line)
  print("Wrote " + ", ".join(written))
  return 0
