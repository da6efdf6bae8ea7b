"""``run(config, workdir)``: train a whole grid of replicas in one jit-compiled program.

The flow: validate the config and load the data (bad input fails here, before anything is
compiled or written), put the training set on the device once, build every replica's labels
and keys from its seed, initialize the stacked train state, then alternate ``eval_every``
steps of training (compiled calls of about ``CALL_SECONDS`` each) with an evaluation of every
replica on its whole training set and the test set, until every replica has fitted or
``max_steps``. With ``freeze_at_fit``, a replica's state stops changing at the evaluation
at which it fits (``frozen_replicas``); it is still evaluated, with the same results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from zhang.errors import UsageError
from zhang.experiment import augment, models, randomize
from zhang.experiment import config as config_lib
from zhang.experiment import data as data_lib
from zhang.experiment import feed as feed_lib
from zhang.experiment import step as step_lib
from zhang.experiment import stream as stream_lib
from zhang.rundir import checkpoint as checkpoint_lib
from zhang.rundir import format as format_lib
from zhang.rundir import metrics as metrics_lib
from zhang.rundir import progress as progress_lib
from zhang.rundir import workdir as workdir_lib
from zhang.runtime import flops as flops_lib
from zhang.runtime import memory as memory_lib
from zhang.runtime import mesh as mesh_lib
from zhang.runtime import plan as plan_lib


def prepare(config: ml_collections.ConfigDict, workdir, restart: bool = False,
            dataset=None):
  """Everything that can fail on user input, before any compilation or file write.

  ``dataset``: the config's dataset, already loaded and subset (a study loads it once).
  Returns (resolved config, replicas, dataset).
  """
  workdir = metrics_lib.workdir_path(workdir)
  config = config_lib.resolve(config)
  replicas = config_lib.expand_grid(config)
  plan_lib.parse(os.environ.get(plan_lib.ENV))  # a bad $ZHANG_PLAN, before any data
  workdir_lib.check_writable(workdir)
  check_workdir(workdir, config, restart)
  if dataset is None:
    dataset = load_dataset(config)
  config_lib.check_against_data(config, num_train(dataset))
  host = [r.augmentation for r in replicas if augment.HOST in augment.parts(r.augmentation)]
  if host and not _streamed(dataset):
    raise UsageError(f"augmentation {host[0]!r} is made on the host for a dataset streamed "
                     f"from it ({', '.join(data_lib.STREAM_ONLY)}); {config.dataset} is held "
                     f"on the device: use crop, flip or color")
  data_axis = mesh_lib.resolve_shape(config.mesh_shape, jax.device_count())[1]
  if config.get("stream", False) and config.batch_size % data_axis:
    raise UsageError(f"batch_size={config.batch_size} does not divide over the mesh's data "
                     f"axis of {data_axis} devices (mesh_shape): give a batch_size that is a "
                     f"multiple of {data_axis}")
  check_memory(config, replicas, dataset)
  return config, replicas, dataset


def check_memory(config, replicas, dataset) -> None:
  """Refuses, in one line, a grid that cannot fit on a device (``zhang.runtime.memory``)."""
  spec = models.get(config.model)
  input_shape = input_shape_of(dataset)
  module = spec.build(dataset.num_classes)
  per_device = replicas_per_device(config, len(replicas))
  data_axis = mesh_lib.resolve_shape(config.mesh_shape, jax.device_count())[1]
  vmapped = choose_plan(config, len(replicas)).replicas == "vmap"
  estimate = memory_lib.need(
      module, input_shape, models.param_count(config.model, input_shape, dataset.num_classes),
      copies=per_device, live=per_device if vmapped else 1,
      batch=-(-config.batch_size // data_axis),
      eval_batch=-(-config.eval_batch_size // data_axis),
      slots=2 if config.optimizer == "adamw" else 1, kept=1,  # w_0 (``build``)
      per_example=9 * len(dataset.train_labels))  # labels and fit steps (int32), noisy flags
  memory_lib.check(estimate, f"a grid of {len(replicas):,} replicas of {config.model}",
                   "lower the replicas (seeds, corruptions, kinds in `grid`), "
                   "`batch_size` or `eval_batch_size`, or use more devices")


def check_before_peers(config, workdir, restart: bool = False) -> None:
  """What ``prepare`` checks that needs no device (the config, the workdir, the dataset), for
  a process about to join others: its bad input is told before it waits on its peers (and
  they on it). ``prepare`` checks again, with the devices."""
  workdir = metrics_lib.workdir_path(workdir)
  config = config_lib.resolve(config)
  plan_lib.parse(os.environ.get(plan_lib.ENV))
  workdir_lib.check_writable(workdir)
  models = config.models if config_lib.is_study(config) else [config.model]
  for model in models:
    resolved = config_lib.resolve(config_lib.for_model(config, model)) if config.models \
        else config
    config_lib.expand_grid(resolved)
    if not config.models:
      check_workdir(workdir, resolved, restart)
  dataset = load_dataset(config)
  config_lib.check_against_data(config, num_train(dataset))


def load_dataset(config):
  """The config's dataset, subset to ``n_train`` and ``n_test``, as two classes with
  ``binary`` (``data_lib.binary``): training and every probe that rebuilds a run read it
  here, so they see the same labels."""
  names = (data_lib.STREAM_OPTIONS if config.dataset in data_lib.STREAM_ONLY
           else data_lib.MODADD_OPTIONS)
  options = {k: config[k] for k in names if k in config}
  dataset = data_lib.load(config.dataset, config.data_dir or None, options)
  dataset = dataset.subset(config.n_train or None, config.n_test or None)
  if config.get("binary", False) and _streamed(dataset):
    raise UsageError(f"binary=True relabels a dataset held in memory; {config.dataset} is "
                     f"streamed from the host: set binary=False")
  return data_lib.binary(dataset) if config.get("binary", False) else dataset


def check_workdir(workdir, config, restart: bool) -> None:
  """Refuses a workdir that holds a run of a different config, or of another run-file
  format (``zhang.rundir.format``), unless ``restart``."""
  if workdir.exists() and not workdir.is_dir():
    raise UsageError(f"workdir {workdir} exists and is not a directory: choose another path")
  if restart or not (workdir / metrics_lib.CONFIG).exists():
    return
  try:
    old = format_lib.read_config(workdir)
  except UsageError as e:
    if "not valid JSON" not in str(e) and "not an object" not in str(e):
      raise
    _repair_config(workdir, config, e)
    return
  old, new = config_lib.identity(old), config_lib.identity(config)
  if old != new:
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    raise UsageError(f"workdir {workdir} holds a run with a different config (differs in "
                     f"{', '.join(fields)}): use a new `workdir`, or `restart` to delete the "
                     f"old run's files and start over")


def _repair_config(workdir, config, damage: UsageError) -> None:
  """A damaged config.json: rewritten from this config when the run's newest checkpoint was
  written by it (its config hash), else the damage is refused, saying so."""
  found = None
  if (workdir / checkpoint_lib.DIRNAME).is_dir():
    latest = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, create=False)
    try:
      found = latest.latest_meta(("config_hash",))
    finally:
      latest.close()
  if found is None or found[1]["config_hash"] != checkpoint_lib.config_hash(
      config_lib.identity(config)):
    why = ("its newest checkpoint was written by another config" if found else
           "no readable checkpoint tells which config wrote it")
    raise UsageError(f"{str(damage).split(': the run')[0]}, and {why}: use a new `workdir`, "
                     f"or `restart` to delete the old run's files and start over") from None
  if jax.process_index() == 0:
    metrics_lib.write_config(workdir, config_lib.to_json_dict(config))
    print(f"zhang: {workdir / metrics_lib.CONFIG} was damaged; its checkpoint of step "
          f"{found[0]} was written by this config, so config.json is written again from it",
          file=sys.stderr)


def build_replicas(replicas, dataset, settings: step_lib.StepSettings, sharding,
                   order_seed: int | None = None):
  """Per-replica constants, computed on the devices from seeds and sharded on ``replica``;
  with an ``order_seed`` every replica takes the batch order of a replica of that seed
  (``batch_order="shared"``).

  Returns (init keys, step.ReplicaConstants, realized label noise per replica (replicated)).
  """
  seeds = np.asarray([r.seed for r in replicas], np.uint32)
  order_seeds = seeds if order_seed is None else np.full_like(seeds, order_seed)
  salts = np.asarray([randomize.randomization_salt(r.kind, r.corruption) for r in replicas],
                     np.uint32)
  p = np.asarray([r.corruption for r in replicas], np.float32)
  hyper = (np.asarray([r.learning_rate for r in replicas], np.float32),
           np.asarray([r.weight_decay for r in replicas], np.float32),
           np.asarray([augment.index(settings.augmentations, r.augmentation)
                       for r in replicas], np.int32),
           np.asarray([r.output_scale for r in replicas], np.float32),
           step_lib.dropout_rates(settings, replicas))
  h, w = input_shape_of(dataset)[:2]
  true = dataset.train_labels

  def make(seeds, order_seeds, salts, p, true, hyper):
    init, _, rand = jax.vmap(randomize.keys)(seeds, salts)
    order = jax.vmap(randomize.keys)(order_seeds, salts)[1]  # a function of the seed alone
    labels = jax.vmap(randomize.corrupt_labels, (0, None, 0, None))(
        rand, true, p, dataset.num_classes).astype(jnp.int32)
    perms = jax.vmap(randomize.shared_permutation, (0, None))(rand, h * w).astype(jnp.int32)
    noise = jnp.mean(labels != true[None], axis=1)
    return init, step_lib.ReplicaConstants(order, rand, labels, perms, *hyper), noise

  replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return jax.jit(make, out_shardings=(sharding, sharding, replicated))(
      seeds, order_seeds, salts, p, true, hyper)


def num_train(dataset) -> int:
  """Training examples: a host-streamed dataset's (``stream.StreamedDataset``) too."""
  return dataset.n_train if _streamed(dataset) else len(dataset.train_labels)


