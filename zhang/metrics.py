"""Run files a notebook reads without the code: config.json, metrics.jsonl, summary.json.

Only process 0 writes. ``summary.json`` is rewritten atomically after every evaluation
(``"status": "running"``) and at the end (``"complete"``), so a run in progress is readable.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from etils import epath

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
RUN_FILES = (CONFIG, METRICS, SUMMARY)


def _plain(x: Any):
  """numpy scalars -> Python; NaN/inf -> None (JSON has neither)."""
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


def workdir_path(workdir) -> epath.Path:
  """A workdir as an ``epath.Path``: local paths made absolute, ``gs://`` kept as is."""
  text = os.fspath(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


def write_json(path: epath.Path, obj: Any) -> None:
  """Writes JSON atomically (a reader never sees half a file)."""
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(_plain(obj), indent=1) + "\n")
  tmp.replace(path)


class Writer:
  """Appends metric rows and rewrites the summary; a no-op on processes other than 0.

  ``keep_until_step``: resuming from a checkpoint of that step, rows of later steps (written
  after the checkpoint, before the run stopped) are dropped, so every (step, replica) row
  appears exactly once. None starts a new file.
  """

  def __init__(self, workdir: epath.Path, active: bool = True,
               keep_until_step: int | None = None):
    self.workdir = workdir
    self.active = active
    self._metrics = None
    self._text = ""  # the whole file, on object stores (gs://), which cannot append
    if not active:
      return
    path = workdir / METRICS
    if keep_until_step is not None and path.exists():
      kept = []
      for line in path.read_text().splitlines():
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut off by a kill
        if row.get("step", math.inf) <= keep_until_step:
          kept.append(line + "\n")
      self._text = "".join(kept)
    tmp = workdir / (METRICS + ".tmp")
    tmp.write_text(self._text)
    tmp.replace(path)
    if is_local(path):
      self._metrics = open(os.fspath(path), "a")

  def rows(self, rows: list[dict]) -> None:
    if not self.active:
      return
    text = "".join(json.dumps(_plain(row)) + "\n" for row in rows)
    if self._metrics:
      self._metrics.write(text)
      self._metrics.flush()
    else:
      self._text += text
      (self.workdir / METRICS).write_text(self._text)

  def summary(self, summary: dict) -> None:
    if self.active:
      write_json(self.workdir / SUMMARY, summary)

  def close(self) -> None:
    if self._metrics:
      self._metrics.close()


class FitTracker:
  """Which replica fitted when, the last evaluation, and the rows and summary they make.

  Its state round-trips through ``meta()``/``load()`` (JSON, saved in every checkpoint).
  """

  def __init__(self, replicas, label_noise, fit_threshold: float, batch_size: int,
               n_train: int, header: dict):
    self.replicas = replicas
    self.label_noise = np.asarray(label_noise, np.float64)
    self.fit_threshold = fit_threshold
    self.batch_size = batch_size
    self.n_train = n_train
    self.header = header
    self.fit_step: list[int | None] = [None] * len(replicas)
    self.fit_test_acc: list[float | None] = [None] * len(replicas)
    self.last: dict[str, np.ndarray] = {}
    self.batch_loss = np.full(len(replicas), np.nan)
    self.seconds_before = 0.0  # wall time of earlier sessions of a resumed run

  def epoch(self, step: int) -> float:
    return step * self.batch_size / self.n_train

  def record(self, step: int, ev: dict, lr: float) -> list[dict]:
    """Takes an evaluation of every replica; returns its metrics rows."""
    # Per-replica arrays may be longer than the grid (inert padding replicas): drop those.
    self.last = {k: np.asarray(v)[:len(self.replicas)] for k, v in ev.items()}
    rows = []
    for i, r in enumerate(self.replicas):
      if self.fit_step[i] is None and ev["train_acc"][i] >= self.fit_threshold:
        self.fit_step[i], self.fit_test_acc[i] = step, float(ev["test_acc"][i])
      rows.append(dict(step=step, epoch=self.epoch(step), replica=r.index, kind=r.kind,
                       corruption=r.corruption, seed=r.seed,
                       **{k: v[i] for k, v in self.last.items()},
                       batch_loss=self.batch_loss[i], lr=lr))
    return rows

  def num_fitted(self) -> int:
    return sum(f is not None for f in self.fit_step)

  def all_fitted(self) -> bool:
    return self.num_fitted() == len(self.replicas)

  def min_train_acc(self) -> float:
    return float(np.min(self.last["train_acc"])) if self.last else 0.0

  def meta(self, seconds: float) -> dict:
    return _plain(dict(config_hash=self.header["config_hash"], fit_step=self.fit_step,
                       fit_test_acc=self.fit_test_acc,
                       last={k: v.tolist() for k, v in self.last.items()},
                       batch_loss=self.batch_loss.tolist(),
                       seconds=self.seconds_before + seconds))

  def load(self, meta: dict) -> None:
    self.fit_step = list(meta["fit_step"])
    self.fit_test_acc = list(meta["fit_test_acc"])
    self.last = {k: np.asarray(v, np.float64) for k, v in meta["last"].items()}
    self.batch_loss = np.asarray([np.nan if v is None else v for v in meta["batch_loss"]])
    self.seconds_before = float(meta["seconds"])

  def summary(self, step: int, status: str, seconds: float) -> dict:
    out = []
    for i, r in enumerate(self.replicas):
      fs = self.fit_step[i]
      last = {k: v[i] for k, v in self.last.items()}
      out.append(dict(
          replica=r.index, kind=r.kind, corruption=r.corruption, seed=r.seed,
          label_noise=float(self.label_noise[i]), fit_step=fs,
          fit_epoch=None if fs is None else self.epoch(fs), fit_test_acc=self.fit_test_acc[i],
          final_train_acc=last.get("train_acc"), final_test_acc=last.get("test_acc"),
          final_train_loss=last.get("train_loss"), final_test_loss=last.get("test_loss"),
          test_confidence=last.get("test_confidence"), test_entropy=last.get("test_entropy")))
    return _plain(dict(self.header, status=status, steps_run=step,
                       wall_seconds=round(self.seconds_before + seconds, 2), replicas=out))
