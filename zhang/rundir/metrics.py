"""Run files a notebook reads without the code: config.json, metrics.jsonl, summary.json.

Only process 0 writes. ``summary.json`` is rewritten atomically after every evaluation
(``"status": "running"``) and at the end (``"complete"``), so a run in progress is readable.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any

import numpy as np
from etils import epath

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
FIT_TIMES = "fit_times.npz"  # per-example fit steps (``write_fit_times``)
RUN_FILES = (CONFIG, METRICS, SUMMARY, FIT_TIMES)


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
  _write_whole(path, json.dumps(_plain(obj), indent=1) + "\n")


def write_fit_times(workdir: epath.Path, fit_step, noisy, step: int) -> None:
  """``WORKDIR/fit_times.npz`` (compressed): ``fit_step`` (replicas, n_train) int32, the
  first evaluation step from which each training example stayed classified as its (possibly
  corrupted) label through the last evaluation, -1 if it is not at the last; ``noisy`` (same
  shape, bool), whether the corruption changed the example's label; ``step``, the last
  evaluation's step. Row i is summary.json's replica i."""
  buf = io.BytesIO()
  np.savez_compressed(buf, fit_step=np.asarray(fit_step, np.int32),
                      noisy=np.asarray(noisy, bool), step=np.asarray(step, np.int64))
  path = workdir / FIT_TIMES
  if not is_local(path):
    path.write_bytes(buf.getvalue())
    return
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_bytes(buf.getvalue())
  tmp.replace(path)


def _write_whole(path: epath.Path, text: str) -> None:
  """Replaces the file's contents in one step: a temporary file renamed over it on a local
  disk; on an object store (gs://) one upload, which readers see whole or not at all (a
  rename there is a copy and a delete)."""
  if not is_local(path):
    path.write_text(text)
    return
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
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
    self._keys: set[tuple[int, int]] = set()  # (step, replica) of every row in the file
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
        if not isinstance(row, dict) or "step" not in row or "replica" not in row:
          continue
        if row["step"] <= keep_until_step and (row["step"], row["replica"]) not in self._keys:
          kept.append(line + "\n")
          self._keys.add((row["step"], row["replica"]))
      self._text = "".join(kept)
    _write_whole(path, self._text)
    if is_local(path):
      self._metrics = open(os.fspath(path), "a")

  def rows(self, rows: list[dict]) -> None:
    if not self.active:
      return
    self._keys.update((row["step"], row["replica"]) for row in rows)
    text = "".join(json.dumps(_plain(row)) + "\n" for row in rows)
    if self._metrics:
      self._metrics.write(text)
      self._metrics.flush()
    else:
      self._text += text
      (self.workdir / METRICS).write_text(self._text)

  def keys(self) -> set[tuple[int, int]]:
    """(step, replica) of every row in the file."""
    return set(self._keys)

  def summary(self, summary: dict) -> None:
    if self.active:
      write_json(self.workdir / SUMMARY, summary)

  def close(self) -> None:
    if self._metrics:
      self._metrics.close()


def _coordinates(r) -> dict:
  """A replica's place in the grid, as every row and summary entry names it."""
  return dict(replica=r.index, model=r.model, kind=r.kind, corruption=r.corruption, seed=r.seed,
              learning_rate=r.learning_rate, weight_decay=r.weight_decay,
              augmentation=r.augmentation)