def input_shape_of(dataset) -> tuple:
  """The model's input (H, W, C): the paper's crop of an in-memory dataset's images."""
  if _streamed(dataset):
    return tuple(dataset.image_shape)
  return data_lib.paper_crop(dataset.test_images[:1]).shape[1:]


def _streamed(dataset) -> bool:
  return isinstance(dataset, stream_lib.StreamedDataset)


# Examples of a host-streamed dataset's evaluation view whose channel statistics the
# gaussian kind takes.
STAT_EXAMPLES = 256


def device_data(dataset, sharding, crops: bool = False) -> step_lib.DeviceDataset:
  """The dataset on the devices, once (replicated), centre-cropped, still uint8; with
  ``crops`` (a replica's augmentation crops) the training images stay uncropped, and the
  step takes each example's window (``augment.window``). A host-streamed dataset puts only
  its evaluated training examples' labels, one blank image of the input's shape and the
  channel statistics of its first ``STAT_EXAMPLES`` there (its batches come as streamed)."""
  if _streamed(dataset):
    n = min(STAT_EXAMPLES, dataset.n_train)
    sample = np.stack([dataset.eval_transform(dict(dataset.train[i]), None)["image"]
                       for i in range(n)])
    mean, std = randomize.channel_stats(sample)
    blank = np.zeros((1, *dataset.image_shape), np.uint8)
    arrays = (blank[:0], blank, np.zeros(1, np.int32), dataset.train_labels, mean, std)
    return step_lib.DeviceDataset(*(mesh_lib.put(a, sharding) for a in arrays))
  train = data_lib.paper_crop(dataset.train_images)
  mean, std = randomize.channel_stats(train)
  if crops:
    train = dataset.train_images
  arrays = (train, data_lib.paper_crop(dataset.test_images), dataset.test_labels,
            np.asarray(dataset.train_labels, np.int32), mean, std)
  return step_lib.DeviceDataset(*(mesh_lib.put(a, sharding) for a in arrays))


