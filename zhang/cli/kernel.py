"""`zhang kernel`: minimum-norm kernel interpolation (Section 5) from the command line.

  zhang kernel --dataset fashion_mnist --n 5000 --kernel rbf --features gabor --json
  zhang kernel runs/modadd --out report        # the kernel baseline of a modadd run

With --dataset: one kernel on a dataset's first --n examples. With a run directory (a run on
a token dataset, modular addition): the run's kernel baseline, an RBF kernel on the one-hot
pairs and the tangent kernel of the run's model at initialization on the run's own split,
written to OUT/kernel_baseline.json, which `zhang report RUN --out OUT` reads
(``zhang/probes/kernels/baseline.py``). Progress goes to stderr; the result (one JSON object
with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

from zhang.errors import UsageError, on_command_line
from zhang.probes.kernels import features as features_lib
from zhang.probes.kernels import interpolation as kernels
from zhang.rundir import storage

_DEFAULT_N = 10000
# The flags of the --dataset form; with RUN the baseline's kernels and split are the run's.
_DATASET_FLAGS = ("dataset", "n", "n_test", "kernel", "model", "features", "modulus",
                  "train_fraction", "split_seed", "num_filters", "ridge", "gamma", "seed",
                  "memory_gb", "json")


def register(subparsers) -> argparse.ArgumentParser:
  """Adds the `kernel` sub-command to an argparse subparsers object."""
  p = subparsers.add_parser(
      "kernel", help="minimum-norm kernel interpolation K a = Y (paper Section 5)",
      description="Solve K a = Y (one-hot Y) on the first --n training examples by "
                  "Cholesky in float64; report test error and the solution's norm. With "
                  "RUN (a modadd run): its kernel baseline, written to "
                  "OUT/kernel_baseline.json for zhang report.")
  p.add_argument("run", nargs="?", metavar="RUN",
                 help="a run directory on a token dataset (modadd): compute its kernel "
                 "baseline (RBF on one-hot pairs and its model's tangent kernel at "
                 "initialization, on its own split) into --out")
  p.add_argument("--out", default=None,
                 help="with RUN: the folder of kernel_baseline.json (zhang report --out)")
  p.add_argument("--max_tflop", type=float, default=None,
                 help="with RUN: the tangent kernel's contractions it computes at most, in "
                 "TFLOP (default 10: minutes on a CPU); a larger one is skipped, saying so")
  p.add_argument("--dataset", default=None,
                 help="dataset name, e.g. digits, fashion_mnist (without RUN)")
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
  # configs/modadd.py's defaults, so the command and the config speak of the same split
  p.add_argument("--modulus", type=int, default=59,
                 help="modadd: the prime (default 59, as configs/modadd.py)")
  p.add_argument("--train_fraction", type=float, default=0.5,
                 help="modadd: the share of pairs that trains (default 0.5, as "
                 "configs/modadd.py)")
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
  p.set_defaults(func=run_kernel_command,
                 dataset_defaults={f: p.get_default(f) for f in _DATASET_FLAGS})
  return p


def _log(msg: str) -> None:
  print(f"[zhang kernel] {msg}", file=sys.stderr, flush=True)


def run_kernel_command(args) -> int:
  """Runs `zhang kernel`; returns the exit code (0 ok, 2 bad input)."""
  try:
    if args.run is not None:
      return _baseline(args)
    result = _dataset_result(args)
  except UsageError as e:
    print(f"zhang kernel: error: "
          f"{on_command_line(e, getattr(args, 'flags', None), n_train='--n')}",
          file=sys.stderr)
    return 2
  _print_result(result, args.json)
  return 0


def _baseline(args) -> int:
  """`zhang kernel RUN --out OUT`: the run's kernel baseline into OUT/kernel_baseline.json."""
  set_flags = [f for f in _DATASET_FLAGS
               if getattr(args, f) != args.dataset_defaults.get(f, getattr(args, f))]
  if set_flags:
    raise UsageError(f"--{set_flags[0]} is for the --dataset form; with RUN the kernels and "
                     f"the split are the run's baseline (give RUN --out OUT only)")
  if args.out is None:
    raise UsageError("with RUN, --out is required: the folder zhang report --out reads")
  if args.max_tflop is not None and not args.max_tflop > 0:
    raise UsageError(f"--max_tflop must be > 0; got {args.max_tflop}")
  storage.check_path(args.run, "run", write=False, flag="RUN")
  storage.check_path(args.data_dir, "data_dir", write=False)
  storage.check_out(args.out)
  from zhang.probes.kernels import baseline  # deferred: jax
  budget = baseline.MAX_NTK_FLOPS if args.max_tflop is None else args.max_tflop * 1e12
  path, e = baseline.run(args.run, args.out, log=_log, max_flops=budget,
                         data_dir=args.data_dir)
  k = e["key"]
  head = f"{k['dataset']} P = {k['modulus']}, train fraction {k['train_fraction']:g}"
  if "error" in e:
    print(f"{head}: not computed: {e['error']}")
  for row in e.get("rows", []):
    what = f"{head}, {row['kernel']} ({row['features']})"
    print(f"{what}: skipped, {row['skipped']}" if "skipped" in row else
          f"{what}: train acc {row['train_acc']:.4f}, test acc {row['test_acc']:.4f}")
  print(f"Results in {path}; zhang report {args.run} --out {args.out} reads it.")
  return 0


def _dataset_result(args) -> dict:
  """`zhang kernel --dataset D ...`: one kernel's interpolation result."""
  from zhang.experiment import data  # deferred: the parser must build without loading datasets
  if args.dataset is None:
    raise UsageError("give --dataset NAME (one kernel on a dataset) or a run directory RUN "
                     "--out OUT (a modadd run's kernel baseline)")
  if args.out is not None:
    raise UsageError("--out is for RUN (a run's kernel baseline); --dataset prints its result")
  if args.memory_gb is not None and not args.memory_gb > 0:
    raise UsageError(f"--memory_gb must be > 0; got {args.memory_gb}")
  if args.memory_gb is not None and not args.memory_gb * 1e9 > kernels._OVERHEAD_BYTES:
    raise UsageError(f"--memory_gb {args.memory_gb:g} is below the "
                     f"{kernels._OVERHEAD_BYTES / 1e9:.1f} GB a solve needs besides its kernel "
                     f"matrices: raise --memory_gb (default: 80% of MemAvailable)")
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
    return ntk.token_interpolation(ds, n, n_test, args.model, args.seed, args.ridge, _log)
  return kernels.evaluate(
      ds, n, n_test, kernel=args.kernel, features=args.features,
      num_filters=args.num_filters, ridge=args.ridge, gamma=args.gamma, seed=args.seed,
      memory_budget_bytes=budget, log=_log)


def _print_result(result: dict, as_json: bool) -> None:
  if as_json:
    print(json.dumps(result))
    return
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
