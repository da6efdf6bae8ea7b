"""``zhang measures``: every measure of every replica of a run (or of a study's runs),
written to OUT/measures.json.

``measure(workdir, out, ...)`` opens the run(s) with ``zhang.probes.run.open``, checks every
argument against them before anything compiles (unknown measures, a step without a
checkpoint, replicas that never fitted when ``--step fit`` is asked, an OUT that holds
another run's measures.json), then per run: the parameters at the step asked for
(``compute.resolve_step``), the run's own evaluation of them (train and test loss and
accuracy, the gap), the compiled measures (``compute.program``) and the measures of the
run's files (``run_files``). Only OUT is written, through one atomic write.

measures.json: ``{"run": the path given, "settings": {...}, "replicas": [{"replica",
"model", "kind", "corruption", "seed", "learning_rate", "weight_decay", "augmentation",
"step", "train_acc", "test_acc", "train_loss", "test_loss", "gap", "measures": {name:
value}, "search": {...}, "layers": {...}}]}``; ``gap`` = test error - train error =
train_acc - test_acc; a measure that is not defined for a replica is null. Definitions:
docs/measures.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

import jax
import numpy as np

from zhang.errors import UsageError
from zhang.probes import run as run_lib
from zhang.probes.measures import compute
from zhang.rundir import format as format_lib
from zhang.rundir import metrics as metrics_lib

JSON = "measures.json"
_COORDINATES = ("kind", "corruption", "seed", "learning_rate", "weight_decay", "augmentation")


def open_runs(workdir, data_dir=None, probe: str = "`zhang measures`") -> list[run_lib.Run]:
  """The run in ``workdir``, or each model's run of a study (``models``), in its order;
  one line for a run whose replicas trained with an output scale (``probe`` names the
  command)."""
  path = metrics_lib.workdir_path(workdir)
  fields = {}
  if path.is_dir() and (path / format_lib.CONFIG).exists():
    fields = format_lib.read_config(path)
  runs = ([run_lib.open(path / str(model), data_dir) for model in fields["models"]]
          if fields.get("models") else [run_lib.open(workdir, data_dir)])
  for run in runs:
    run.check_plain_outputs(probe)
  return runs


def check_out(runs: list[run_lib.Run], out, name: str = JSON, what: str = "measures"
              ) -> None:
  """UsageError unless OUT can take these runs' ``name`` (measures.json; another probe's
  file of ``what``): outside every run's folder, and holding no such file of another run
  (one of the same runs is replaced)."""
  out = metrics_lib.workdir_path(out)
  for run in runs:
    path = metrics_lib.workdir_path(run.path)
    if out == path or path in out.parents:
      raise UsageError(f"`out` {out} is inside the run's directory {path}: choose a folder "
                       f"outside it (the run's files are never written)")
  existing = out / name
  if not existing.exists():
    return
  try:
    settings = json.loads(existing.read_text())["settings"]
    hashes = {r["config_hash"] for r in settings["runs"]}
  except (ValueError, KeyError, TypeError):
    raise UsageError(f"{existing} exists and is not a {name} this zhang can read: "
                     f"move it, or choose another `out`") from None
  if hashes != {run.config_hash for run in runs}:
    raise UsageError(f"{existing} holds the {what} of another run ({settings.get('run')}): "
                     f"choose another `out`, or delete that file")


def measure(workdir, out, step=None, names: str | None = None,
            settings: compute.Settings | None = None, data_dir: str | None = None,
            log: Callable[[str], None] | None = None) -> dict:
  """measures.json's dict of the run(s) in ``workdir``, written to OUT (None: not
  written). Bad input raises UsageError before anything is compiled or written."""
  log = log or (lambda msg: print(f"zhang measures: {msg}", file=sys.stderr, flush=True))
  settings = settings or compute.Settings()
  settings.check()
  wanted = compute.parse_measures(names)
  runs = open_runs(workdir, data_dir)
  steps = [compute.resolve_step(run, step) for run in runs]
  if out is not None:
    check_out(runs, out)
  entries, sources = [], []
  for run, (measured, read, spec) in zip(runs, steps):
    rows, seconds = run_measures(run, measured, read, wanted, settings, out)
    entries += rows
    sources.append(dict(model=run.config.model, run=run.path, config_hash=run.config_hash,
                        steps=sorted(set(read)), **seconds))
    log(f"{run.config.model}: {len(run.replicas)} replicas at step {spec} in "
        f"{seconds['compile_seconds'] + seconds['measure_seconds']:.1f} s (compilation "
        f"{seconds['compile_seconds']:.1f} s, measures {seconds['measure_seconds']:.1f} s)")
  result = dict(run=os.fspath(workdir),
                settings=settings_dict(runs, sources, steps[0][2], wanted, settings),
                replicas=entries)
  if out is not None:
    write(result, out)
  return result


def settings_dict(runs, sources, spec: str, wanted, s: compute.Settings) -> dict:
  """measures.json's ``settings``: what was measured and how, and the runs it came from
  (``run`` and ``config_hash`` of a single run, for ``zhang.analysis.provenance``)."""
  out = dict(step=spec, measures=list(wanted), groups=list(compute.groups_for(wanted)),
             examples=s.examples, spectral_iters=s.spectral_iters, seed=s.seed,
             flatness=_plain(s.flatness), runs=sources,
             dataset=runs[0].config.dataset, margin_percentile=10)
  if len(runs) == 1:
    out.update(run=runs[0].path, config_hash=runs[0].config_hash)
  else:
    out.update(run=os.path.dirname(runs[0].path.rstrip("/")), config_hash=None)
  return out


def _plain(settings) -> dict:
  import dataclasses
  return {k: v for k, v in dataclasses.asdict(settings).items()}


def run_measures(run: run_lib.Run, measured: list[int], read: list[int], wanted,
                 s: compute.Settings, out) -> tuple[list[dict], dict]:
  """One run's replicas' rows of measures.json, and the seconds its program took to
  compile and to run."""
  state = run.state_at(read)
  rows = run.evaluate_state(state, measured)
  groups = [g for g in compute.groups_for(wanted) if g != "run"]
  computed, search, layers, seconds = {}, {}, {}, dict(compile_seconds=0.0,
                                                        measure_seconds=0.0)
  if groups:
    m = min(s.examples, run.n)
    chunk = min(run.config.eval_batch_size, m)
    x, y, valid = compute.examples(run, m, chunk)
    init = run.state(0)
    args = (state.params, init.params, state.batch_stats, x, y,
            compute.replica_keys(run, s.seed), valid)
    t0 = time.perf_counter()
    compiled = compute.program(run, groups, s, chunk).lower(*args).compile()
    t1 = time.perf_counter()
    computed, search, layers = jax.device_get(compiled(*args))
    computed = compute.finish(computed, search.get("margin"))
    seconds = dict(compile_seconds=t1 - t0, measure_seconds=time.perf_counter() - t1)
  files = run_files(run, measured, read, out) if "run" in compute.groups_for(wanted) else {}
  entries = []
  for i, (r, ev) in enumerate(zip(run.replicas, rows)):
    values = {**{k: _number(v[i]) for k, v in computed.items()},
              **{k: v[i] for k, v in files.items()}}
    entries.append(dict(
        replica=r.index, model=run.config.model, **{k: getattr(r, k) for k in _COORDINATES},
        label_noise=float(run.label_noise[i]), step=measured[i],
        **{k: ev.get(k) for k in ("train_acc", "test_acc", "train_loss", "test_loss")},
        gap=_gap(ev), measures={k: values.get(k) for k in wanted},
        search={k: _number(v[i]) for k, v in search.items()},
        layers={k: np.asarray(v[i]).tolist() for k, v in layers.items()}))
  return entries, seconds


def _gap(ev: dict) -> float | None:
  if ev.get("train_acc") is None or ev.get("test_acc") is None:
    return None
  return float(ev["train_acc"] - ev["test_acc"])


def _number(x) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None


# ------------------------------------------------------------------- the run's files

def run_files(run: run_lib.Run, measured: list[int], read: list[int], out) -> dict:
  """The ``run`` group per replica: ``fit_step`` (summary.json's), ``loss_sum_to_fit``
  (the sum over training steps up to the fit of the minibatch loss, from metrics.jsonl's
  mean minibatch loss between evaluations times the steps between them) and ``llc`` (from
  OUT/llc.json, written by ``zhang llc RUN --out OUT`` for this run at the checkpoint the
  replica is read from; None where there is none)."""
  fits = compute.fit_steps(run)
  return dict(fit_step=[None if f is None else float(f) for f in fits],
              loss_sum_to_fit=_loss_sums(run, fits),
              llc=_llc(run, read, out))


def _loss_sums(run: run_lib.Run, fits) -> list[float | None]:
  rows: dict[int, dict[int, float | None]] = {}
  for row in run.metrics_rows():
    rows.setdefault(int(row["replica"]), {})[int(row["step"])] = row.get("batch_loss")
  out = []
  for r, fit in zip(run.replicas, fits):
    evals = sorted((rows.get(r.index) or {}).items())
    if fit is None or not evals:
      out.append(None)
      continue
    total, previous = 0.0, 0
    for step, loss in evals:
      if step > fit:
        break
      if step > previous:
        total += (loss if loss is not None else np.nan) * (step - previous)
      previous = step
    out.append(_number(total))
  return out


def _llc(run: run_lib.Run, read: list[int], out) -> list[float | None]:
  path = metrics_lib.workdir_path(out) / "llc.json" if out is not None else None
  if path is None or not path.exists():
    return [None] * len(run.replicas)
  try:
    found = json.loads(path.read_text())
    if found["settings"].get("config_hash") != run.config_hash:
      return [None] * len(run.replicas)
    by = {(e["replica"], e["step"]): e.get("llc") for e in found["replicas"]}
  except (ValueError, KeyError, TypeError):
    return [None] * len(run.replicas)
  return [by.get((r.index, step)) for r, step in zip(run.replicas, read)]


def write(result: dict, out, name: str = JSON) -> None:
  """OUT/measures.json (or another probe's ``name``), in one atomic write."""
  out = metrics_lib.workdir_path(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise metrics_lib.disk_error(out, e) from None
  metrics_lib.write_json(out / name, result)