def replicas_per_device(config, num_replicas: int) -> int:
  """Replicas each device runs: the grid padded to the config's mesh (``mesh_lib.pad``)."""
  shape = mesh_lib.resolve_shape(config.mesh_shape, jax.device_count())
  return -(-num_replicas // shape[0])


def choose_plan(config, num_replicas: int, plan=None) -> plan_lib.Plan:
  """The execution plan for the config's grid: ``plan`` (a Plan, or overrides as a string
  or dict), else the measured one for this backend, with ``$ZHANG_PLAN`` over it."""
  if isinstance(plan, plan_lib.Plan):
    return plan
  return plan_lib.choose(config.model, replicas_per_device(config, num_replicas),
                         override=plan)


def build(config, replicas, dataset, mesh=None, plan=None):
  """The grid's compiled program, device data, per-replica constants and initial state.

  The grid is padded to a multiple of the mesh's replica axis (``mesh_lib.pad``); every
  per-replica array has the padded length, outputs use the first ``len(replicas)``.
  ``plan``: see ``choose_plan``. Returns (step.GridProgram, step.DeviceDataset,
  step.ReplicaConstants, stacked TrainState, label noise).
  """
  spec = models.get(config.model)
  mesh = mesh or mesh_lib.make_mesh(config.mesh_shape)
  padded = mesh_lib.pad(replicas, mesh.shape["replica"])
  chosen = choose_plan(config, len(replicas), plan)
  by_replica = mesh_lib.replica_sharding(mesh)
  settings = step_lib.StepSettings.from_config(config, padded)
  d = device_data(dataset, mesh_lib.replicated(mesh), augment.crops(settings.augmentations))
  shared = config.get("batch_order", "replica") == "shared"
  init_keys, reps, label_noise = build_replicas(
      padded, dataset, settings, by_replica, config.order_seed if shared else None)
  if config.get("stream", False):  # the stream's labels are drawn from p and the indices
    reps = reps._replace(corruption=mesh_lib.put(
        np.asarray([r.corruption for r in padded], np.float32), by_replica))
  module = spec.build(dataset.num_classes)
  sample = jnp.zeros((1, *d.test_images.shape[1:]), jnp.float32)  # the input's shape
  shapes = jax.eval_shape(lambda: step_lib.init_state(module, settings, jax.random.key(0),
                                                      sample).params)
  settings = dataclasses.replace(settings, end_layers=end_layers(module, sample.shape[1:]),
                                 num_classes=dataset.num_classes)
  program = step_lib.compile_grid(module, settings, spec.batch_norm, chosen, mesh,
                                  spec.lr_scales(shapes, settings.optimizer))
  states = jax.jit(jax.vmap(program.init, (0, None)), out_shardings=by_replica)(
      init_keys, sample)
  # w_0, kept beside the state (not in it: it is a function of the seed, as the rest of
  # the replica constants): the evaluation's weight change and the centred output read it.
  reps = reps._replace(initial_params=jax.tree.map(jnp.copy, states.params))
  return program, d, reps, states, np.asarray(label_noise)[:len(replicas)]


def end_layers(module, input_shape) -> tuple[str, ...]:
  """The top-level parameter names of the module's first and last Dense or Conv layers
  (in call order), for the evaluation's per-layer weight change; () if it has none."""
  found = [layer.path[0] for layer in flops_lib.layers(module, input_shape) if layer.path]
  return (found[0], found[-1]) if found else ()


def run(config: ml_collections.ConfigDict, workdir, *, restart: bool = False,
        progress: bool = True, plan=None, dataset=None) -> dict:
  """Trains the config's grid in ``workdir``; returns the summary (also in summary.json).

  Resumes from the workdir's latest good checkpoint when it holds one of the same config;
  ``restart`` deletes a previous run's files first. A finished run is left untouched (the
  summary says ``"status": "complete"`` only once its last checkpoint is on disk). On SIGTERM,
  saves a checkpoint when the train call in flight ends (calls last about ``CALL_SECONDS``)
  and returns with ``status == "preempted"``.
  One process at a time trains in a workdir (``zhang.rundir.workdir.Lock``). ``plan``: the
  execution plan's overrides (``choose_plan``); speed only. A study (``config.models``)
  goes to ``run_study``. ``dataset``: the config's, already loaded (``load_dataset``).
  """
  if config_lib.is_study(config):
    return run_study(config, workdir, restart=restart, progress=progress, plan=plan)
  start = time.time()
  workdir = metrics_lib.workdir_path(workdir)
  config, replicas, dataset = prepare(config, workdir, restart, dataset)
  lock = _take_lock(workdir)
  try:
    with workdir_lib.library_log(workdir, jax.process_index()):
      finished = None if restart else _finished_summary(config, workdir)
      if finished is not None:
        return finished
      return _train(config, replicas, dataset, workdir, restart, progress, plan, start)
  finally:
    lock.release()


def _take_lock(workdir) -> workdir_lib.Lock:
  """The workdir's lock, taken by process 0; every process stops when it cannot be."""
  lock = workdir_lib.Lock(workdir)
  held = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except UsageError as e:
      held = e
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.asarray(held is not None))
    if bool(refused) and held is None:
      raise UsageError(f"process 0 could not take the lock of workdir {workdir} (its message "
                       f"says which run holds it)")
  if held is not None:
    raise held
  return lock


