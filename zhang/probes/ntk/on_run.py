"""A finished run as ``zhang ntk`` needs it: read and checked (``prepare``), then rebuilt at
initialization with the trainer's own functions (``Rebuilt``).

``prepare`` reads the run's files and checks everything a user's input can get wrong (a
folder without a finished run, a config.json this code cannot rebuild the model of, --n,
memory) before anything is compiled or written. ``Rebuilt`` makes every replica's labels,
initial parameters and inputs as training did (``train.build_replicas``,
``step.init_state``, ``step.replica_inputs``), and ``check_init`` holds them against the
run's step-0 evaluation in metrics.jsonl: the initialization is a function of the seed, and
this is where a different code version would show.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zhang.analysis.ntk import CRITERIA, DEFAULT_CRITERION, DEFAULT_THRESHOLD
from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import data as data_lib
from zhang.experiment import models, randomize, train
from zhang.experiment import step as step_lib
from zhang.probes.ntk import dynamics as dyn
from zhang.probes.ntk import empirical as ntk
from zhang.rundir import metrics as metrics_lib
from zhang.runtime import mesh as mesh_lib

CHECKPOINTS = "checkpoints"  # zhang.rundir.checkpoint.DIRNAME, without importing Orbax for it
# Fields of config.json the rebuilt initialization, labels, inputs and schedule depend on: a
# config.json without one of them cannot say what the run trained. Other fields a newer code
# version added take their defaults (the run ran with what the default means).
REQUIRED_FIELDS = ("model", "dataset", "n_train", "n_test", "grid", "batch_size",
                   "learning_rate", "momentum", "lr_decay", "lr_decay_every", "max_steps",
                   "eval_every", "fit_threshold")
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

  def check(self) -> None:
    """UsageError for a flag out of range (the ones that need no run)."""
    if not 0 < self.threshold < 1:
      raise UsageError(f"--threshold {self.threshold} must be in (0, 1): the residual, as a "
                       f"fraction of its start, that counts as fitted")
    if self.criterion not in CRITERIA:
      raise UsageError(f"--criterion {self.criterion!r} must be one of {', '.join(CRITERIA)}")
    if self.loss not in dyn.LOSSES:
      raise UsageError(f"--loss {self.loss!r} must be one of {', '.join(dyn.LOSSES)}")
    if self.block is not None and self.block < 1:
      raise UsageError(f"--block {self.block} must be a positive number of examples")
    if self.memory_gb is not None and not self.memory_gb > 0:
      raise UsageError(f"--memory_gb must be > 0; got {self.memory_gb}")
    if self.dtype not in ("float32", "float64"):
      raise UsageError(f"--dtype {self.dtype!r} must be float32 or float64")
    if self.method not in ntk.METHODS:
      raise UsageError(f"--method {self.method!r} must be one of {', '.join(ntk.METHODS)}")


@dataclasses.dataclass
class Run:
  """A finished run's files."""
  path: str
  config: ml_collections.ConfigDict  # resolved
  summary: dict
  replicas: list  # config.Replica, in the run's order
  step0: dict[int, dict]  # replica -> its metrics.jsonl row at step 0


@dataclasses.dataclass
class Setup:
  """A request checked against a run, before any compilation."""
  run: Run
  request: Request
  dataset: data_lib.Dataset
  module: object
  kernel: ntk.TangentKernel
  n: int
  n_test: int
  record_steps: np.ndarray  # the evaluation grid up to the horizon
  memory: ntk.MemoryPlan


# --------------------------------------------------------------------------- reading

