"""Synthetic run directories whose answers are known exactly, for tests and demos.

They follow the run-file contract of `zhang train` (config.json, metrics.jsonl,
summary.json) but come from closed-form curves, not training: replica r reaches 100% train
accuracy exactly at its `fit_step` (an evaluation step) and never before.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
from etils import epath

from zhang.rundir import format as format_lib

HPARAMS = ("learning_rate", "weight_decay", "augmentation")


def replica(kind: str, corruption: float, seed: int, fit_step: int | None,
            test_acc: float, confidence: float | None = None, *,
            learning_rate: float | None = None, weight_decay: float | None = None,
            augmentation: str | None = None) -> dict[str, Any]:
  """One synthetic replica; `fit_step=None` never fits (censored).

  Hyper-parameters left as None take the run config's scalars.
  """
  return dict(kind=kind, corruption=corruption, seed=seed, fit_step=fit_step,
              test_acc=test_acc, confidence=test_acc if confidence is None else confidence,
              learning_rate=learning_rate, weight_decay=weight_decay,
              augmentation=augmentation)


def _curves(rep: dict[str, Any], steps: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
  fit = rep["fit_step"]
  horizon = fit if fit is not None else steps.max() * 1.5
  frac = steps / horizon
  # Strictly below 1 until the fit step, exactly 1 from then on.
  acc = np.minimum(1 / num_classes + (0.995 - 1 / num_classes) * frac, 0.995)
  if fit is not None:
    acc = np.where(steps >= fit, 1.0, acc)
  loss = math.log(num_classes) * np.exp(-3.0 * frac)
  chance = 1 / num_classes
  test_acc = chance + (rep["test_acc"] - chance) * (1 - np.exp(-5.0 * frac))
  conf = chance + (rep["confidence"] - chance) * (1 - np.exp(-5.0 * frac))
  return dict(train_acc=acc, train_loss=loss, test_acc=test_acc,
              test_loss=-np.log(np.maximum(test_acc, 1e-3)), test_confidence=conf,
              test_entropy=math.log(num_classes) * (1 - conf))


def write_run(workdir: str | epath.Path, replicas: Sequence[dict[str, Any]], *,
              model: str = "mlp_1x512", dataset: str = "digits", n_train: int = 1280,
              n_test: int = 512, num_classes: int = 10, batch_size: int = 128,
              eval_every: int = 10, max_steps: int = 200, steps_run: int | None = None,
              status: str = "complete", num_params: int = 1_209_866,
              config: dict[str, Any] | None = None,
              torn_last_line: bool = False) -> epath.Path:
  """Writes a run directory. `steps_run < max_steps` with status 'running' is a partial run."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  steps_run = max_steps if steps_run is None else steps_run
  cfg = dict(model=model, dataset=dataset, batch_size=batch_size, learning_rate=0.01,
             momentum=0.9, lr_decay=0.95, lr_decay_every=max(n_train // batch_size, 1),
             weight_decay=0.0, max_steps=max_steps, eval_every=eval_every, fit_threshold=1.0,
             augmentation="none",
             grid=[dict(kinds=sorted({r["kind"] for r in replicas}),
                        corruptions=sorted({r["corruption"] for r in replicas}),
                        seeds=sorted({r["seed"] for r in replicas}))])
  cfg |= config or {}
  hps = [{h: cfg.get(h, "none") if rep.get(h) is None else rep[h] for h in HPARAMS}
         for rep in replicas]
  for h in HPARAMS:  # the grid axes the replicas set, as `zhang train` writes them
    if any(rep.get(h) is not None for rep in replicas):
      cfg["grid"][0][h + "s"] = sorted({hp[h] for hp in hps})
  (workdir / format_lib.CONFIG).write_text(json.dumps(format_lib.stamped(cfg), indent=2))
  steps = np.arange(0, steps_run + 1, eval_every)
  from zhang.experiment.step import (
    schedule,  # the trainer's own (imports jax: only when writing runs)
  )
  decay = np.asarray(schedule(cfg["lr_decay"], cfg["lr_decay_every"])(steps))
  lines, summary_reps = [], []
  for i, (rep, hp) in enumerate(zip(replicas, hps)):
    c = _curves(rep, steps.astype(float), num_classes)
    for j, step in enumerate(steps):
      lines.append(json.dumps(dict(
          step=int(step), epoch=float(step * batch_size / n_train), replica=i,
          kind=rep["kind"], corruption=rep["corruption"], seed=rep["seed"], **hp,
          lr=float(hp["learning_rate"] * decay[j]),
          **{k: float(v[j]) for k, v in c.items()})))
    fitted = rep["fit_step"] is not None and rep["fit_step"] <= steps_run
    summary_reps.append(dict(
        replica=i, kind=rep["kind"], corruption=rep["corruption"], seed=rep["seed"], **hp,
        label_noise=rep["corruption"] * (1 - 1 / num_classes) if rep["kind"] == "labels"
        else 0.0,
        fit_step=rep["fit_step"] if fitted else None,
        fit_epoch=rep["fit_step"] * batch_size / n_train if fitted else None,
        final_train_acc=float(c["train_acc"][-1]), final_test_acc=float(c["test_acc"][-1]),
        final_train_loss=float(c["train_loss"][-1]), final_test_loss=float(c["test_loss"][-1]),
        test_confidence=float(c["test_confidence"][-1])))
  text = "\n".join(lines) + "\n"
  if torn_last_line:
    text += lines[-1][: len(lines[-1]) // 2]
  (workdir / "metrics.jsonl").write_text(text)
  summary = dict(status=status, model=model, dataset=dataset, num_params=num_params,
                 n_train=n_train, n_test=n_test, num_classes=num_classes,
                 steps_per_epoch=n_train / batch_size, steps_run=int(steps[-1]),
                 replicas=summary_reps)
  (workdir / format_lib.SUMMARY).write_text(json.dumps(format_lib.stamped(summary), indent=2))
  return workdir


# Shape measured on digits with MLP 1x512: p = 0.2 is the slowest to fit, taking
# about twice as long as p = 1. Fit steps per corruption level for seed 0.
EXAMPLE_FIT_STEPS = {0.0: 40, 0.2: 240, 0.4: 200, 0.6: 160, 0.8: 140, 1.0: 120}


def write_example_run(workdir: str | epath.Path, model: str = "mlp_1x512",
                      seeds: Sequence[int] = (0, 1, 2), scale: float = 1.0,
                      censor: bool = True, test_acc_p0: float = 0.92,
                      **kwargs) -> epath.Path:
  """A realistic-looking run: a corruption sweep plus the pixel randomizations.

  `scale` multiplies every fit time (a slower model); with `censor`, seed 0 at p = 0.2
  never fits.
  """
  reps = []
  for seed in seeds:
    jitter = 1 + 0.1 * seed
    for p, fit in EXAMPLE_FIT_STEPS.items():
      step = int(round(fit * scale * jitter / 10)) * 10
      if censor and seed == 0 and p == 0.2:
        step = None
      test_acc = test_acc_p0 * (1 - p) + 0.1 * p
      reps.append(replica("labels", p, seed, step, test_acc,
                          confidence=min(0.97, test_acc + 0.55 * p)))
    for kind, fit in (("shuffled_pixels", 60), ("random_pixels", 90), ("gaussian", 80)):
      step = int(round(fit * scale * jitter / 10)) * 10
      acc = test_acc_p0 - 0.05 if kind == "shuffled_pixels" else 0.1
      reps.append(replica(kind, 0.0, seed, step, acc, confidence=min(0.97, acc + 0.5)))
  kwargs.setdefault("max_steps", int(round(300 * scale / 10)) * 10)
  return write_run(workdir, reps, model=model, **kwargs)