def run_study(config: ml_collections.ConfigDict, workdir, *, restart: bool = False,
              progress: bool = True, plan=None) -> dict:
  """Trains a study: each of ``config.models`` is its own run (``config_lib.for_model``) in
  ``WORKDIR/MODEL``, one after another, so a resumed study finishes what was left and skips
  what is complete. Every model's config and sub-directory is checked before anything is
  trained; the dataset is loaded once. ``WORKDIR/config.json`` holds the study's config and
  ``WORKDIR/summary.json`` every model's replicas (each with its ``model``), rewritten after
  each model. Returns that summary; its ``status`` is "preempted" as soon as one model's run
  is, "complete" when all are."""
  workdir = metrics_lib.workdir_path(workdir)
  config_lib.validate(config)
  names = list(config.models)
  subs = {m: config_lib.for_model(config, m) for m in names}
  plan_lib.parse(os.environ.get(plan_lib.ENV))
  workdir_lib.check_writable(workdir)
  check_workdir(workdir, config, restart)
  for m in names:
    check_workdir(workdir / m, config_lib.resolve(subs[m]), restart)
  dataset = load_dataset(config)
  for m in names:
    config_lib.check_against_data(subs[m], num_train(dataset))
  mesh_lib.resolve_shape(config.mesh_shape, jax.device_count())
  primary = jax.process_index() == 0
  lock = _take_lock(workdir)
  try:
    if primary:
      if restart:
        _clear(workdir)
        for m in names:
          if (workdir / m).is_dir():
            _clear(workdir / m)
      workdir.mkdir(parents=True, exist_ok=True)
      if not (workdir / metrics_lib.CONFIG).exists():  # else the same (check_workdir)
        metrics_lib.write_config(workdir, config_lib.to_json_dict(config))
    _sync("study")
    done: dict[str, dict] = {}
    for m in names:
      if primary:
        print(f"zhang: study {workdir}: model {m} ({names.index(m) + 1}/{len(names)})",
              file=sys.stderr)
      done[m] = run(subs[m], workdir / m, progress=progress, plan=plan, dataset=dataset)
      summary = study_summary(config, done)
      unchanged = all(s.get("already_complete") for s in done.values())
      if primary and not (unchanged and (workdir / metrics_lib.SUMMARY).exists()):
        metrics_lib.write_summary(workdir, summary)
      if done[m]["status"] == "preempted":
        break
  finally:
    lock.release()
  if all(s.get("already_complete") for s in done.values()):
    summary["already_complete"] = True
  return summary


def study_summary(config, done: dict[str, dict]) -> dict:
  """A study's summary.json: its models' runs (``runs``: status, steps, seconds, timing)
  and all their replicas, each with its ``model``."""
  statuses = [s["status"] for s in done.values()]
  if "preempted" in statuses:
    status = "preempted"
  elif len(done) == len(config.models) and all(s == "complete" for s in statuses):
    status = "complete"
  else:
    status = "running"
  first = next(iter(done.values()))
  runs = {m: dict(dir=m, status=s["status"], steps_run=s["steps_run"],
                  wall_seconds=s["wall_seconds"], num_params=s.get("num_params"),
                  timing=s.get("timing"), config_hash=s.get("config_hash"))
          for m, s in done.items()}
  return dict(study=True, models=list(config.models), dataset=first.get("dataset"),
              n_train=first.get("n_train"), n_test=first.get("n_test"),
              num_classes=first.get("num_classes"), status=status,
              wall_seconds=round(sum(s["wall_seconds"] for s in done.values()), 2), runs=runs,
              replicas=[dict(r, model=m) for m, s in done.items() for r in s["replicas"]])


