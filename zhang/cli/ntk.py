"""`zhang ntk`: the empirical NTK of a finished run at initialization, its predicted time to
fit beside the measured one, and kernel interpolation's test accuracy beside the network's.

  zhang ntk runs/digits --out runs/digits/ntk

Writes OUT/ntk.json and its figures (``zhang.analysis.ntk``). Progress (a line per kernel)
goes to stderr; the result's summary to stdout.
"""

from __future__ import annotations

import argparse

from zhang.rundir import storage


def register(subparsers) -> argparse.ArgumentParser:
  """Adds the `ntk` sub-command to an argparse subparsers object."""
  from zhang.analysis import (
    ntk as ntk_report,  # no jax: the parser builds fast; jax loads when it runs
  )
  p = subparsers.add_parser(
      "ntk", help="empirical NTK at initialization: predicted vs measured time to fit",
      description="For a finished zhang train run: the class-averaged tangent kernel of "
                  "each seed's network at initialization (one per seed and input "
                  "randomization), the kernel regime's predicted residual and time to fit "
                  "under the run's learning rate schedule and momentum, the predicted "
                  "slowdown beside the measured one, and minimum-norm kernel "
                  "interpolation's test accuracy beside the network's.")
  p.add_argument("run", help="the --workdir of a finished zhang train run")
  p.add_argument("--out", required=True, help="folder for ntk.json and the figures")
  p.add_argument("--n", type=int, default=None,
                 help="training examples for the kernel, the first ones (default: all)")
  p.add_argument("--n_test", type=int, default=None,
                 help="test examples for kernel interpolation (default: all; 0: none)")
  p.add_argument("--criterion", choices=ntk_report.CRITERIA,
                 default=ntk_report.DEFAULT_CRITERION,
                 help="when the linearized network counts as fitted, for predicted_fit_step "
                      "(ntk.json has both): accuracy, its train accuracy reaching the run's "
                      "fit_threshold (the run's own criterion, default); residual, its "
                      "residual falling to --threshold of its start")
  p.add_argument("--threshold", type=float, default=ntk_report.DEFAULT_THRESHOLD,
                 help="the residual criterion's |E(k)|^2 / |E(0)|^2 (default %(default)s: "
                      "the linearized network reaches 100%% train accuracy at 0.04 to 0.23 "
                      "on digits, true to random labels)")
  p.add_argument("--loss", choices=("cross_entropy", "squared"), default="cross_entropy",
                 help="the quadratic the kernel regime trains on: the run's cross-entropy "
                      "expanded at zero logits, or 1/2 |f - y|^2")
  p.add_argument("--horizon", type=int, default=None,
                 help="predict up to this step (default: 10 x the run's max_steps)")
  p.add_argument("--block", type=int, default=None,
                 help="examples per panel of the kernel's blocks (default: about 512 MiB "
                      "of features a panel)")
  p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                 help="the kernel's features and products (accumulated in float64 either "
                      "way)")
  p.add_argument("--method", choices=("structured", "jacobian"), default="structured",
                 help="structured: Dense layers' jacobians contracted in factored form "
                      "(the same numbers, far fewer FLOPs); jacobian: every leaf's "
                      "per-example jacobian")
  p.add_argument("--memory_gb", type=float, default=None,
                 help="memory budget (default: 80%% of MemAvailable)")
  p.add_argument("--data_dir", default=None, help="where the run's dataset is, if not where "
                 "the run read it")
  p.add_argument("--steps", default=None,
                 help="instead of the prediction: how far each replica's kernel moved, at "
                      "'all' saved steps or steps joined by commas (kernel distance to the "
                      "initial kernel and kernel-target alignment on the first --n training "
                      "examples, default 256), into OUT/kernel_movement.json; any optimizer "
                      "and output scale")
  p.set_defaults(func=run_ntk_command)
  return p


def run_ntk_command(args) -> int:
  """Runs `zhang ntk`; bad input raises UsageError naming settings in backticks, which
  ``zhang.cli.main`` prints as these flags (exit 2)."""
  from zhang.analysis import ntk as ntk_report
  if args.steps is not None:
    return _movement(args)
  from zhang.probes.ntk import predict as ntk_predict
  from zhang.probes.ntk import request as ntk_request
  request = ntk_request.Request(
      n=args.n, n_test=args.n_test, threshold=args.threshold, criterion=args.criterion,
      loss=args.loss, horizon=args.horizon, block=args.block, memory_gb=args.memory_gb,
      dtype=args.dtype, method=args.method, data_dir=args.data_dir)
  storage.check_path(args.run, "run", write=False, flag="RUN")
  storage.check_path(args.data_dir, "data_dir", write=False)
  storage.check_out(args.out)
  result = ntk_predict.compute(args.run, request, out=args.out)
  paths = ntk_predict.write(result, args.out)
  for line in ntk_report.text_lines(result):
    print(line)
  print(f"Results in {args.out}/: {', '.join(p.rsplit('/', 1)[-1] for p in paths)}.")
  return 0


def _movement(args) -> int:
  """`zhang ntk RUN --steps ...`: kernel_movement.json and its figure."""
  from zhang.analysis import lazy_rich
  from zhang.probes.ntk import movement
  storage.check_path(args.run, "run", write=False, flag="RUN")
  storage.check_path(args.data_dir, "data_dir", write=False)
  storage.check_out(args.out)
  result = movement.compute(args.run, args.steps, args.n, args.method, args.data_dir)
  paths = movement.write(result, args.out)
  for line in lazy_rich.report_lines(result)[4:-2]:
    print(line)
  print(f"Results in {args.out}/: {', '.join(p.rsplit('/', 1)[-1] for p in paths)}.")
  return 0
