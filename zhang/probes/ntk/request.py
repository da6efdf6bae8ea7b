"""What ``zhang ntk`` is asked for (``Request``), checked against a finished run before
anything is compiled (``prepare``), and the rebuilt initialization held against the run's
own step-0 evaluation (``check_init``).

The run itself, its replicas' labels, inputs and initial parameters, comes from
``zhang.probes.run``, which rebuilds them with the trainer's functions. ``prepare`` checks
everything a user's input can get wrong (a folder without a finished run, files of different
runs, ``n``, memory) and compiles nothing; ``check_init`` runs the trainer's evaluation on
the rebuilt initialization and compares it with metrics.jsonl's step 0: the initialization
is a function of the seed, and this is where a different code version would show.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from zhang.analysis.ntk import CRITERIA, DEFAULT_CRITERION, DEFAULT_THRESHOLD
from zhang.errors import UsageError
from zhang.experiment import data as data_lib
from zhang.probes import run as run_lib
from zhang.probes.ntk import dynamics as dyn
from zhang.probes.ntk import empirical as ntk

# The step-0 check: the rebuilt network's training loss against metrics.jsonl's (float32
# sums in another order and batching differ by about 1e-6; another initialization by
# percents).
INIT_LOSS_RTOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Request:
  """What ``zhang ntk`` was asked for (its flags)."""
  n: int | None = None  # training examples for the kernel (the first); None: all
  n_test: int | None = None  # test examples for interpolation; None: all
  threshold: float = DEFAULT_THRESHOLD  # residual fraction that counts as fitted
  criterion: str = DEFAULT_CRITERION  # what predicted_fit_step uses (CRITERIA)
  loss: str = "cross_entropy"  # the quadratic the kernel regime trains on (dyn.LOSSES)
  horizon: int | None = None  # last predicted step; None: dyn.horizon_steps
  block: int | None = None  # examples per panel; None: about ntk.PANEL_BYTES
  memory_gb: float | None = None  # budget; None: 80% of MemAvailable
  dtype: str = "float32"  # of the kernel's features and products
  method: str = "structured"  # ntk.METHODS
  data_dir: str | None = None  # where the run's dataset is; None: where the run read it

  def check(self) -> None:
    """UsageError for a setting out of range (the ones that need no run)."""
    if not 0 < self.threshold < 1:
      raise UsageError(f"`threshold` {self.threshold} must be in (0, 1): the residual, as a "
                       f"fraction of its start, that counts as fitted")
    for name, allowed in (("criterion", CRITERIA), ("loss", dyn.LOSSES),
                          ("dtype", ("float32", "float64")), ("method", ntk.METHODS)):
      if getattr(self, name) not in allowed:
        raise UsageError(f"`{name}` {getattr(self, name)!r} must be one of "
                         f"{', '.join(allowed)}")
    if self.block is not None and self.block < 1:
      raise UsageError(f"`block` {self.block} must be a positive number of examples")
    if self.memory_gb is not None and not self.memory_gb > 0:
      raise UsageError(f"`memory_gb` must be > 0; got {self.memory_gb}")


@dataclasses.dataclass
class Setup:
  """A request checked against a run, before any compilation."""
  run: run_lib.Run
  request: Request
  kernel: ntk.TangentKernel
  n: int
  n_test: int
  record_steps: np.ndarray  # the evaluation grid up to the horizon
  memory: ntk.MemoryPlan

  @property
  def dataset(self) -> data_lib.Dataset:
    return self.run.dataset

  @property
  def module(self):
    return self.run.module


def _check_out(out) -> None:
  """``out`` must be a folder this process can write, or a place where one can be made (a
  gs:// folder is checked when it is written)."""
  if "://" in os.fspath(out):
    return
  path = os.path.abspath(os.fspath(out))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f"`out` {out} exists and is not a directory: choose another path")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UsageError(f"`out` {out} cannot be written ({existing} is not writable): choose "
                     f"another path")


def _finished(workdir, request: Request) -> run_lib.Run:
  """The finished run in ``workdir``, trained by SGD with momentum (what the kernel regime
  models)."""
  run = run_lib.open(workdir, request.data_dir)
  status = run.summary.get("status")
  if status != "complete":
    raise UsageError(f"the run in {workdir} is not finished (summary.json says status "
                     f"{status!r} at step {run.summary.get('steps_run')}): let `zhang train` "
                     f"complete it, then run `zhang ntk`")
  optimizer = run.config.get("optimizer", "sgd_momentum")
  if optimizer != "sgd_momentum":
    raise UsageError(f"the run in {workdir} trained with {optimizer}: zhang ntk's kernel "
                     f"regime models SGD with momentum (a linear recurrence per eigenmode), "
                     f"which {optimizer}'s per-parameter scaling is not")
  return run