def _finished_summary(config, workdir) -> dict | None:
  """The summary of a run that is complete in ``workdir`` (its summary says so and its last
  checkpoint, read back whole, is the summary's step), else None. Compiles nothing. One
  process only: a multi-host run resumes its finished state through the training loop."""
  if jax.process_count() > 1 or not (workdir / metrics_lib.SUMMARY).exists():
    return None
  try:
    summary = format_lib.read_summary(workdir)
  except UsageError:
    return None  # damaged: the run resumes from its checkpoint and writes it again
  if (summary.get("status") != "complete"
      or not (workdir / checkpoint_lib.DIRNAME).is_dir()):
    return None
  latest = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, create=False)
  try:
    found = latest.latest_meta(metrics_lib.META_FIELDS, fit_times=True)
  finally:
    latest.close()
  config_hash = checkpoint_lib.config_hash(config_lib.identity(config))
  if (found is None or found[0] != summary.get("steps_run")
      or found[1].get("config_hash") != config_hash
      or summary.get("config_hash") != config_hash):
    return None
  damaged = damaged_files(workdir, config, *found)
  if damaged:
    # The training loop resumes from the final checkpoint, trains nothing, and rewrites
    # what the checkpoint holds (``_check_rows``, ``_record``).
    print(f"zhang: the run in {workdir} is complete but its {' and '.join(damaged)} "
          f"{'is' if len(damaged) == 1 else 'are'} damaged or missing; restoring from the "
          f"checkpoint of step {found[0]}", file=sys.stderr)
    return None
  if jax.process_index() == 0:
    fitted = sum(r.get("fit_step") is not None for r in summary.get("replicas", []))
    print(f"zhang: the run in {workdir} is complete ({fitted}/{len(summary['replicas'])} "
          f"replicas fitted, {found[0]} steps); nothing to do (--restart trains it again)",
          file=sys.stderr)
  return dict(summary, already_complete=True)


def damaged_files(workdir, config, step: int, meta: dict, fit) -> list[str]:
  """Which of a complete run's files do not agree with its final checkpoint (of ``step``,
  with its ``meta`` and fit steps ``fit``): metrics.jsonl with a line that does not read or
  without a row of an evaluation, fit_times.npz unreadable or other than the checkpoint's."""
  damaged = []
  num_replicas = len(config_lib.expand_grid(config))
  try:
    keys = set()
    for line in (workdir / metrics_lib.METRICS).read_text().splitlines():
      row = json.loads(line)
      keys.add((row["step"], row["replica"]))
    if any((s, r) not in keys for s in evaluation_steps(config, step)
           for r in range(num_replicas)):
      raise ValueError("a row is missing")
  except (OSError, ValueError, KeyError, TypeError):
    damaged.append(metrics_lib.METRICS)
  last_eval = max((row["step"] for row in meta["last_rows"]), default=0)
  if not _fit_times_agree(workdir, fit[:num_replicas], last_eval):
    damaged.append(metrics_lib.FIT_TIMES)
  return damaged


def _fit_times_agree(workdir, fit_step, step: int) -> bool:
  """Whether fit_times.npz reads back with these fit steps of the evaluation ``step``."""
  try:
    with np.load(io.BytesIO((workdir / metrics_lib.FIT_TIMES).read_bytes())) as f:
      return (np.array_equal(f["fit_step"], fit_step) and f["noisy"].shape == fit_step.shape
              and int(f["step"]) == step)
  except Exception:  # noqa: BLE001 - any file that does not read back is damaged
    return False


class _Run(NamedTuple):
  """What the training loop works with and does not replace: the grid's program, data and
  constants, and the run's bookkeeping and files."""
  config: ml_collections.ConfigDict
  replicas: list
  workdir: Any
  program: step_lib.GridProgram
  d: step_lib.DeviceDataset
  reps: step_lib.ReplicaConstants
  noisy: np.ndarray  # whether the corruption changed each example's label (fit_times.npz)
  book: metrics_lib.Bookkeeping
  ckpt: checkpoint_lib.Checkpointer
  writer: metrics_lib.Writer
  show: progress_lib.Progress
  start: float  # time.time() when ``run`` was called
  feed: Any = None  # the streaming path's batches (``config.stream``), else None
  streamed: Any = None  # a host-streamed dataset, evaluated as streamed; None: on the device


