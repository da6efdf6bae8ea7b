"""`zhang kernel`: minimum-norm kernel interpolation (Section 5) from the command line.

  zhang kernel --dataset fashion_mnist --n 5000 --kernel rbf --features gabor --json

Progress goes to stderr; the result (one JSON object with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

from zhang.errors import UsageError
from zhang.probes.kernels import features as features_lib
from zhang.probes.kernels import interpolation as kernels

_DEFAULT_N = 10000


def register(subparsers) -> argparse.ArgumentParser:
  """Adds the `kernel` sub-command to an argparse subparsers object."""
  p = subparsers.add_parser(
      "kernel", help="minimum-norm kernel interpolation K a = Y (paper Section 5)",
      description="Solve K a = Y (one-hot Y) on the first --n training examples by "
                  "Cholesky in float64; report test error and the solution's norm.")
  p.add_argument("--dataset", required=True, help="dataset name, e.g. digits, fashion_mnist")
  p.add_argument("--n", type=int, default=None,
                 help=f"training examples, the first ones (default: min({_DEFAULT_N}, all); "
                      f"0: all)")
  p.add_argument("--n_test", type=int, default=0, help="test examples (default 0: all)")
  p.add_argument("--kernel", choices=(*kernels.KERNELS, "ntk"), default="rbf",
                 help="ntk: the empirical neural tangent kernel of --model at its "
                 "initialization from --seed (token datasets: modadd)")
  p.add_argument("--model", default="mlp_tokens",
                 help="--kernel ntk: the model whose tangent kernel it is (mlp_tokens, "
                 "transformer_1l)")
  p.add_argument("--features", choices=features_lib.NAMES, default=None,
                 help="default raw (images), onehot (token datasets: modadd)")
  p.add_argument("--modulus", type=int, default=113, help="modadd: the prime (default 113)")
  p.add_argument("--train_fraction", type=float, default=0.3,
                 help="modadd: the share of pairs that trains (default 0.3)")
  p.add_argument("--split_seed", type=int, default=0, help="modadd: the split's seed")
  p.add_argument("--num_filters", type=int, default=256,
                 help="random filters for --features random_conv (paper: 32000)")
  p.add_argument("--ridge", type=float, default=0.0,
                 help="added to K's diagonal (default 0: exact interpolation)")
  p.add_argument("--gamma", type=float, default=None,
                 help="rbf kernel exp(-gamma |x - x'|^2); default 1 / median squared distance")
  p.add_argument("--seed", type=int, default=0, help="random filters and bandwidth sample")
  p.add_argument("--data_dir", default=None, help="where the dataset files are")
  p.add_argument("--memory_gb", type=float, default=None,
                 help="memory budget (default: 80%% of MemAvailable)")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  p.set_defaults(func=run_kernel_command)
  return p


def _log(msg: str) -> None:
  print(f"[zhang kernel] {msg}", file=sys.stderr, flush=True)


def run_kernel_command(args) -> int:
  """Runs `zhang kernel`; returns the exit code (0 ok, 2 bad input)."""
  from zhang.experiment import data  # deferred: the parser must build without loading datasets
  try:
    if args.memory_gb is not None and not args.memory_gb > 0:
      raise UsageError(f"--memory_gb must be > 0; got {args.memory_gb}")
    ds = data.load(args.dataset, args.data_dir, dict(
        modulus=args.modulus, train_fraction=args.train_fraction, split_seed=args.split_seed))
    if args.features is None:
      args.features = "onehot" if ds.inputs == "tokens" else "raw"
    have_train, have_test = len(ds.train_labels), len(ds.test_labels)
    n = min(_DEFAULT_N, have_train) if args.n is None else (args.n or have_train)
    n_test = args.n_test or have_test
    if n < 0 or args.n_test < 0:
      raise UsageError("--n and --n_test must be >= 0 (0 means the whole split)")
    budget = None if args.memory_gb is None else int(args.memory_gb * 1e9)
    if args.kernel == "ntk":
      from zhang.probes.ntk import empirical as ntk  # deferred: jax
      result = ntk.token_interpolation(ds, n, n_test, args.model, args.seed, args.ridge, _log)
    else:
      result = kernels.evaluate(
          ds, n, n_test, kernel=args.kernel, features=args.features,
          num_filters=args.num_filters, ridge=args.ridge, gamma=args.gamma, seed=args.seed,
          memory_budget_bytes=budget, log=_log)
  except UsageError as e:
    print(f"zhang kernel: error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(result))
  else:
    print(f"{result['dataset']} n={result['n_train']} {result['kernel']} kernel on "
          f"{result['features']} features ({result['feature_dim']} dims): "
          f"test error {result['test_error']:.4f}, train error {result['train_error']:.4f}, "
          f"norm {result['norm']:.4g}, {result['seconds']:.1f}s")
    if result.get("commuted_in_train") is not None:  # modadd: what commutativity alone gives
      on, off = (result["test_error_commuted_in_train"],
                 result["test_error_commuted_not_in_train"])
      print(f"  test pairs whose (b, a) trains ({100 * result['commuted_in_train']:.0f}%): "
            f"error {'-' if on is None else f'{on:.4f}'}; the rest: error "
            f"{'-' if off is None else f'{off:.4f}'}")
  return 0