def read_run(workdir) -> Run:
  """The run in ``workdir``; UsageError (one line) unless it is a finished run whose
  config.json this code can rebuild. Reads files only."""
  path = metrics_lib.workdir_path(workdir)
  if not path.is_dir():
    raise UsageError(f"{workdir} is not a directory: pass the --workdir of a finished "
                     f"zhang train run")
  for name in (metrics_lib.CONFIG, metrics_lib.SUMMARY, metrics_lib.METRICS):
    if not (path / name).exists():
      raise UsageError(f"{workdir} holds no finished run ({name} is missing): pass the "
                       f"--workdir of a zhang train run that has completed")
  try:
    config_dict = json.loads((path / metrics_lib.CONFIG).read_text())
    summary = json.loads((path / metrics_lib.SUMMARY).read_text())
  except (OSError, ValueError) as e:
    raise UsageError(f"{workdir}: config.json or summary.json is unreadable "
                     f"({type(e).__name__}): is it a zhang train workdir?") from None
  if not isinstance(config_dict, dict) or not isinstance(summary, dict):
    raise UsageError(f"{workdir}: config.json or summary.json is not a JSON object")
  if summary.get("status") != "complete":
    raise UsageError(f"the run in {workdir} is not finished (summary.json says status "
                     f"{summary.get('status')!r} at step {summary.get('steps_run')}): let "
                     f"zhang train complete it, then run zhang ntk")
  if not (path / CHECKPOINTS).is_dir():
    raise UsageError(f"{workdir} has no {CHECKPOINTS}/ folder: not a finished zhang train "
                     f"run")
  if config_dict.get("models"):
    raise UsageError(f"{workdir} holds a study of several models: pass one model's run, "
                     f"e.g. {os.path.join(str(workdir), str(config_dict['models'][0]))}")
  config = rebuild_config(config_dict, workdir)
  replicas = config_lib.expand_grid(config)
  listed = [(r.get("kind"), r.get("corruption"), r.get("seed"))
            for r in summary.get("replicas", [])]
  if listed != [(r.kind, r.corruption, r.seed) for r in replicas]:
    raise UsageError(f"{workdir}: summary.json's replicas are not the grid its config.json "
                     f"expands to ({len(listed)} against {len(replicas)}): the files come "
                     f"from different runs or code versions, so the replicas cannot be "
                     f"rebuilt")
  for field in ("model", "dataset"):
    if field in summary and summary[field] != config[field]:
      raise UsageError(f"{workdir}: summary.json's {field} {summary[field]!r} is not "
                       f"config.json's {config[field]!r}: the files come from different runs")
  return Run(os.fspath(path), config, summary, replicas,
             _step0_rows(path / metrics_lib.METRICS))


def rebuild_config(config_dict: dict, workdir="the run") -> ml_collections.ConfigDict:
  """The resolved config of a run's config.json; UsageError when this code cannot rebuild
  the run's initial parameters from it."""
  why = f"cannot rebuild the initial parameters of the run in {workdir} from its config.json"
  missing = [f for f in REQUIRED_FIELDS if f not in config_dict]
  if missing:
    raise UsageError(f"{why}: it lacks {', '.join(missing)} (written by another version of "
                     f"the code)")
  base = config_lib.to_json_dict(config_lib.base_config())
  filled = {**{k: v for k, v in base.items() if k not in config_dict}, **config_dict}
  try:
    return config_lib.resolve(ml_collections.ConfigDict(filled))
  except UsageError as e:
    raise UsageError(f"{why}: {e}") from None
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise UsageError(f"{why}: {type(e).__name__}: {e}") from None


def _step0_rows(path) -> dict[int, dict]:
  """metrics.jsonl's rows of step 0, by replica (empty where a resumed run lost them)."""
  rows = {}
  with path.open() as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if row.get("step") != 0:
        if rows:
          break  # a run's first rows are step 0's
        continue
      rows[int(row["replica"])] = row
  return rows


def _checkpoint_shapes(path) -> dict | None:
  """Shapes of the params in the run's newest checkpoint (replica axis dropped), or None
  where the checkpoint's metadata cannot be read."""
  import orbax.checkpoint as ocp
  logging.getLogger("absl").setLevel(logging.ERROR)
  directory = metrics_lib.workdir_path(path) / CHECKPOINTS
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  if not steps:
    return None
  try:
    meta = ocp.PyTreeCheckpointer().metadata(directory / str(steps[-1]) / "state")
  except Exception:  # noqa: BLE001 - orbax raises various errors for damaged metadata
    return None
  meta = getattr(meta, "item_metadata", meta)
  tree = getattr(meta, "tree", meta)
  params = tree.get("params") if isinstance(tree, dict) else None
  if params is None:
    return None
  return jax.tree.map(lambda m: tuple(m.shape[1:]), params,
                      is_leaf=lambda m: hasattr(m, "shape"))


def _check_out(out) -> None:
  """--out must be a folder this process can write, or a place where one can be made (a
  gs:// folder is checked when it is written)."""
  if "://" in os.fspath(out):
    return
  path = os.path.abspath(os.fspath(out))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f"--out {out} exists and is not a directory: choose another path")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UsageError(f"--out {out} cannot be written ({existing} is not writable): choose "
                     f"another path")