def _train(config, replicas, dataset, workdir, restart, progress, plan, start) -> dict:
  """Builds the grid, resumes from the workdir's latest checkpoint if it has one, trains
  (``_loop``) and returns the final summary (as summary.json has it)."""
  program, d, reps, states, label_noise = build(config, replicas, dataset, plan=plan)
  primary = jax.process_index() == 0
  if restart and primary:
    _clear(workdir)
  _sync("cleared")
  book = _bookkeeping(config, replicas, dataset, d, program, label_noise,
                      reps.labels.shape[0])
  ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  writer = show = None
  try:
    # Per replica and training example: the first evaluation step from which it has stayed
    # classified as labelled (-1: not now), kept on the devices and in every checkpoint.
    fit_since = jax.jit(lambda labels: jnp.full(labels.shape, -1, jnp.int32),
                        out_shardings=reps.labels.sharding)(reps.labels)
    resumed = _resume(ckpt, book, states, fit_since, workdir, config)
    noisy = _to_host(reps.labels) != np.asarray(dataset.train_labels)[None]
    step, saved_step = 0, None
    if resumed:
      step, states, fit_since = resumed
      saved_step = step
    if primary:
      workdir.mkdir(parents=True, exist_ok=True)
      metrics_lib.write_config(workdir, config_lib.to_json_dict(config))
    writer = metrics_lib.Writer(workdir, active=primary, keep_until_step=saved_step)
    if resumed and primary:
      _check_rows(writer, book.fits, config, replicas, saved_step)
    show = progress_lib.Progress(config, len(replicas), enabled=progress and primary)
    feed = None
    if config.get("stream", False):
      feed = feed_lib.for_dataset(config, dataset, program.settings.augmentations,
                                  reps.learning_rate.sharding.mesh, step)
    run = _Run(config, replicas, workdir, program, d, reps, noisy, book, ckpt, writer, show,
               start, feed, dataset if _streamed(dataset) else None)
    final = _loop(run, states, fit_since, step, saved_step)
  finally:
    for part in (show, writer, ckpt):
      if part is not None:
        part.close()
  return final


def _bookkeeping(config, replicas, dataset, d, program, label_noise,
                 padded: int) -> metrics_lib.Bookkeeping:
  """A new run's bookkeeping: the summary's header, no fits, no time, no losses yet.
  ``padded``: the number of replicas with the mesh's padding (``build``)."""
  n_train = num_train(dataset)
  n_test = dataset.n_test if _streamed(dataset) else len(dataset.test_labels)
  header = dict(
      model=config.model, dataset=config.dataset,
      num_params=models.param_count(config.model, d.test_images.shape[1:],
                                    dataset.num_classes),
      n_train=n_train, n_test=n_test, num_classes=dataset.num_classes,
      steps_per_epoch=n_train // config.batch_size, batch_size=config.batch_size,
      fit_threshold=config.fit_threshold,
      config_hash=checkpoint_lib.config_hash(config_lib.identity(config)),
      # Where and how ``timing`` was measured (this process's machine).
      backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
      device_count=jax.device_count(), plan=str(program.plan))
  fits = metrics_lib.Fits(replicas, label_noise, config.fit_threshold,
                          config.generalize_threshold, config.batch_size, n_train)
  return metrics_lib.Bookkeeping(header, fits,
                                 metrics_lib.Timing(n_train + n_test, config.batch_size),
                                 metrics_lib.LossSums(len(replicas), padded))


def _resume(ckpt, book, states, fit_since, workdir, config):
  """(step, state, fit times) of the latest readable checkpoint, its bookkeeping taken up
  into ``book``; None without a checkpoint. Refuses one of another config, or a streaming
  run's whose stream state is not its step's."""
  restored = ckpt.restore_latest(states, fit_since, metrics_lib.META_FIELDS)
  if not restored:
    return None
  step, (states, fit_since), meta = restored
  if meta["config_hash"] != book.header["config_hash"]:
    raise UsageError(f"the checkpoint of step {step} in {ckpt.directory} was written by "
                     f"another config: start over with `restart`")
  if config.get("stream", False):
    saved = meta.get("stream") or {}
    if saved.get("next_step") != step:
      raise UsageError(f"the checkpoint of step {step} in {ckpt.directory} has no stream "
                       f"state of that step ({saved or 'none'}): it is damaged; start over "
                       f"with `restart`")
  book.load(meta)
  if jax.process_index() == 0:
    print(f"zhang: resuming {workdir} from the checkpoint of step {step}"
          f"{_stopped_note(workdir)}", file=sys.stderr)
  return step, states, fit_since


def _stopped_note(workdir) -> str:
  """Said when resuming a run whose summary still says "running": its lock was free (this
  process holds it now), so the process that trained it ended without stopping cleanly."""
  try:
    summary = format_lib.read_summary(workdir)
  except (UsageError, OSError):
    return ""
  if summary.get("status") != "running":
    return ""
  return (f" (its summary said running at step {summary.get('steps_run')}, but no process "
          f"held its lock: the run was killed or its machine stopped)")


def _loop(run: _Run, states, fit_since, step: int, saved_step: int | None) -> dict:
  """Alternates evaluations with train calls up to the next evaluation or checkpoint,
  until every replica has fitted (``stop_at_fit``), ``max_steps``, or a preemption notice
  (SIGTERM, answered within one call plus a save). Returns the final summary."""
  c, book = run.config, run.book
  # Each replica's minibatch losses since the last evaluation, summed on the device.
  loss_sum = jnp.asarray(book.losses.total)
  sizer = _CallSizer()
  evaluate_now = saved_step is None
  # The step of the last evaluation (fit_times.npz's), which a resumed run does not repeat.
  last_eval = max((row["step"] for row in book.fits.last_rows), default=0)
  with _preemption_notice() as preempted:
    while True:
      if evaluate_now:
        fit_since = _evaluate(run, states, fit_since, step)
        loss_sum, last_eval = jnp.zeros_like(loss_sum), step
      done = (c.stop_at_fit and book.fits.all_fitted()) or step >= c.max_steps
      end = done or preempted()
      saved_step = _record(run, step, states, fit_since, last_eval, evaluate_now, end,
                           saved_step)
      if end:
        run.ckpt.wait()  # "complete" or "preempted" only once the checkpoint is on disk
        final = book.summary(step, "complete" if done else "preempted",
                             time.time() - run.start)
        run.writer.summary(final)
        if not done and jax.process_index() == 0:
          how = ("interrupted (Ctrl-C)" if getattr(preempted, "signals", [None])[0] == "SIGINT"
                 else "preempted (SIGTERM)")
          print(f"zhang: {how} at step {step}; the checkpoint is saved. Run the same command "
                f"to resume.", file=sys.stderr)
        return final
      states, loss_sum, n = _train_call(run, sizer, states, loss_sum, step)
      step += n
      evaluate_now = step % c.eval_every == 0 or step == c.max_steps


