"""The `zhang report` sub-command. `zhang/cli/__init__.py` calls `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys

from zhang.errors import UsageError


def register(subparsers) -> argparse.ArgumentParser:
  """Adds `report DIR [DIR ...] --out OUT` to an argparse sub-parser collection."""
  parser = subparsers.add_parser(
      "report", help="figures 1a-c, confidence plot and report.md from run directories",
      description="Reads run directories (local or gs://) written by `zhang train` and writes "
      "fig1a.png, fig1b.png, fig1c.png, confidence.png and report.md to OUT. Runs still in "
      "progress are reported as such; their partial data are used. What the probes wrote "
      "into OUT (kernel_baseline.json of `zhang kernel RUN --out OUT`, llc.json, ntk.json) "
      "gets its section when it was computed from one of these runs (its config hash); a "
      "file of another run is named and skipped.")
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
    if args.n_boot < 0:
      raise UsageError(f"--n_boot must be >= 0, got {args.n_boot}")
    written = report.write_report(args.dirs, args.out, threshold=args.threshold,
                                  loss_below=args.loss_below, n_boot=args.n_boot)
  except UsageError as e:
    print(f"zhang report: error: {e}", file=sys.stderr)
    return 2
  for path in written:
    print(path)
  return 0