class FitTracker:
  """Which replica fitted when, the last evaluation, and the rows and summary they make.

  Its state round-trips through ``meta()``/``load()`` (JSON, saved in every checkpoint).
  """

  def __init__(self, replicas, label_noise, fit_threshold: float, batch_size: int,
               n_train: int, header: dict, generalize_threshold: float = 0.99):
    self.replicas = replicas
    self.generalize_threshold = generalize_threshold
    # The first evaluation with test accuracy >= generalize_threshold (grokking's event).
    self.generalize_step: list[int | None] = [None] * len(replicas)
    self.label_noise = np.asarray(label_noise, np.float64)
    self.fit_threshold = fit_threshold
    self.batch_size = batch_size
    self.n_train = n_train
    self.header = header
    self.fit_step: list[int | None] = [None] * len(replicas)
    self.fit_test_acc: list[float | None] = [None] * len(replicas)
    self.last: dict[str, np.ndarray] = {}
    self.last_rows: list[dict] = []  # the last evaluation's rows, as written
    self.batch_loss = np.full(len(replicas), np.nan)
    # The train loop's running sum of minibatch losses since the last evaluation (every
    # replica of the padded grid) and its number of steps, kept in checkpoints.
    self.loss_sum: list[float] | None = None
    self.loss_steps = 0
    self.seconds_before = 0.0  # wall time of earlier processes of a resumed run
    # Where the time goes, summed over the processes of a resumed run: the train chunks and
    # the evaluations, each call timed to its result. A process's first call of each
    # compiles it, so those count apart, in first_call_seconds.
    self.timing = dict(train_seconds=0.0, train_steps=0, eval_seconds=0.0, evaluations=0,
                       first_call_seconds=0.0)
    self._called: set[str] = set()

  def epoch(self, step: int) -> float:
    return step * self.batch_size / self.n_train

  def record(self, step: int, ev: dict, lr) -> list[dict]:
    """Takes an evaluation of every replica and each one's learning rate at ``step``
    (after the schedule); returns its metrics rows. Fields with more than a number per
    replica (``test_reliability``'s bins) go to the summary only."""
    lr = np.broadcast_to(np.asarray(lr, np.float64), (len(self.replicas),))
    # Per-replica arrays may be longer than the grid (inert padding replicas): drop those.
    self.last = {k: np.asarray(v)[:len(self.replicas)] for k, v in ev.items()}
    rows = []
    for i, r in enumerate(self.replicas):
      if self.fit_step[i] is None and ev["train_acc"][i] >= self.fit_threshold:
        self.fit_step[i], self.fit_test_acc[i] = step, float(ev["test_acc"][i])
      if self.generalize_step[i] is None and ev["test_acc"][i] >= self.generalize_threshold:
        self.generalize_step[i] = step
      rows.append(dict(step=step, epoch=self.epoch(step), **_coordinates(r),
                       **{k: v[i] for k, v in self.last.items() if v.ndim == 1},
                       batch_loss=self.batch_loss[i], lr=float(lr[i])))
    self.last_rows = _plain(rows)
    return rows

  def time_call(self, what: str, seconds: float, steps: int = 0) -> None:
    """Counts one call of the train chunk (``what="train"``, ``steps`` long) or of the
    evaluation (``"eval"``) that took ``seconds``, result included."""
    if what not in ("train", "eval"):
      raise ValueError(f"time_call: {what!r} is neither 'train' nor 'eval'")
    if what not in self._called:
      self._called.add(what)
      self.timing["first_call_seconds"] += seconds
    elif what == "train":
      self.timing["train_seconds"] += seconds
      self.timing["train_steps"] += steps
    else:
      self.timing["eval_seconds"] += seconds
      self.timing["evaluations"] += 1

  def timing_summary(self) -> dict:
    """``timing`` with what follows from it: ms per train step, seconds per evaluation,
    evaluation's share of the timed seconds, and ``eval_cost``: the seconds of evaluating one
    image (train and test sets, every replica) over those of training on one example. A
    value is None until its calls have been timed (a process's first calls compile)."""
    t = dict(self.timing)
    train_steps, evaluations = t["train_steps"], t["evaluations"]
    per_step = t["train_seconds"] / train_steps if train_steps else None
    per_eval = t["eval_seconds"] / evaluations if evaluations else None
    images = self.n_train + int(self.header.get("n_test", 0))
    t.update(
        train_ms_per_step=None if per_step is None else 1e3 * per_step,
        eval_seconds_each=per_eval,
        eval_images=images,
        eval_cost=(None if per_step is None or per_eval is None
                   else (per_eval / images) / (per_step / self.batch_size)))
    timed = t["train_seconds"] + t["eval_seconds"]
    t["eval_share"] = t["eval_seconds"] / timed if timed else None
    return t

  def num_fitted(self) -> int:
    return sum(f is not None for f in self.fit_step)

  def all_fitted(self) -> bool:
    return self.num_fitted() == len(self.replicas)

  def min_train_acc(self) -> float:
    return float(np.min(self.last["train_acc"])) if self.last else 0.0

  def meta(self, seconds: float) -> dict:
    return _plain(dict(config_hash=self.header["config_hash"], fit_step=self.fit_step,
                       fit_test_acc=self.fit_test_acc, generalize_step=self.generalize_step,
                       last={k: v.tolist() for k, v in self.last.items()},
                       last_rows=self.last_rows,
                       batch_loss=self.batch_loss.tolist(),
                       loss_sum=self.loss_sum, loss_steps=self.loss_steps,
                       seconds=self.seconds_before + seconds, timing=self.timing))

  def load(self, meta: dict) -> None:
    self.fit_step = list(meta["fit_step"])
    self.fit_test_acc = list(meta["fit_test_acc"])
    # Absent in older checkpoints: recounted from the evaluations after the resume.
    self.generalize_step = list(meta.get("generalize_step", self.generalize_step))
    self.last = {k: np.asarray(v, np.float64) for k, v in meta["last"].items()}
    self.batch_loss = np.asarray([np.nan if v is None else v for v in meta["batch_loss"]])
    self.seconds_before = float(meta["seconds"])
    self.last_rows = list(meta.get("last_rows", []))  # absent in older checkpoints
    self.loss_sum = meta.get("loss_sum")
    self.loss_steps = int(meta.get("loss_steps", 0))
    # Checkpoints written before timing was recorded have none: it starts from zero.
    self.timing.update(meta.get("timing", {}))

  def summary(self, step: int, status: str, seconds: float) -> dict:
    out = []
    for i, r in enumerate(self.replicas):
      fs = self.fit_step[i]
      last = {k: v[i] for k, v in self.last.items()}
      out.append(dict(
          **_coordinates(r), label_noise=float(self.label_noise[i]), fit_step=fs,
          fit_epoch=None if fs is None else self.epoch(fs), fit_test_acc=self.fit_test_acc[i],
          generalize_step=self.generalize_step[i],
          final_train_acc=last.get("train_acc"), final_test_acc=last.get("test_acc"),
          final_train_loss=last.get("train_loss"), final_test_loss=last.get("test_loss"),
          test_confidence=last.get("test_confidence"), test_ece=last.get("test_ece"),
          test_entropy=last.get("test_entropy"),
          final_train_acc_clean=last.get("train_acc_clean"),
          final_train_acc_noisy=last.get("train_acc_noisy"),
          final_train_acc_noisy_vs_true=last.get("train_acc_noisy_vs_true"),
          # Per confidence bin: [mean confidence, accuracy, count].
          test_reliability=(None if "test_reliability" not in last
                            else np.asarray(last["test_reliability"]).tolist())))
    return _plain(dict(self.header, status=status, steps_run=step,
                       wall_seconds=round(self.seconds_before + seconds, 2),
                       timing=self.timing_summary(), replicas=out))
