"""``run(config, workdir)``: train a whole grid of replicas in one jit-compiled program.

The flow: validate the config and load the data (bad input fails here, before anything is
compiled or written), put the training set on the device once, build every replica's labels
and keys from its seed, initialize the stacked train state, then alternate compiled chunks
of ``eval_every`` steps with an evaluation of every replica on its whole training set and
the test set, until every replica has fitted or ``max_steps``.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from zhang import config as config_lib
from zhang import data as data_lib
from zhang import metrics as metrics_lib
from zhang import models, randomize, step as step_lib
from zhang.errors import UsageError


def prepare(config: ml_collections.ConfigDict, workdir, restart: bool = False):
  """Everything that can fail on user input, before any compilation or file write.

  Returns (resolved config, replicas, dataset).
  """
  config = config_lib.resolve(config)
  replicas = config_lib.expand_grid(config)
  dataset = data_lib.load(config.dataset, config.data_dir or None)
  dataset = dataset.subset(config.n_train or None, config.n_test or None)
  config_lib.check_against_data(config, len(dataset.train_labels))
  check_workdir(pathlib.Path(workdir), config, restart)
  return config, replicas, dataset


def check_workdir(workdir: pathlib.Path, config, restart: bool) -> None:
  """Refuses a workdir that holds a run of a different config (unless ``restart``)."""
  if workdir.exists() and not workdir.is_dir():
    raise UsageError(f"workdir {workdir} exists and is not a directory: choose another path")
  old_file = workdir / metrics_lib.CONFIG
  if not old_file.exists() or restart:
    return
  try:
    old = json.loads(old_file.read_text())
  except (OSError, json.JSONDecodeError):
    raise UsageError(f"{old_file} is unreadable: use a new --workdir, or --restart to "
                     f"delete the old run's files and start over") from None
  new = config_lib.to_json_dict(config)
  if old != new:
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    raise UsageError(f"workdir {workdir} holds a run with a different config (differs in "
                     f"{', '.join(fields)}): use a new --workdir, or --restart to delete the "
                     f"old run's files and start over")


def _stack_keys(keys):
  return jax.random.wrap_key_data(jnp.stack([jax.random.key_data(k) for k in keys]))


def build_replicas(replicas, dataset):
  """Per-replica constants: keys from seeds, corrupted labels, shuffle permutations."""
  init, order, rand = zip(*(randomize.replica_keys(r.seed, r.kind, r.corruption)
                            for r in replicas))
  rand = _stack_keys(rand)
  p = jnp.asarray([r.corruption for r in replicas], jnp.float32)
  true = jnp.asarray(dataset.train_labels)
  labels = jax.jit(jax.vmap(randomize.corrupt_labels, (0, None, 0, None)),
                   static_argnums=3)(rand, true, p, dataset.num_classes)
  h, w = data_lib.paper_crop(dataset.train_images[:1]).shape[1:3]
  perms = jax.jit(jax.vmap(randomize.shared_permutation, (0, None)), static_argnums=1)(
      rand, h * w)
  reps = step_lib.Replicas(_stack_keys(order), rand, labels.astype(jnp.int32),
                           perms.astype(jnp.int32))
  return _stack_keys(init), reps


def device_data(dataset) -> step_lib.Data:
  train = data_lib.paper_crop(dataset.train_images)
  mean, std = randomize.channel_stats(train)
  return step_lib.Data(jnp.asarray(train), jnp.asarray(data_lib.paper_crop(dataset.test_images)),
                       jnp.asarray(dataset.test_labels), jnp.asarray(mean), jnp.asarray(std))


def hyper(config, replicas) -> step_lib.Hyper:
  return step_lib.Hyper(config.batch_size, float(config.learning_rate), float(config.momentum),
                        float(config.lr_decay), config.lr_decay_every,
                        float(config.weight_decay), config.eval_batch_size,
                        randomize.segments([r.kind for r in replicas]))


def build(config, replicas, dataset):
  """The grid's compiled functions, device data, per-replica constants and initial state.

  Returns (step.Functions, step.Data, step.Replicas, stacked TrainState).
  """
  spec = models.get(config.model)
  d = device_data(dataset)
  init_keys, reps = build_replicas(replicas, dataset)
  fns = step_lib.make_functions(spec.build(dataset.num_classes),
                                hyper(config, replicas), spec.batch_norm)
  sample = jnp.zeros((1, *d.train_images.shape[1:]), jnp.float32)
  states = jax.jit(jax.vmap(fns.init, (0, None)))(init_keys, sample)
  return fns, d, reps, states


def run(config: ml_collections.ConfigDict, workdir, *, restart: bool = False,
        progress: bool = True) -> dict:
  """Trains the config's grid in ``workdir``; returns the summary (also in summary.json)."""
  start = time.time()
  workdir = pathlib.Path(workdir)
  config, replicas, dataset = prepare(config, workdir, restart)
  n_train, n_test = len(dataset.train_labels), len(dataset.test_labels)
  per_epoch = n_train // config.batch_size

  fns, d, reps, states = build(config, replicas, dataset)

  label_noise = np.asarray(jnp.mean(reps.labels != d_true(dataset), axis=1))
  writer = _open_workdir(workdir, config, restart)
  base = dict(model=config.model, dataset=config.dataset,
              num_params=models.param_count(config.model, d.train_images.shape[1:],
                                            dataset.num_classes),
              n_train=n_train, n_test=n_test, num_classes=dataset.num_classes,
              steps_per_epoch=per_epoch, batch_size=config.batch_size,
              fit_threshold=config.fit_threshold)
  fit_step = [None] * len(replicas)
  fit_test_acc = [None] * len(replicas)
  last = None
  step = 0
  bar = tqdm(total=config.max_steps, unit="step", disable=not progress, file=sys.stderr,
             dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=f"{config.model}/{config.dataset} x{len(replicas)}")
  batch_loss = np.full(len(replicas), np.nan)
  try:
    while True:
      ev = jax.device_get(fns.evaluate(states, reps, d))
      last = ev
      rows = []
      for i, r in enumerate(replicas):
        if fit_step[i] is None and ev["train_acc"][i] >= config.fit_threshold:
          fit_step[i], fit_test_acc[i] = step, ev["test_acc"][i]
        rows.append(dict(
            step=step, epoch=step * config.batch_size / n_train, replica=r.index,
            kind=r.kind, corruption=r.corruption, seed=r.seed,
            **{k: v[i] for k, v in ev.items()},
            batch_loss=batch_loss[i],
            lr=float(step_lib.learning_rate(fns_h(config), jnp.asarray(step)))))
      writer.rows(rows)
      fitted = sum(f is not None for f in fit_step)
      done = fitted == len(replicas) or step >= config.max_steps
      writer.summary(_summary(base, replicas, label_noise, fit_step, fit_test_acc, ev, step,
                              per_epoch, config, "complete" if done else "running",
                              time.time() - start))
      bar.set_postfix(fitted=f"{fitted}/{len(replicas)}",
                      min_train_acc=f"{float(np.min(ev['train_acc'])):.3f}")
      if done:
        break
      n = min(config.eval_every, config.max_steps - step)
      states, loss = fns.train_chunk(states, reps, d, jnp.asarray(step, jnp.int32),
                                     jnp.asarray(n, jnp.int32))
      batch_loss = np.asarray(loss)
      step += n
      bar.update(n)
  finally:
    bar.close()
    writer.close()
  summary = _summary(base, replicas, label_noise, fit_step, fit_test_acc, last, step,
                     per_epoch, config, "complete", time.time() - start)
  return summary