def _evaluate(run: _Run, states, fit_since, step: int):
  """Evaluates every replica at ``step``: its rows written, its fits and the examples'
  fit steps updated (returned), the loss sums started again."""
  c, book = run.config, run.book
  t0 = time.perf_counter()
  if run.streamed is not None:
    ds = run.streamed
    ev, hits = feed_lib.evaluate(run.program, states, run.reps, run.d, ds.eval_source(),
                                 ds.test, c.eval_batch_size, run.reps.learning_rate.sharding.mesh,
                                 ds.eval_transform)
    fit_since = _track(fit_since, hits, jnp.asarray(step, jnp.int32))
  else:
    ev, fit_since = run.program.evaluate_and_track(states, run.reps, run.d, fit_since,
                                                   jnp.asarray(step, jnp.int32))
  ev = jax.device_get(ev)
  book.timing.time_call("eval", time.perf_counter() - t0)
  base_lr = np.asarray([r.learning_rate for r in run.replicas], np.float32)
  lr = np.asarray(step_lib.learning_rate_at(step, base_lr, c.lr_decay, c.lr_decay_every))
  run.writer.rows(book.fits.record(step, ev, lr, book.losses.mean))
  book.losses.reset()
  return fit_since


@functools.partial(jax.jit, donate_argnums=(0,))
def _track(fit_since, hits, step):
  return step_lib.track_fits(fit_since, hits, step)


def _record(run: _Run, step: int, states, fit_since, last_eval: int, evaluated: bool,
            end: bool, saved_step: int | None) -> int | None:
  """After an evaluation or at the run's ``end``: the summary, a checkpoint when one is
  due (every ``checkpoint_every`` steps and at the end), fit_times.npz with it, and the
  progress line. Returns the step of the last checkpoint."""
  c, book = run.config, run.book
  at_checkpoint = step % c.checkpoint_every == 0 and step > 0
  save = (at_checkpoint or end) and step != saved_step
  if evaluated or save:
    run.writer.summary(book.summary(step, "running", time.time() - run.start))
  if save:
    meta = book.meta(time.time() - run.start)
    if run.feed is not None:  # where the stream resumes (it is a function of the step)
      meta["stream"] = run.feed.state(step)
    run.ckpt.save(step, states, meta, fit_times=fit_since)
    saved_step = step
  if save or end:  # at the end, a file that does not agree with the state is rewritten
    _write_fit_times(run.workdir, fit_since, run.noisy, len(run.replicas), last_eval,
                     only_if_changed=not save)
  if evaluated or end:
    run.show.update(step, book.fits, final=end)
  return saved_step


def _train_call(run: _Run, sizer: "_CallSizer", states, loss_sum, step: int):
  """One compiled call of the train chunk, toward the next evaluation or checkpoint, about
  ``CALL_SECONDS`` long; returns (states, loss sum, steps taken)."""
  c = run.config
  stop = min(_next_multiple(step, c.eval_every), _next_multiple(step, c.checkpoint_every),
             c.max_steps)
  n = sizer.steps(stop - step)
  if jax.process_count() > 1:  # every process must run the same calls: process 0's pace
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(n, np.int32)))
  frozen = ()
  if run.program.settings.freeze:
    frozen = (jnp.asarray(frozen_replicas(run.book.fits, run.reps.labels.shape[0])),)
  t0 = time.perf_counter()
  if run.feed is not None:
    n = min(n, run.feed.capacity)
    states, loss_sum = run.program.stream_chunk(
        states, run.reps, run.d, run.feed.next(n), jnp.asarray(step, jnp.int32),
        jnp.asarray(n, jnp.int32), loss_sum, *frozen)
    run.feed.prepare()  # the next call's batches, while this one runs
  else:
    states, loss_sum = run.program.train_chunk(states, run.reps, run.d,
                                               jnp.asarray(step, jnp.int32),
                                               jnp.asarray(n, jnp.int32), loss_sum, *frozen)
  run.book.losses.add(loss_sum, n)  # waits for the call
  seconds = time.perf_counter() - t0
  run.book.timing.time_call("train", seconds, n)
  sizer.timed(n, seconds)
  run.ckpt.poll()  # a save that failed in the background, reported as soon as known
  return states, loss_sum, n