def _sizes(run: run_lib.Run, request: Request) -> tuple[int, int, int]:
  """(n, n_test, horizon) of the request on the run; UsageError out of range."""
  have, have_test = run.n, len(run.dataset.test_labels)
  n = have if request.n is None else request.n
  if not 1 <= n <= have:
    raise UsageError(f"`n` {n} is out of range: the run's training set has {have} examples "
                     f"(use `n` 1..{have}, the first n)")
  n_test = have_test if request.n_test is None else request.n_test
  if not 0 <= n_test <= have_test:
    raise UsageError(f"`n_test` {n_test} is out of range: the run's test set has "
                     f"{have_test} examples (use 0..{have_test})")
  config = run.config
  horizon = request.horizon
  if horizon is None:
    horizon = dyn.horizon_steps(config.max_steps, config.eval_every)
  if horizon < config.eval_every:
    raise UsageError(f"`horizon` {horizon} must be at least the run's eval_every "
                     f"({config.eval_every} steps)")
  return n, n_test, horizon


def prepare(workdir, request: Request | None = None, out=None) -> Setup:
  """Checks a request against the run in ``workdir``; raises UsageError (one line) before
  anything is compiled or written."""
  request = request or Request()
  request.check()
  if out is not None:
    _check_out(out)
  run = _finished(workdir, request)
  n, n_test, horizon = _sizes(run, request)
  ds, shape = run.dataset, run.input_shape
  try:  # shapes only (jax.eval_shape): nothing is compiled
    kernel = ntk.TangentKernel(run.module, ds.num_classes, shape, request.method)
  except Exception as e:  # noqa: BLE001 - a model that cannot take the data's shape
    raise UsageError(f"cannot rebuild the initial parameters of the run in {workdir}: "
                     f"{run.config.model} does not initialize on {shape} inputs "
                     f"({type(e).__name__})") from None
  record = np.arange(0, horizon + 1, run.config.eval_every)
  budget = None if request.memory_gb is None else int(request.memory_gb * 1e9)
  memory = ntk.plan_memory(n, n_test, ds.num_classes, kernel.floats_per_example,
                           len(record), request.block, budget, request.dtype)
  if not memory.fits:
    if memory.max_n == 0:
      raise UsageError(f"the kernel of {run.config.model} does not fit in memory even for "
                       f"one example: it needs {memory.total_bytes / 1e9:.3g} GB "
                       f"({memory.describe()}): lower `block` or `n_test`, or raise "
                       f"`memory_gb`")
    raise UsageError(f"`n` {n} needs {memory.total_bytes / 1e9:.3g} GB "
                     f"({memory.describe()}): use `n` {memory.max_n} or less (the largest "
                     f"that fits), lower `n_test` or `block`, or raise `memory_gb`")
  return Setup(run, request, kernel, n, n_test, record, memory)


def kernel_key(r) -> tuple:
  """Replicas with the same key share a kernel: the same initialization (seed) and inputs
  (kind; a pixel kind's randomization also depends on the corruption level's salt).
  Label corruption and hyper-parameters change only the labels and the dynamics."""
  return (r.seed, r.kind) if r.kind == "labels" else (r.seed, r.kind, r.corruption)


def check_init(run: run_lib.Run) -> list[str]:
  """Holds the rebuilt initialization's evaluation (``run.evaluate(0)``: the trainer's
  program) against the run's step-0 rows in metrics.jsonl: train loss, train and test
  accuracy. UsageError on a mismatch; returns notes on replicas without a step-0 row."""
  recorded, notes = run.recorded(0), []
  n_train, n_test = run.n, max(len(run.dataset.test_labels), 1)
  for got in run.evaluate(0):
    row = recorded.get(got["replica"])
    if row is None or row.get("train_loss") is None:
      notes.append(f"replica {got['replica']} has no step-0 row in metrics.jsonl")
      continue
    # Accuracies may differ by an argmax tie broken the other way under other rounding.
    ok = (math.isclose(got["train_loss"], row["train_loss"], rel_tol=INIT_LOSS_RTOL)
          and abs(got["train_acc"] - row["train_acc"]) <= 2.0 / n_train + 1e-6
          and abs(got["test_acc"] - row["test_acc"]) <= 2.0 / n_test + 1e-6)
    if not ok:
      raise UsageError(
          f"cannot rebuild the initial parameters of the run in {run.path}: replica "
          f"{got['replica']} rebuilt from config.json has step-0 train loss "
          f"{got['train_loss']:.5g}, train accuracy {got['train_acc']:.4f}, test accuracy "
          f"{got['test_acc']:.4f}, where metrics.jsonl has {row['train_loss']:.5g}, "
          f"{row['train_acc']:.4f}, {row['test_acc']:.4f} (another code version initialized "
          f"or randomized it)")
  return notes