def d_true(dataset):
  return jnp.asarray(dataset.train_labels)[None, :]


def fns_h(config):
  return step_lib.Hyper(config.batch_size, float(config.learning_rate), 0.0,
                        float(config.lr_decay), config.lr_decay_every, 0.0, 1, ())


def _open_workdir(workdir: pathlib.Path, config, restart: bool) -> metrics_lib.Writer:
  """Creates the workdir (after every check has passed) and writes config.json."""
  primary = jax.process_index() == 0
  if primary:
    if restart:
      for name in metrics_lib.RUN_FILES:
        (workdir / name).unlink(missing_ok=True)
      shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_lib.write_json(workdir / metrics_lib.CONFIG, config_lib.to_json_dict(config))
  return metrics_lib.Writer(workdir, active=primary)


def _summary(base, replicas, label_noise, fit_step, fit_test_acc, ev, step, per_epoch, config,
             status, seconds) -> dict:
  out = []
  for i, r in enumerate(replicas):
    fs = fit_step[i]
    out.append(dict(
        replica=r.index, kind=r.kind, corruption=r.corruption, seed=r.seed,
        label_noise=float(label_noise[i]), fit_step=fs,
        fit_epoch=None if fs is None else fs * config.batch_size / base["n_train"],
        fit_test_acc=fit_test_acc[i],
        final_train_acc=ev["train_acc"][i], final_test_acc=ev["test_acc"][i],
        final_train_loss=ev["train_loss"][i], final_test_loss=ev["test_loss"][i],
        test_confidence=ev["test_confidence"][i], test_entropy=ev["test_entropy"][i]))
  return dict(base, status=status, steps_run=step, wall_seconds=round(seconds, 2),
              replicas=out)
