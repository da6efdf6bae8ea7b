"""``run(config, workdir)``: train a whole grid of replicas in one jit-compiled program.

The flow: validate the config and load the data (bad input fails here, before anything is
compiled or written), put the training set on the device once, build every replica's labels
and keys from its seed, initialize the stacked train state, then (``loop.run_loop``)
alternate ``eval_every`` steps of training (compiled calls of about ``loop.CALL_SECONDS``
each) with an evaluation of every replica on its whole training set and the test set, until
every replica has fitted or ``max_steps``. With ``freeze_at_fit``, a replica's state stops
changing at the evaluation at which it fits (``loop.frozen_replicas``); it is still
evaluated, with the same results. Resuming and finished runs: ``resume.py``; a study over
models: ``study.py``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

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
from zhang.experiment import loop as loop_lib
from zhang.experiment import program as program_lib
from zhang.experiment import resume as resume_lib
from zhang.experiment import step as step_lib
from zhang.experiment import stream as stream_lib
from zhang.experiment import study as study_lib
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
  ``plan``: see ``choose_plan``. Returns (program.GridProgram, step.DeviceDataset,
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
  program = program_lib.compile_grid(module, settings, spec.batch_norm, chosen, mesh,
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
  saves a checkpoint when the train call in flight ends (calls last about ``loop.CALL_SECONDS``)
  and returns with ``status == "preempted"``.
  One process at a time trains in a workdir (``zhang.rundir.workdir.Lock``). ``plan``: the
  execution plan's overrides (``choose_plan``); speed only. A study (``config.models``)
  goes to ``study.run_study``. ``dataset``: the config's, already loaded (``load_dataset``).
  """
  if config_lib.is_study(config):
    return study_lib.run_study(config, workdir, restart=restart, progress=progress, plan=plan)
  start = time.time()
  workdir = metrics_lib.workdir_path(workdir)
  config, replicas, dataset = prepare(config, workdir, restart, dataset)
  lock = take_lock(workdir)
  try:
    with workdir_lib.library_log(workdir, jax.process_index()):
      finished = None if restart else resume_lib.finished_summary(config, workdir)
      if finished is not None:
        return finished
      return _train(config, replicas, dataset, workdir, restart, progress, plan, start)
  finally:
    lock.release()


def take_lock(workdir) -> workdir_lib.Lock:
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


def _train(config, replicas, dataset, workdir, restart, progress, plan, start) -> dict:
  """Builds the grid, resumes from the workdir's latest checkpoint if it has one, trains
  (``loop.run_loop``) and returns the final summary (as summary.json has it)."""
  program, d, reps, states, label_noise = build(config, replicas, dataset, plan=plan)
  primary = jax.process_index() == 0
  if restart and primary:
    clear(workdir)
  loop_lib.sync("cleared")
  book = _bookkeeping(config, replicas, dataset, d, program, label_noise,
                      reps.labels.shape[0])
  ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  writer = show = None
  try:
    # Per replica and training example: the first evaluation step from which it has stayed
    # classified as labelled (-1: not now), kept on the devices and in every checkpoint.
    fit_since = jax.jit(lambda labels: jnp.full(labels.shape, -1, jnp.int32),
                        out_shardings=reps.labels.sharding)(reps.labels)
    resumed = resume_lib.resume(ckpt, book, states, fit_since, workdir, config)
    noisy = loop_lib.to_host(reps.labels) != np.asarray(dataset.train_labels)[None]
    step, saved_step = 0, None
    if resumed:
      step, states, fit_since = resumed
      saved_step = step
    if primary:
      workdir.mkdir(parents=True, exist_ok=True)
      metrics_lib.write_config(workdir, config_lib.to_json_dict(config))
    writer = metrics_lib.Writer(workdir, active=primary, keep_until_step=saved_step)
    if resumed and primary:
      resume_lib.check_rows(writer, book.fits, config, replicas, saved_step)
    show = progress_lib.Progress(config, len(replicas), enabled=progress and primary)
    feed = None
    if config.get("stream", False):
      feed = feed_lib.for_dataset(config, dataset, program.settings.augmentations,
                                  reps.learning_rate.sharding.mesh, step)
    run = loop_lib.Run(config, replicas, workdir, program, d, reps, noisy, book, ckpt, writer, show,
               start, feed, dataset if _streamed(dataset) else None)
    final = loop_lib.run_loop(run, states, fit_since, step, saved_step)
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


def clear(workdir) -> None:
  """Deletes a previous run's files (``restart``); leaves anything else alone."""
  for name in metrics_lib.RUN_FILES:
    (workdir / name).unlink(missing_ok=True)
  if (workdir / checkpoint_lib.DIRNAME).exists():
    (workdir / checkpoint_lib.DIRNAME).rmtree()
