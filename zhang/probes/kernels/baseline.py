"""The kernel baseline of a token-dataset run (modular addition), beside the trained network.

``zhang kernel RUN --out OUT`` opens the run (``zhang.probes.run``: its config, checked
against its config hash, and its dataset as it trained) and solves minimum-norm
interpolation K a = Y on its own training pairs (true labels) with two kernels: an RBF kernel on
the one-hot pairs, and the empirical tangent kernel of the run's model at an initialization
(seed 0), the kernel regime of that network. It writes ``OUT/kernel_baseline.json``
(``zhang.analysis.kernel_baseline`` describes the file), whose entries record the run they
were computed from; ``zhang report RUN --out OUT`` reads it beside the trained networks'
test accuracy at true labels. Entries of other runs already in the file are kept.

A tangent kernel that is singular (no exact interpolant) is said so, and solved again with a
ridge of 1e-6 x its mean diagonal (then 100x larger, up to the mean diagonal itself), which
is recorded. One whose contractions exceed ``max_tflop`` is skipped, saying so.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from etils import epath

from zhang.analysis.kernel_baseline import FILE, split_key
from zhang.errors import UsageError
from zhang.experiment import data as data_lib
from zhang.rundir import metrics as metrics_lib

RELATIVE_RIDGE = 1e-6  # x the tangent kernel's mean diagonal, when it is singular
# The tangent kernel's contractions computed by default, at most minutes on 2 CPU cores:
# mlp_tokens at modulus 113 (7 TFLOP) took 28-57 s there, transformer_1l at 31 (5.8 TFLOP,
# no Dense factoring) 6.5 min; transformer_1l at 59 (147 TFLOP) is an accelerator's.
MAX_NTK_FLOPS = 10e12
FORMAT = 2  # of kernel_baseline.json's entries; 2: with ``settings`` (the run)


def compute(run, log: Callable[[str], None] = lambda s: None,
            max_flops: float = MAX_NTK_FLOPS) -> dict:
  """The RBF and tangent-kernel interpolants of one run's split (``run``: a
  ``zhang.probes.run.Run``), as one JSON-able entry."""
  from zhang.probes.kernels import interpolation as kernels
  key = split_key(run.config)
  ds = run.dataset
  n, n_test = len(ds.train_labels), len(ds.test_labels)
  rbf = kernels.evaluate(ds, n, n_test, kernel="rbf", features="onehot", log=log)
  rows = [dict(kernel="rbf", features="onehot", ridge=0.0, singular=False,
               train_acc=1 - rbf["train_error"], test_acc=1 - rbf["test_error"],
               **_commuted(rbf), seconds=rbf.get("seconds")),
          dict(kernel="ntk", features=f"{key['model']} tangent at initialization",
               **_tangent(ds, key, log, max_flops))]
  return dict(key=key, format=FORMAT, settings=_settings(run), n_train=n, n_test=n_test,
              chance=1 / ds.num_classes, commuted_in_train=rbf.get("commuted_in_train"),
              rows=rows)


def _settings(run) -> dict:
  """The run an entry was computed from (``zhang.analysis.provenance``)."""
  return dict(run=run.path, config_hash=run.config_hash)


def _tangent(ds, key: dict, log, max_flops: float) -> dict:
  """The tangent kernel's row: its numbers, or ``skipped`` saying why there are none."""
  from zhang.probes.kernels import interpolation as kernels
  from zhang.probes.ntk import empirical as ntk
  n, n_test = len(ds.train_labels), len(ds.test_labels)
  work = ntk.token_interpolation_flops(ds, n, n_test, key["model"])
  if work > max_flops:
    return dict(skipped=(f"about {work / 1e12:,.0f} TFLOP of contractions, over the "
                         f"budget of {max_flops / 1e12:g}: rerun zhang kernel RUN --out OUT "
                         f"--max_tflop {work / 1e12 * 1.1:.0f} (an accelerator's minutes)"))
  try:
    t = ntk.token_interpolation(ds, n, n_test, key["model"], seed=0, log=log,
                                singular_ridge=RELATIVE_RIDGE)
  except kernels.SingularKernelError as e:  # singular even with the largest ridge
    return dict(skipped=f"singular even with a ridge of its mean diagonal: {e}")
  return dict(ridge=t["ridge"], singular=t["singular"], train_acc=1 - t["train_error"],
              test_acc=1 - t["test_error"], **_commuted(t), seconds=t["seconds"])


def _commuted(result: dict) -> dict:
  """Test accuracy on the test pairs whose commuted pair (b, a) trains, and on the rest."""
  acc = lambda e: None if e is None else 1 - e  # noqa: E731
  return dict(test_acc_commuted=acc(result.get("test_error_commuted_in_train")),
              test_acc_not_commuted=acc(result.get("test_error_commuted_not_in_train")))


def _open(workdir, data_dir: str | None = None):
  """The run (``zhang.probes.run``); UsageError for a run on images."""
  from zhang.probes import run as run_lib
  run = run_lib.open(workdir, data_dir)
  if data_lib.input_kind(run.config.dataset) != "tokens":
    raise UsageError(f"{workdir} trained on {run.config.dataset}: the kernel baseline is for "
                     f"token datasets (modadd); on images use zhang kernel --dataset "
                     f"{run.config.dataset} or zhang ntk RUN --out OUT")
  return run


def run(workdir, out, log: Callable[[str], None] = lambda s: None,
        max_flops: float = MAX_NTK_FLOPS, data_dir: str | None = None
        ) -> tuple[epath.Path, dict]:
  """Computes the baseline of the token-dataset run in ``workdir`` and writes
  ``out/kernel_baseline.json``, keeping the entries of other runs and splits found there;
  returns its path and this run's entry. A split too large for this machine's memory is an
  entry with ``error``."""
  r = _open(workdir, data_dir)
  start = time.perf_counter()
  try:
    entry = compute(r, log, max_flops)
    log(f"rbf and the tangent kernel of {r.config.model} at initialization in "
        f"{time.perf_counter() - start:.0f} s")
  except UsageError as e:  # too large for this machine's memory: said in the report
    entry = dict(key=split_key(r.config), format=FORMAT, settings=_settings(r), error=str(e))
    log(f"not computed: {e}")
  out = metrics_lib.workdir_path(out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / FILE
  metrics_lib.write_json(path, _kept(path, [entry]) + [entry])
  return path, entry


def _kept(path: epath.Path, new: list[dict]) -> list[dict]:
  """The entries of ``path`` that ``new`` does not replace: other runs' (another config
  hash) or other splits'. Entries that record no run (an older file) are dropped."""
  try:
    old = json.loads(path.read_text()) if path.exists() else []
  except (OSError, ValueError):
    old = []
  if not isinstance(old, list):
    return []
  replaced = {(json.dumps(e["key"], sort_keys=True), e["settings"]["config_hash"])
              for e in new}
  return [e for e in old if isinstance(e, dict) and isinstance(e.get("settings"), dict)
          and "key" in e
          and (json.dumps(e["key"], sort_keys=True), e["settings"].get("config_hash"))
          not in replaced]
