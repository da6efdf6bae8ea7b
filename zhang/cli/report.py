"""The `zhang report` sub-command. `zhang/cli/__init__.py` calls `register(subparsers)`."""

from __future__ import annotations

import argparse
import math
import sys

from zhang.errors import UsageError
from zhang.rundir import storage


def register(subparsers) -> argparse.ArgumentParser:
  """Adds `report DIR [DIR ...] --out OUT` to an argparse sub-parser collection."""
  parser = subparsers.add_parser(
      "report", help="figures 1a-c, confidence plot and report.md from run directories",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Reads run directories (local or gs://) written by `zhang train` and writes "
      "into OUT:\n"
      "  report.md         every table and figure below, with the paper's numbers beside\n"
      "  fig1a.png         training loss against steps, per randomization (Figure 1a)\n"
      "  fig1b.png         time to fit against label corruption, with the scaling laws\n"
      "  fig1c.png         test error against label corruption\n"
      "  confidence.png    test confidence and entropy against label corruption\n"
      "  noisy_fit.png, reliability.png, fit_times.png\n"
      "                    clean against corrupted examples, calibration, per-example fit\n"
      "                    times (runs whose files hold them)\n"
      "  grokking.png, grokking_steps.png\n"
      "                    runs trained past the fit (configs/modadd.py)\n"
      "  table1.md, fig2a.png, early_stopping.png\n"
      "                    regularizers on and off, early stopping, Figure 2a (studies)\n"
      "  table2.md         ImageNet runs: top-1 and top-5 beside the paper's Table 2\n"
      "Runs still in progress are reported as such; their partial data are used. What the\n"
      "probes wrote into OUT (kernel_baseline.json of `zhang kernel RUN --out OUT`, llc.json,\n"
      "ntk.json, measures.json) gets its section when it was computed from one of these runs\n"
      "(its config hash); a file of another run is named and skipped. measures.json adds\n"
      "measures.md, measures_vs_gap.png and measures_tau.png: which complexity measures rank\n"
      "the generalization gap (Kendall's tau, granulated by axis, the randomization test).")
  parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (--workdir)")
  parser.add_argument("--out", required=True, help="output directory (created if missing)")
  parser.add_argument("--threshold", type=float, default=None,
                      help="train accuracy that counts as fitted, in (0, 1] (default: the "
                      "runs' fit_threshold, usually 1.0)")
  parser.add_argument("--loss_below", type=float, default=None,
                      help="count a replica as fitted when its train loss falls to this "
                      "value instead")
  parser.add_argument("--n_boot", type=int, default=200,
                      help="bootstrap resamples for the scaling-law intervals (default 200)")
  parser.set_defaults(func=run_report_command)
  return parser


def run_report_command(args: argparse.Namespace) -> int:
  """Runs `zhang report`; returns 0, or 2 with one line on stderr for bad input."""
  from zhang.analysis import report  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  try:
    if args.threshold is not None and not 0 < args.threshold <= 1:
      raise UsageError(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.loss_below is not None and not 0 < args.loss_below < math.inf:
      raise UsageError(f"--loss_below must be a finite loss > 0, got {args.loss_below}")
    if args.n_boot < 0:
      raise UsageError(f"--n_boot must be >= 0, got {args.n_boot}")
    for path in args.dirs:
      storage.check_path(path, "run", write=False, flag="DIR")
    storage.check_out(args.out)
    written = report.write_report(args.dirs, args.out, threshold=args.threshold,
                                  loss_below=args.loss_below, n_boot=args.n_boot)
  except UsageError as e:
    print(f"zhang report: error: {e}", file=sys.stderr)
    return 2
  for path in written:
    print(path)
  return 0
