"""How far each replica's tangent kernel moved during training: lazy against rich.

For every saved step t of a run and every replica, the class-averaged empirical tangent
kernel K_t (``zhang.probes.ntk.empirical.TangentKernel``, with respect to the trained
parameters) on a fixed probe subset (the first ``n`` training examples, as the replica
sees them: randomized as it trained), and

- the kernel distance 1 - <K_0, K_t> / (||K_0|| ||K_t||) (Fort et al. 2020): 0 for a kernel
  that only rescaled, the lazy regime's signature; it grows as features are learned;
- the kernel-target alignment of K_t with the replica's own training labels, centred
  (Cortes et al. 2012): <H K H, H Y Y^T H> / (||H K H|| ||H Y Y^T H||), Y the labels'
  one-hot rows, H the centring matrix: how much the kernel has turned toward the labels.

The tangent kernel of alpha (f(w) - f(w_0)) is alpha^2 times f's, so both numbers are those
of the model's own kernel for any output scale. ``zhang ntk RUN --steps all --out OUT``
writes OUT/kernel_movement.json; ``zhang report`` plots both against the step.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

from zhang.analysis.lazy_rich import FILE
from zhang.errors import UsageError
from zhang.experiment import models
from zhang.probes import run as run_lib
from zhang.probes.ntk.empirical import TangentKernel
from zhang.rundir import format as format_lib
from zhang.rundir import metrics as metrics_lib

DEFAULT_N = 256  # probe examples: a kernel of 256 x 256 per replica and step


def parse_steps(text: str, saved: list[int]) -> list[int]:
  """``all`` (0 and every saved step) or steps joined by commas, each 0 or a saved step."""
  if text == "all":
    return [0] + [t for t in saved if t > 0]
  try:
    steps = sorted({int(v) for v in text.split(",") if v.strip()})
  except ValueError:
    steps = []
  bad = [t for t in steps if t != 0 and t not in saved]
  if not steps or bad:
    listed = ", ".join(map(str, saved)) or "none"
    raise UsageError(f"`steps` {text!r} must be 'all' or saved steps joined by commas (0 and "
                     f"{listed})")
  return steps if 0 in steps else [0] + steps


def centred_alignment(k: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Centred kernel-target alignment of ``k`` (n, n) with one-hot ``labels`` (n,)."""
  y = np.eye(num_classes)[labels]
  y -= y.mean(0)
  kc = k - k.mean(0) - k.mean(1)[:, None] + k.mean()
  target = y @ y.T
  denom = np.linalg.norm(kc) * np.linalg.norm(target)
  return float(np.sum(kc * target) / denom) if denom > 0 else float("nan")


def kernel_distance(k0: np.ndarray, k: np.ndarray) -> float:
  """1 - <K_0, K> / (||K_0|| ||K||)."""
  return float(1.0 - np.sum(k0 * k) / (np.linalg.norm(k0) * np.linalg.norm(k)))


def compute(workdir, steps: str = "all", n: int | None = None, method: str = "structured",
            data_dir: str | None = None, log=None) -> dict:
  """kernel_movement.json's contents for the run in ``workdir``, or every model's run of a
  study (module docstring)."""
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
  path = metrics_lib.workdir_path(workdir)
  models_ = format_lib.read_config(path).get("models") if path.is_dir() else None
  runs = ([run_lib.open(path / str(m), data_dir) for m in models_] if models_
          else [run_lib.open(workdir, data_dir)])
  n = DEFAULT_N if n is None else n
  chosen = {run.path: parse_steps(steps, run.steps) for run in runs}
  for run in runs:
    if not 1 <= n <= run.n:
      raise UsageError(f"`n` {n} must be in 1..{run.n} (the run's training examples)")
  start, rows = time.perf_counter(), []
  for run in runs:
    rows += _run_rows(run, chosen[run.path], n, method, log)
  first = runs[0]
  return dict(settings=dict(run=os.fspath(path), config_hash=first.config_hash,
                            runs=[dict(run=r.path, config_hash=r.config_hash) for r in runs],
                            model=first.config.model, dataset=first.config.dataset, n=n,
                            steps=sorted({t for ts in chosen.values() for t in ts}),
                            method=method, seconds=round(time.perf_counter() - start, 2),
                            backend=jax.default_backend()),
              rows=rows)


def _run_rows(run: run_lib.Run, steps: list[int], n: int, method: str, log) -> list[dict]:
  """One run's rows: every replica at every step of ``steps``."""
  start = time.perf_counter()
  tk = TangentKernel(run.module, run.dataset.num_classes, run.input_shape, method)
  x = {r.index: run.inputs(r, run_lib.TRAIN)[:n] for r in run.replicas}
  preset = models.get(run.config.model).parameterization
  first, rows = {}, []
  for t in steps:
    state = run.state(t)
    for r in run.replicas:
      params, other = run.variables(state, r)
      k = tk.matrices(params, other, x[r.index])[0]
      first.setdefault(r.index, k)
      rows.append(dict(step=t, **metrics_lib.coordinates(r),
                       parameterization=preset,
                       kernel_distance=kernel_distance(first[r.index], k),
                       alignment=centred_alignment(k, run.labels[r.index][:n],
                                                   run.dataset.num_classes),
                       trace=float(np.trace(k))))
    log(f"{run.config.model} step {t}: {len(run.replicas)} kernels of {n} x {n} "
        f"({time.perf_counter() - start:.1f}s so far)")
  return rows


def write(result: dict, out) -> list[str]:
  """Writes ``out/kernel_movement.json`` and its figure; returns the paths written."""
  from zhang.analysis import lazy_rich  # matplotlib only when figures are drawn
  from zhang.probes.measures import probe as measures_probe
  measures_probe.write(result, out, FILE)
  path = metrics_lib.workdir_path(out)
  return [os.fspath(path / FILE)] + lazy_rich.plot(result, os.fspath(path))