def frozen_replicas(fits: metrics_lib.Fits, padded: int) -> np.ndarray:
  """``freeze_at_fit``'s mask, (padded,) bool: the replicas that have fitted (``fits``'
  ``fit_step``), not the mesh's padding. It is derived, not saved: a checkpoint's meta holds
  the fit steps, so a resumed run freezes the same replicas from its first step."""
  mask = np.zeros(padded, bool)
  mask[:len(fits.fit_step)] = [f is not None for f in fits.fit_step]
  return mask


def _to_host(x) -> np.ndarray:
  """A per-replica array on the host, whole (every process takes part in gathering it when
  the replicas are spread over several)."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _write_fit_times(workdir, fit_since, noisy, num_replicas: int, step: int,
                     only_if_changed: bool = False) -> None:
  """``fit_times.npz`` from the devices' per-example fit steps (process 0 writes);
  ``only_if_changed``: not when the file already holds them."""
  fit = _to_host(fit_since)
  if only_if_changed and _fit_times_agree(workdir, fit[:num_replicas], step):
    return
  if jax.process_index() == 0:
    metrics_lib.write_fit_times(workdir, fit[:num_replicas], noisy[:num_replicas], step)


def evaluation_steps(config, last: int) -> list[int]:
  """The steps at which a run evaluates, up to ``last``: 0, every ``eval_every``, and
  ``max_steps`` (the loop above)."""
  steps = set(range(0, last + 1, config.eval_every))
  if last >= config.max_steps:
    steps.add(config.max_steps)
  return sorted(s for s in steps if s <= last)


def _check_rows(writer, fits, config, replicas, saved_step: int) -> None:
  """On resume: every replica's row at every evaluation up to the checkpoint must be in
  metrics.jsonl. The last evaluation's rows are in the checkpoint and are rewritten; rows
  of earlier evaluations cannot be recomputed, so a missing one is named."""
  have = writer.keys()
  missing = [(s, r.index) for s in evaluation_steps(config, saved_step)
             for r in replicas if (s, r.index) not in have]
  if not missing:
    return
  restorable = {(row["step"], row["replica"]): row for row in fits.last_rows}
  writer.rows([restorable[key] for key in missing if key in restorable])
  lost = [key for key in missing if key not in restorable]
  if lost:
    steps = sorted({s for s, _ in lost})
    shown = ", ".join(map(str, steps[:10])) + (", ..." if len(steps) > 10 else "")
    print(f"zhang: metrics.jsonl lacks {len(lost)} row(s) at step(s) {shown} that the "
          f"checkpoint cannot restore; the run goes on without them (--restart regenerates "
          f"every row)", file=sys.stderr)
  else:
    print(f"zhang: restored {len(missing)} damaged or missing row(s) of metrics.jsonl from "
          f"the checkpoint of step {saved_step}", file=sys.stderr)


CALL_SECONDS = 2.0  # the longest a train call should take: the answer time to a SIGTERM


class _CallSizer:
  """How many steps the next train call runs: one (it compiles), one (to time a step: a
  conv-net grid on a CPU takes tens of seconds per step), then as many as take about
  ``CALL_SECONDS`` by the last call's pace. Results do not depend on it (the losses are
  summed across calls in the same order)."""

  def __init__(self):
    self.calls, self.seconds_per_step = 0, None

  def steps(self, remaining: int) -> int:
    if self.seconds_per_step is None:
      want = 1
    else:
      want = max(1, int(CALL_SECONDS / max(self.seconds_per_step, 1e-9)))
    return max(1, min(remaining, want))

  def timed(self, steps: int, seconds: float) -> None:
    if self.calls > 0:  # the first call compiles
      self.seconds_per_step = seconds / steps
    self.calls += 1


def _next_multiple(step: int, every: int) -> int:
  return (step // every + 1) * every


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def _preemption_notice():
  """Turns SIGTERM (Cloud TPU VMs' preemption notice) and a first SIGINT (Ctrl-C) into a
  flag the loop polls; a second SIGINT raises KeyboardInterrupt at once (the run then
  resumes from its last checkpoint).

  With several processes the flag is OR-ed over all of them, so every process stops at the
  same chunk boundary even when the notices arrive at different moments.
  """
  flag = []  # the signals received, in order

  def preempted() -> bool:
    if jax.process_count() == 1:
      return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))

  def interrupted(*_):
    if flag and flag[-1] == "SIGINT":
      raise KeyboardInterrupt
    flag.append("SIGINT")
    if jax.process_index() == 0:
      print("zhang: interrupted (Ctrl-C): saving a checkpoint at the end of the train call in "
            "flight; Ctrl-C again stops at once", file=sys.stderr, flush=True)

  if threading.current_thread() is not threading.main_thread():
    yield preempted
    return
  preempted.signals = flag
  previous = (signal.signal(signal.SIGTERM, lambda *_: flag.append("SIGTERM")),
              signal.signal(signal.SIGINT, interrupted))
  try:
    yield preempted
  finally:
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])


def _clear(workdir) -> None:
  """Deletes a previous run's files (``restart``); leaves anything else alone."""
  for name in metrics_lib.RUN_FILES:
    (workdir / name).unlink(missing_ok=True)
  if (workdir / checkpoint_lib.DIRNAME).exists():
    (workdir / checkpoint_lib.DIRNAME).rmtree()