def prepare(workdir, request: Request = Request(), out=None) -> Setup:
  """Checks a request against the run in ``workdir``; raises UsageError (one line) before
  anything is compiled or written."""
  request.check()
  if out is not None:
    _check_out(out)
  run = read_run(workdir)
  config = run.config
  optimizer = config.get("optimizer", "sgd_momentum")
  if optimizer != "sgd_momentum":
    raise UsageError(f"the run in {workdir} trained with {optimizer}: zhang ntk's kernel "
                     f"regime models SGD with momentum (a linear recurrence per eigenmode), "
                     f"which {optimizer}'s per-parameter scaling is not")
  dataset = data_lib.load(config.dataset, config.data_dir or None).subset(
      config.n_train or None, config.n_test or None)
  have, have_test = len(dataset.train_labels), len(dataset.test_labels)
  n = have if request.n is None else request.n
  if not 1 <= n <= have:
    raise UsageError(f"--n {n} is out of range: the run's training set has {have} examples "
                     f"(use --n 1..{have}, the first n)")
  n_test = have_test if request.n_test is None else request.n_test
  if not 0 <= n_test <= have_test:
    raise UsageError(f"--n_test {n_test} is out of range: the run's test set has "
                     f"{have_test} examples (use 0..{have_test})")
  horizon = request.horizon
  if horizon is None:
    horizon = dyn.horizon_steps(config.max_steps, config.eval_every)
  if horizon < config.eval_every:
    raise UsageError(f"--horizon {horizon} must be at least the run's eval_every "
                     f"({config.eval_every} steps)")
  module = models.get(config.model).build(dataset.num_classes)
  shape = data_lib.paper_crop(dataset.test_images[:1]).shape[1:]
  try:  # shapes only (jax.eval_shape): nothing is compiled
    kernel = ntk.TangentKernel(module, dataset.num_classes, shape, request.method)
  except Exception as e:  # noqa: BLE001 - a model that cannot take the data's shape
    raise UsageError(f"cannot rebuild the initial parameters of the run in {workdir}: "
                     f"{config.model} does not initialize on {shape} inputs "
                     f"({type(e).__name__})") from None
  saved = _checkpoint_shapes(run.path)
  if saved is not None and saved != kernel.param_shapes:
    raise UsageError(f"cannot rebuild the initial parameters of the run in {workdir}: its "
                     f"checkpoint's parameters have other shapes than config.json's "
                     f"{config.model} builds (another code version)")
  record = np.arange(0, horizon + 1, config.eval_every)
  budget = None if request.memory_gb is None else int(request.memory_gb * 1e9)
  memory = ntk.plan_memory(n, n_test, dataset.num_classes, kernel.floats_per_example,
                           len(record), request.block, budget, request.dtype)
  if not memory.fits:
    if memory.max_n == 0:
      raise UsageError(f"the kernel of {config.model} does not fit in memory even for one "
                       f"example: it needs {memory.total_bytes / 1e9:.3g} GB "
                       f"({memory.describe()}): lower --block or --n_test, or raise "
                       f"--memory_gb")
    raise UsageError(f"--n {n} needs {memory.total_bytes / 1e9:.3g} GB "
                     f"({memory.describe()}): use --n {memory.max_n} or less (the largest "
                     f"that fits), lower --n_test or --block, or raise --memory_gb")
  return Setup(run, request, dataset, module, kernel, n, n_test, record, memory)


# --------------------------------------------------------------------------- rebuilding

def kernel_key(r) -> tuple:
  """Replicas with the same key share a kernel: the same initialization (seed) and inputs
  (kind; a pixel kind's randomization also depends on the corruption level's salt).
  Label corruption and hyper-parameters change only the labels and the dynamics."""
  return (r.seed, r.kind) if r.kind == "labels" else (r.seed, r.kind, r.corruption)


def _apply(module, params, state, x):
  return module.apply({"params": params, **state}, x, train=False)


def _inputs(kind, settings, rep, d, x_u8, indices, split):
  return step_lib.replica_inputs(kind, settings, rep, d, x_u8, indices, split)


