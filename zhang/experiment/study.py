"""A study (``config.models``): one run per model, in sub-directories of one workdir, trained
one after another by ``train.run``, with one summary over all of them.
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections

from zhang.experiment import config as config_lib
from zhang.experiment import loop as loop_lib
from zhang.experiment import train as train_lib
from zhang.rundir import metrics as metrics_lib
from zhang.rundir import workdir as workdir_lib
from zhang.runtime import mesh as mesh_lib
from zhang.runtime import plan as plan_lib


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
  train_lib.check_workdir(workdir, config, restart)
  for m in names:
    train_lib.check_workdir(workdir / m, config_lib.resolve(subs[m]), restart)
  dataset = train_lib.load_dataset(config)
  for m in names:
    config_lib.check_against_data(subs[m], train_lib.num_train(dataset))
  mesh_lib.resolve_shape(config.mesh_shape, jax.device_count())
  primary = jax.process_index() == 0
  lock = train_lib.take_lock(workdir)
  try:
    if primary:
      if restart:
        train_lib.clear(workdir)
        for m in names:
          if (workdir / m).is_dir():
            train_lib.clear(workdir / m)
      workdir.mkdir(parents=True, exist_ok=True)
      if not (workdir / metrics_lib.CONFIG).exists():  # else the same (check_workdir)
        metrics_lib.write_config(workdir, config_lib.to_json_dict(config))
    loop_lib.sync("study")
    done: dict[str, dict] = {}
    for m in names:
      if primary:
        print(f"zhang: study {workdir}: model {m} ({names.index(m) + 1}/{len(names)})",
              file=sys.stderr)
      done[m] = train_lib.run(subs[m], workdir / m, progress=progress, plan=plan, dataset=dataset)
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
