"""A run as every probe sees it: ``run = open(workdir)``, rebuilt exactly as it trained.

A probe of a trained network (``zhang llc``, ``zhang ntk``, a notebook) needs what training
had: the config, the replicas, each replica's labels (corrupted as they were) and inputs
(randomized as they were), the model, and its parameters at a saved step or at
initialization. This module is the one place that rebuilds them, with the trainer's own
functions (``zhang.experiment.train``), so no probe can drift from training: a rebuilt run
reproduces the run's own evaluations (``evaluate`` against ``recorded``).

  run = open("runs/digits")
  run.steps                       # the saved checkpoints' steps
  run.evaluate(run.steps[-1])     # per replica: train/test loss and accuracy, as metrics.jsonl
  state = run.state(0)            # every replica's parameters at initialization

Reading is cheap and compiles nothing: ``open`` reads the run's files, checks that they
belong together (one config, one hash: the checkpoints' and summary.json's ``config_hash``
is that of config.json's config, the check training makes when it resumes) and loads the
dataset on the host. What lives on the devices (the dataset, each replica's labels and
permutation keys, the model's programs) is built on first use. Inputs are the evaluation's
view: randomized and whitened, never augmented. Bad input (not a run, no checkpoints, an
unknown step, files of different runs) raises UsageError, one line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import data as data_lib
from zhang.experiment import models, randomize, train
from zhang.experiment import program as program_lib
from zhang.experiment import step as step_lib
from zhang.rundir import checkpoint as checkpoint_lib
from zhang.rundir import format as format_lib
from zhang.rundir import metrics as metrics_lib
from zhang.runtime import mesh as mesh_lib
from zhang.runtime import plan as plan_lib

TRAIN, TEST = randomize.TRAIN, randomize.TEST  # the splits ``inputs`` takes


def open(workdir, data_dir: str | None = None) -> Run:
  """The run in ``workdir`` (one model's run of ``zhang train``, with checkpoints).

  ``data_dir``: where the run's dataset is, when not where the run read it. Reads files
  and the dataset only; UsageError (one line) for anything that is not such a run.
  """
  path = metrics_lib.workdir_path(workdir)
  if not path.is_dir():
    raise UsageError(f"{workdir} is not a directory: pass the workdir of a run of "
                     f"`zhang train`")
  fields = format_lib.read_config(path)  # UsageError: missing, unreadable, another format
  if fields.get("models"):
    raise UsageError(f"{workdir} holds a study of several models: pass one model's run, "
                     f"e.g. {os.path.join(os.fspath(path), str(fields['models'][0]))}")
  steps = saved_steps(path)
  config = _config(fields, path)
  config_hash = checkpoint_lib.config_hash(config_lib.identity(config))
  summary = format_lib.read_summary(path)
  if summary.get("config_hash") != config_hash:
    raise UsageError(f"{path}: summary.json records config hash "
                     f"{summary.get('config_hash')}, but config.json's config hashes to "
                     f"{config_hash}: the files come from different runs (or config.json was "
                     f"edited)")
  return Run(os.fspath(path), config, config_hash, config_lib.expand_grid(config), steps,
             summary, load_dataset(config, data_dir))


def from_config(config: ml_collections.ConfigDict, data_dir: str | None = None) -> Run:
  """A run of ``config`` that is not on disk: its replicas at initialization only (step 0),
  for a benchmark or a probe of the initial networks."""
  config = config_lib.resolve(config)
  return Run(None, config, checkpoint_lib.config_hash(config_lib.identity(config)),
             config_lib.expand_grid(config), [], None, load_dataset(config, data_dir))


def load_dataset(config, data_dir: str | None = None) -> data_lib.Dataset:
  """The run's dataset on the host, as training subset it (``n_train``, ``n_test``);
  ``data_dir`` overrides where it is read from."""
  if data_dir:
    config = ml_collections.ConfigDict(config.to_dict())
    config.data_dir = data_dir
  return train.load_dataset(config)


def saved_steps(workdir) -> list[int]:
  """The steps of a run's complete checkpoints; UsageError when there are none."""
  workdir = metrics_lib.workdir_path(workdir)
  directory = workdir / checkpoint_lib.DIRNAME
  if not directory.is_dir():
    raise UsageError(f"{workdir} has no checkpoints/ folder: pass the workdir of a run "
                     f"that `zhang train` has checkpointed")
  found = sorted(int(p.name) for p in directory.iterdir()
                 if p.name.isdigit() and (p / "state").is_dir())
  if not found:
    raise UsageError(f"{directory} holds no complete checkpoint: let the run save one "
                     f"(every checkpoint_every steps, and at the end)")
  return found


def _config(fields: dict, path) -> ml_collections.ConfigDict:
  """The resolved config of config.json's fields; UsageError for a field this code does not
  know or a config it refuses."""
  config = config_lib.base_config()
  unknown = sorted(set(fields) - set(config.keys()))
  if unknown:
    raise UsageError(f"{path}/config.json has field(s) {', '.join(unknown)} that this zhang "
                     f"does not know: read the run with the version of zhang that wrote it")
  try:
    for key, value in fields.items():
      config[key] = value
    return config_lib.resolve(config)
  except UsageError as e:
    raise UsageError(f"{path}/config.json: {e}") from None
  except (TypeError, ValueError, KeyError, AttributeError) as e:  # a value of another type
    raise UsageError(f"{path}/config.json is not a config this zhang can read "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                     ) from None


class Run:
  """A run rebuilt as it trained. Per-replica arrays on the devices have the grid padded to
  the mesh's replica axis (``padded`` rows, ``mesh_lib.pad``); host arrays (``labels``,
  ``label_noise``) and results have one row per replica of ``replicas``."""

  def __init__(self, path: str | None, config, config_hash: str, replicas: list, steps: list,
               summary: dict | None, dataset: data_lib.Dataset):
    self.path = path  # None: a run that is not on disk (``from_config``)
    self.config = config  # resolved, as config.json has it (without ``data_dir`` overrides)
    self.config_hash = config_hash  # as summary.json and every checkpoint record it
    self.replicas = replicas  # config.Replica, in the run's order
    self.steps = steps  # the saved checkpoints' steps (``state`` also takes 0)
    self.summary = summary  # summary.json's fields (None: not on disk)
    self.dataset = dataset  # on the host
    spec = models.get(config.model)
    self.module = spec.build(dataset.num_classes)  # the Linen model
    self.has_batch_norm = spec.batch_norm
    self.n = len(dataset.train_labels)  # training examples
    # One example's input, as the model takes it (the paper's centre crop of 32x32 images).
    self.input_shape = data_lib.paper_crop(dataset.test_images[:1]).shape[1:]
    self._inputs, self._evaluate = {}, None

  # -------------------------------------------------------------------- on the devices

  @functools.cached_property
  def mesh(self) -> jax.sharding.Mesh:
    """The run's mesh, or every device on ``replica`` where its mesh needs other devices."""
    try:
      return mesh_lib.make_mesh(self.config.mesh_shape)
    except UsageError:
      return mesh_lib.make_mesh((-1, 1))

  @functools.cached_property
  def padded(self) -> int:
    return len(mesh_lib.pad(self.replicas, self.mesh.shape["replica"]))

  @functools.cached_property
  def settings(self) -> step_lib.StepSettings:
    settings = step_lib.StepSettings.from_config(
        self.config, mesh_lib.pad(self.replicas, self.mesh.shape["replica"]))
    return dataclasses.replace(settings, end_layers=train.end_layers(self.module,
                                                                    self.input_shape))

  @functools.cached_property
  def plan(self) -> plan_lib.Plan:
    """The execution plan (speed only) for this machine and the padded grid."""
    return plan_lib.choose(self.config.model, self.padded // self.mesh.shape["replica"])

  @functools.cached_property
  def data(self) -> step_lib.DeviceDataset:
    """The dataset on the devices (replicated), centre-cropped, uint8."""
    return train.device_data(self.dataset, mesh_lib.replicated(self.mesh))

  @functools.cached_property
  def _replica_constants(self):
    padded = mesh_lib.pad(self.replicas, self.mesh.shape["replica"])
    keys, reps, noise = train.build_replicas(padded, self.dataset, self.settings,
                                             mesh_lib.replica_sharding(self.mesh))
    return keys, reps, np.asarray(noise)[:len(self.replicas)]

  @functools.cached_property
  def reps(self) -> step_lib.ReplicaConstants:
    """Every replica's labels, keys, hyper-parameters and initial parameters, padded, on
    ``replica``."""
    return self._replica_constants[1]._replace(initial_params=self._initial_state().params)

  def check_plain_outputs(self, probe: str) -> None:
    """One line when a replica trained with an output scale (alpha (f(w) - f(w_0))): the
    probes that read the model's own outputs would not see the network that trained."""
    scaled = sorted({r.output_scale for r in self.replicas} - {1.0})
    if scaled:
      raise UsageError(f"{probe} reads a network's own outputs, and this run's replicas "
                       f"trained alpha (f(w) - f(w_0)) at output scales "
                       f"{', '.join(f'{a:g}' for a in scaled)}: use `zhang ntk RUN --steps` "
                       f"(how far each kernel moved) on such a run")

  @functools.cached_property
  def labels(self) -> np.ndarray:
    """(replicas, n_train) int32: each replica's training labels, corrupted as trained."""
    return np.asarray(self.reps.labels)[:len(self.replicas)]

  @property
  def label_noise(self) -> np.ndarray:
    """(replicas,): the fraction of each replica's training labels the corruption changed."""
    return self._replica_constants[2]

  @property
  def apply(self):
    """The step's model: ``apply(step.TrainState, x, train) -> (float32 logits, batch
    stats)`` for one replica, in the run's compute dtype, under ``plan``."""
    return functools.partial(step_lib.apply_model, self.module, self.plan, self.settings,
                             self.has_batch_norm)

  # -------------------------------------------------------------------- parameters

  def state(self, step: int) -> step_lib.TrainState:
    """Every replica's (params, batch_stats) at ``step`` (0: initialization, else a saved
    checkpoint), padded and sharded on ``replica``; ``opt_state`` is empty."""
    if step == 0:
      return self._initial_state()
    params, batch_stats = self._saved(step)
    return self._put(params, batch_stats, np.arange(len(self.replicas)))

  def state_at(self, steps) -> step_lib.TrainState:
    """Like ``state``, with each replica at its own step: ``steps[i]`` (0 or a saved step)
    for replica i of ``replicas`` (e.g. each at its fit step)."""
    steps = [int(t) for t in steps]
    if len(steps) != len(self.replicas):
      raise ValueError(f"{len(steps)} steps for {len(self.replicas)} replicas")
    if len(set(steps)) == 1:
      return self.state(steps[0])
    loaded = {}
    for t in sorted(set(steps)):
      if t == 0:
        init = jax.device_get(self._initial_state())
        loaded[t] = (init.params, init.batch_stats)
      else:
        loaded[t] = self._saved(t)
    pick = lambda i, part: jax.tree.map(lambda a: np.asarray(a)[i], loaded[steps[i]][part])
    rows = [(pick(i, 0), pick(i, 1)) for i in range(len(steps))]
    stack = lambda part: jax.tree.map(lambda *a: np.stack(a), *[r[part] for r in rows])
    return self._put(stack(0), stack(1), np.arange(len(steps)))

  def _saved(self, step: int):
    """(params, batch_stats) of the checkpoint of ``step`` on the host, one row per
    replica; UsageError for a step without one or of another config."""
    if step not in self.steps:
      saved = ", ".join(map(str, self.steps)) or "none"
      raise UsageError(f"no checkpoint of step {step} in this run: saved steps are {saved} "
                       f"(and 0, the initialization)")
    saved = checkpoint_lib.load(self.path, step)
    if saved["meta"].get("config_hash") != self.config_hash:
      raise UsageError(f"the checkpoint of step {step} in {self.path} was written by another "
                       f"config (hash {saved['meta'].get('config_hash')}) than config.json's "
                       f"({self.config_hash})")
    return saved["params"], saved["batch_stats"]

  def _put(self, params, batch_stats, rows) -> step_lib.TrainState:
    """Host rows ``rows`` of (params, batch_stats), padded to the mesh and sharded."""
    rows = np.asarray(rows)[np.minimum(np.arange(self.padded), len(rows) - 1)]
    by_replica = mesh_lib.replica_sharding(self.mesh)
    put = lambda x: mesh_lib.put(np.asarray(x)[rows], by_replica)
    return step_lib.TrainState(jax.tree.map(put, params), jax.tree.map(put, batch_stats), ())

  def _initial_state(self) -> step_lib.TrainState:
    """The trainer's initialization (``train.build``): every replica's init key, vmapped."""
    init = functools.partial(step_lib.init_state, self.module, self.settings)
    sample = jnp.zeros((1, *self.input_shape), jnp.float32)
    states = jax.jit(jax.vmap(init, (0, None)),
                     out_shardings=mesh_lib.replica_sharding(self.mesh))(
        self._replica_constants[0], sample)
    return step_lib.TrainState(states.params, states.batch_stats, ())

  def variables(self, state: step_lib.TrainState, r) -> tuple[Any, dict]:
    """Replica ``r``'s (params, other collections: ``{"batch_stats": ...}`` or ``{}``) of
    ``state``, on the host: ``module.apply({"params": params, **other}, x, train=False)``."""
    one = lambda tree: jax.tree.map(lambda a: np.asarray(a[r.index]), tree)
    return one(state.params), ({"batch_stats": one(state.batch_stats)}
                               if state.batch_stats else {})

  # -------------------------------------------------------------------- inputs, outputs

  def inputs(self, r, split: int) -> jax.Array:
    """Replica ``r``'s whole ``split`` (TRAIN or TEST) as it evaluates it: randomized,
    whitened (token ids for a token dataset), not augmented."""
    if r.kind not in self._inputs:
      self._inputs[r.kind] = jax.jit(functools.partial(step_lib.replica_inputs, r.kind,
                                                       self.settings))
    d = self.data
    images = d.train_images if split == TRAIN else d.test_images
    rep = jax.tree.map(lambda a: a[r.index], self.reps)
    return self._inputs[r.kind](rep, d, images, jnp.arange(images.shape[0]),
                                jnp.asarray(split, jnp.int32))

  def logits(self, params, other: dict, x) -> np.ndarray:
    """One replica's logits on ``x`` (``variables``' params and other collections), float64
    on the host, in batches of the run's eval_batch_size (the last padded, so one program
    serves every batch); batch norm in evaluation mode."""
    fn = self._logits
    batch = min(self.config.eval_batch_size, x.shape[0])
    out = []
    for i in range(0, x.shape[0], batch):
      part = x[i:i + batch]
      pad = batch - part.shape[0]
      if pad:
        part = jnp.concatenate([part, jnp.zeros((pad, *part.shape[1:]), part.dtype)])
      out.append(np.asarray(fn(params, other, part), np.float64)[:batch - pad])
    return np.concatenate(out)

  @functools.cached_property
  def _logits(self):
    return jax.jit(lambda p, o, x: self.module.apply({"params": p, **o}, x, train=False))

  def evaluate(self, step: int) -> list[dict]:
    """Every replica's evaluation at ``step`` (0 or a saved step) by the trainer's own
    program: one dict per replica with ``step``, ``replica`` and the metrics as metrics.jsonl
    records them (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ...; NaN as
    None)."""
    return self.evaluate_state(self.state(step), step)

  def evaluate_state(self, state: step_lib.TrainState, step) -> list[dict]:
    """``evaluate``'s rows for any ``state`` (e.g. ``state_at``'s); ``step`` is what the
    rows record (a number, or one per replica)."""
    if self._evaluate is None:
      self._evaluate = program_lib.compile_grid(self.module, self.settings,
                                                self.has_batch_norm, self.plan,
                                                self.mesh).evaluate
    ev = jax.device_get(self._evaluate(state, self.reps, self.data))
    steps = np.broadcast_to(np.asarray(step), (len(self.replicas),)).tolist()
    return [dict(step=steps[i], replica=r.index,
                 **{k: _number(v[i]) for k, v in ev.items() if np.ndim(v) == 1})
            for i, r in enumerate(self.replicas)]

  def recorded(self, step: int) -> dict[int, dict]:
    """metrics.jsonl's rows of ``step``, by replica (empty when the run did not evaluate
    then, or a resumed run lost them)."""
    return {int(row["replica"]): row for row in self.metrics_rows() if row.get("step") == step}

  def metrics_rows(self):
    """metrics.jsonl's rows in order (none for a run that is not on disk), a line cut off
    by a crash left out."""
    if self.path is None:
      return
    path = metrics_lib.workdir_path(self.path) / metrics_lib.METRICS
    if not path.exists():
      return
    with path.open() as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if isinstance(row, dict) and "replica" in row and "step" in row:
          yield row


def _number(x) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None