class Rebuilt:
  """A run's replicas at step 0 as the trainer built them (this compiles)."""

  def __init__(self, setup: Setup):
    self.setup = setup
    config, ds = setup.run.config, setup.dataset
    mesh = mesh_lib.make_mesh((-1, 1))
    padded = mesh_lib.pad(setup.run.replicas, mesh.shape["replica"])
    self.settings = step_lib.StepSettings.from_config(config, padded)
    self.init_keys, self.reps, noise = train.build_replicas(
        padded, ds, self.settings, mesh_lib.replica_sharding(mesh))
    self.labels = np.asarray(self.reps.labels)  # (R, n_train) as each replica trained
    self.label_noise = np.asarray(noise)
    self.data = train.device_data(ds, mesh_lib.replicated(mesh))
    sample = jnp.zeros((1, *self.data.test_images.shape[1:]), jnp.float32)
    init = jax.jit(functools.partial(step_lib.init_state, setup.module, self.settings))
    self._init = lambda key: init(key, sample)
    self._logits = jax.jit(functools.partial(_apply, setup.module))
    self._inputs = {}

  def state(self, r) -> tuple[dict, dict]:
    """Replica ``r``'s initial (params, non-trained state: batch statistics or {})."""
    state = jax.device_get(self._init(self.init_keys[r.index]))
    return state.params, ({"batch_stats": state.batch_stats} if state.batch_stats else {})

  def inputs(self, r, split: int):
    """Replica ``r``'s whole split as it evaluates it: randomized, whitened, not
    augmented."""
    if r.kind not in self._inputs:
      self._inputs[r.kind] = jax.jit(functools.partial(_inputs, r.kind, self.settings))
    d = self.data
    images = d.train_images if split == randomize.TRAIN else d.test_images
    rep = jax.tree.map(lambda a: a[r.index], self.reps)
    return self._inputs[r.kind](rep, d, images, jnp.arange(images.shape[0]),
                                jnp.asarray(split, jnp.int32))

  def logits(self, params, state, x) -> np.ndarray:
    """The network's logits on ``x``, float64 on the host, in batches of the run's
    eval_batch_size (the last padded, so one program serves every batch)."""
    batch = min(self.setup.run.config.eval_batch_size, x.shape[0])
    out = []
    for i in range(0, x.shape[0], batch):
      part = x[i:i + batch]
      pad = batch - part.shape[0]
      if pad:
        part = jnp.concatenate([part, jnp.zeros((pad, *part.shape[1:]), part.dtype)])
      out.append(np.asarray(self._logits(params, state, part), np.float64)[:batch - pad])
    return np.concatenate(out)


def _logsumexp(f: np.ndarray) -> np.ndarray:
  top = f.max(axis=1, keepdims=True)
  return top + np.log(np.exp(f - top).sum(axis=1, keepdims=True))


def check_init(run: Run, members, f_train, f_test, labels, test_labels) -> list[str]:
  """Holds the rebuilt initialization against the run's step-0 evaluation: train loss (the
  replica's labels on the whole training set), train and test accuracy. UsageError on a
  mismatch; returns notes on replicas without a step-0 row."""
  notes = []
  logp = f_train - _logsumexp(f_train)
  test_acc = float(np.mean(f_test.argmax(1) == test_labels))
  n_train, n_test = len(f_train), max(len(test_labels), 1)
  for r in members:
    row = run.step0.get(r.index)
    if row is None or row.get("train_loss") is None:
      notes.append(f"replica {r.index} has no step-0 row in metrics.jsonl")
      continue
    lab = labels[r.index]
    loss = float(-np.mean(logp[np.arange(n_train), lab]))
    acc = float(np.mean(f_train.argmax(1) == lab))
    # Accuracies may differ by an argmax tie broken the other way under other rounding.
    ok = (math.isclose(loss, row["train_loss"], rel_tol=INIT_LOSS_RTOL)
          and abs(acc - row["train_acc"]) <= 2.0 / n_train + 1e-6
          and abs(test_acc - row["test_acc"]) <= 2.0 / n_test + 1e-6)
    if not ok:
      raise UsageError(
          f"cannot rebuild the initial parameters of the run in {run.path}: replica "
          f"{r.index} rebuilt from config.json has step-0 train loss {loss:.5g}, train "
          f"accuracy {acc:.4f}, test accuracy {test_acc:.4f}, where metrics.jsonl has "
          f"{row['train_loss']:.5g}, {row['train_acc']:.4f}, {row['test_acc']:.4f} "
          f"(another code version initialized or randomized it)")
  return notes
