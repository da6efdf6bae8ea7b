"""Run files a notebook reads without the code: config.json, metrics.jsonl, summary.json.

Only process 0 writes. ``summary.json`` is rewritten atomically after every evaluation
(``"status": "running"``) and at the end (``"complete"``), so a run in progress is readable.
config.json and summary.json carry the run-file ``format`` (``zhang.rundir.format``, which
reads them back).

What they are made of, each kept apart: ``Fits`` (which replica fitted and generalized
when, the last evaluation), ``Timing`` (where the time went) and ``LossSums`` (the minibatch
losses since the last evaluation), put together in ``Bookkeeping``, whose ``meta`` every
checkpoint keeps.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
from typing import Any, NamedTuple

import numpy as np
from etils import epath

from zhang.errors import RunError
from zhang.rundir import format as format_lib
from zhang.rundir.format import CONFIG, FIT_TIMES, METRICS, RUN_FILES, SUMMARY  # noqa: F401


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


def write_config(workdir: epath.Path, config_dict: dict) -> None:
  """``WORKDIR/config.json``: the config's fields and the run-file ``format``."""
  write_json(workdir / CONFIG, format_lib.stamped(config_dict))


def write_summary(workdir: epath.Path, summary: dict) -> None:
  """``WORKDIR/summary.json``: the summary's fields and the run-file ``format``."""
  write_json(workdir / SUMMARY, format_lib.stamped(summary))


def write_fit_times(workdir: epath.Path, fit_step, noisy, step: int) -> None:
  """``WORKDIR/fit_times.npz`` (compressed): ``fit_step`` (replicas, n_train) int32, the
  first evaluation step from which each training example stayed classified as its (possibly
  corrupted) label through the last evaluation, -1 if it is not at the last; ``noisy`` (same
  shape, bool), whether the corruption changed the example's label; ``step``, the last
  evaluation's step. Row i is summary.json's replica i."""
  buf = io.BytesIO()
  np.savez_compressed(buf, fit_step=np.asarray(fit_step, np.int32),
                      noisy=np.asarray(noisy, bool), step=np.asarray(step, np.int64))
  write_bytes(workdir / FIT_TIMES, buf.getvalue())


def _write_whole(path: epath.Path, text: str) -> None:
  write_bytes(path, text.encode())


def write_bytes(path, data: bytes) -> None:
  """Replaces the file's contents in one step: a temporary file renamed over it on a local
  disk (removed again if the write fails, so nothing partial is left); on an object store
  (gs://) one upload, which readers see whole or not at all (a rename there is a copy and a
  delete). A full disk raises RunError (``disk_error``)."""
  path = epath.Path(path)
  if not is_local(path):
    path.write_bytes(data)
    return
  tmp = path.parent / (path.name + ".tmp")
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise disk_error(path, e) from None


def disk_error(path, e: OSError) -> Exception:
  """A failed write as the error to raise: a full disk (or quota) is a RunError of one
  line, saying what is free; any other OSError is returned as it is."""
  if e.errno not in (errno.ENOSPC, errno.EDQUOT):
    return e
  return RunError(f"could not write {path} ({os.strerror(e.errno).lower()}"
                  f"{_free_text(path)}): free space, then rerun the same command")


def _free_text(path) -> str:
  existing = os.fspath(path)
  while existing and not os.path.isdir(existing):
    existing = os.path.dirname(existing)
  try:
    return f", {shutil.disk_usage(existing or '.').free / 2**20:.1f} MiB free"
  except OSError:
    return ""


def check_free_space(path, nbytes: int, what: str) -> None:
  """Before a long computation writes ``nbytes`` under ``path``: RunError if its disk has
  not that room (with a margin), so the work is not lost at its end."""
  if not is_local(epath.Path(path)):
    return
  existing = os.fspath(path)
  while not os.path.isdir(existing):
    existing = os.path.dirname(existing) or "."
  free = shutil.disk_usage(existing).free
  if free < nbytes * 1.1 + (1 << 20):
    raise RunError(f"{what} takes about {nbytes / 2**20:.1f} MiB and {existing} has "
                   f"{free / 2**20:.1f} MiB free: free space, or write it elsewhere")


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
      try:
        self._metrics.write(text)
        self._metrics.flush()
      except OSError as e:
        raise disk_error(self.workdir / METRICS, e) from None
    else:
      self._text += text
      (self.workdir / METRICS).write_text(self._text)

  def keys(self) -> set[tuple[int, int]]:
    """(step, replica) of every row in the file."""
    return set(self._keys)

  def summary(self, summary: dict) -> None:
    if self.active:
      write_summary(self.workdir, summary)

  def close(self) -> None:
    if self._metrics:
      try:
        self._metrics.close()
      except OSError:  # a full disk, already raised by ``rows``
        pass


def coordinates(r) -> dict:
  """A replica's place in the grid, as every row and summary entry names it."""
  return dict(replica=r.index, model=r.model, kind=r.kind, corruption=r.corruption, seed=r.seed,
              learning_rate=r.learning_rate, weight_decay=r.weight_decay,
              augmentation=r.augmentation, output_scale=r.output_scale, dropout=r.dropout)


class Fits:
  """Which replica fitted its training set (train accuracy >= ``fit_threshold``) and which
  generalized (test accuracy >= ``generalize_threshold``, grokking's event) at which
  evaluation; the last evaluation, and the metrics rows and summary entries it makes."""

  def __init__(self, replicas, label_noise, fit_threshold: float,
               generalize_threshold: float, batch_size: int, n_train: int):
    self.replicas = replicas
    self.label_noise = np.asarray(label_noise, np.float64)
    self.fit_threshold = fit_threshold
    self.generalize_threshold = generalize_threshold
    self.batch_size = batch_size
    self.n_train = n_train
    self.fit_step: list[int | None] = [None] * len(replicas)
    self.fit_test_acc: list[float | None] = [None] * len(replicas)
    self.generalize_step: list[int | None] = [None] * len(replicas)
    # The first evaluation at which a replica's train loss was not finite (it diverged).
    self.diverged_step: list[int | None] = [None] * len(replicas)
    self.last: dict[str, np.ndarray] = {}
    self.last_rows: list[dict] = []  # the last evaluation's rows, as written

  def epoch(self, step: int) -> float:
    return step * self.batch_size / self.n_train

  def record(self, step: int, ev: dict, lr, batch_loss) -> list[dict]:
    """Takes an evaluation of every replica, each one's learning rate at ``step`` (after
    the schedule) and its mean minibatch loss since the last evaluation; returns its metrics
    rows. Fields with more than a number per replica (``test_reliability``'s bins) go to the
    summary only."""
    lr = np.broadcast_to(np.asarray(lr, np.float64), (len(self.replicas),))
    # Per-replica arrays may be longer than the grid (inert padding replicas): drop those.
    self.last = {k: np.asarray(v)[:len(self.replicas)] for k, v in ev.items()}
    rows = []
    for i, r in enumerate(self.replicas):
      if self.fit_step[i] is None and ev["train_acc"][i] >= self.fit_threshold:
        self.fit_step[i], self.fit_test_acc[i] = step, float(ev["test_acc"][i])
      if self.generalize_step[i] is None and ev["test_acc"][i] >= self.generalize_threshold:
        self.generalize_step[i] = step
      if self.diverged_step[i] is None and not np.isfinite(ev["train_loss"][i]):
        self.diverged_step[i] = step
      rows.append(dict(step=step, epoch=self.epoch(step), **coordinates(r),
                       **{k: v[i] for k, v in self.last.items() if v.ndim == 1},
                       batch_loss=batch_loss[i], lr=float(lr[i])))
    self.last_rows = _plain(rows)
    return rows

  def num_fitted(self) -> int:
    return sum(f is not None for f in self.fit_step)

  def all_fitted(self) -> bool:
    return self.num_fitted() == len(self.replicas)

  def min_train_acc(self) -> float:
    return float(np.min(self.last["train_acc"])) if self.last else 0.0

  def state(self) -> dict:
    """What a checkpoint keeps of it (``load`` reads it back)."""
    return dict(fit_step=self.fit_step, fit_test_acc=self.fit_test_acc,
                generalize_step=self.generalize_step, diverged_step=self.diverged_step,
                last={k: v.tolist() for k, v in self.last.items()}, last_rows=self.last_rows)

  def load(self, meta: dict) -> None:
    self.fit_step = list(meta["fit_step"])
    self.fit_test_acc = list(meta["fit_test_acc"])
    self.generalize_step = list(meta["generalize_step"])
    self.diverged_step = list(meta["diverged_step"])
    self.last = {k: np.asarray(v, np.float64) for k, v in meta["last"].items()}
    self.last_rows = list(meta["last_rows"])

  def replica_summaries(self) -> list[dict]:
    """Each replica's entry in summary.json: its coordinates, fit and last evaluation."""
    out = []
    for i, r in enumerate(self.replicas):
      fs = self.fit_step[i]
      last = {k: v[i] for k, v in self.last.items()}
      out.append(dict(
          **coordinates(r), label_noise=float(self.label_noise[i]), fit_step=fs,
          fit_epoch=None if fs is None else self.epoch(fs), fit_test_acc=self.fit_test_acc[i],
          generalize_step=self.generalize_step[i], diverged_step=self.diverged_step[i],
          final_train_acc=last.get("train_acc"), final_test_acc=last.get("test_acc"),
          final_train_loss=last.get("train_loss"), final_test_loss=last.get("test_loss"),
          test_confidence=last.get("test_confidence"), test_ece=last.get("test_ece"),
          test_entropy=last.get("test_entropy"),
          final_train_acc_clean=last.get("train_acc_clean"),
          final_train_acc_noisy=last.get("train_acc_noisy"),
          final_train_acc_noisy_vs_true=last.get("train_acc_noisy_vs_true"),
          **({"final_train_top5": last["train_top5"], "final_test_top5": last["test_top5"]}
             if "test_top5" in last else {}),
          # Per confidence bin: [mean confidence, accuracy, count].
          test_reliability=(None if "test_reliability" not in last
                            else np.asarray(last["test_reliability"]).tolist())))
    return out


class Timing:
  """Where a run's time goes, summed over the processes of a resumed run: the train calls
  and the evaluations, each timed to its result. A process's first call of each compiles
  it, so those count apart, in ``first_call_seconds``. And the wall time of the earlier
  processes (``seconds_before``)."""

  def __init__(self, eval_images: int, batch_size: int):
    self.eval_images = eval_images  # train and test set: what one evaluation classifies
    self.batch_size = batch_size
    self.totals = dict(train_seconds=0.0, train_steps=0, eval_seconds=0.0, evaluations=0,
                       first_call_seconds=0.0)
    self.seconds_before = 0.0
    self._called: set[str] = set()

  def time_call(self, what: str, seconds: float, steps: int = 0) -> None:
    """Counts one call of the train chunk (``what="train"``, ``steps`` long) or of the
    evaluation (``"eval"``) that took ``seconds``, result included."""
    if what not in ("train", "eval"):
      raise ValueError(f"time_call: {what!r} is neither 'train' nor 'eval'")
    if what not in self._called:
      self._called.add(what)
      self.totals["first_call_seconds"] += seconds
    elif what == "train":
      self.totals["train_seconds"] += seconds
      self.totals["train_steps"] += steps
    else:
      self.totals["eval_seconds"] += seconds
      self.totals["evaluations"] += 1

  def wall_seconds(self, seconds: float) -> float:
    """The run's wall time: this process's ``seconds`` and the earlier processes'."""
    return self.seconds_before + seconds

  def summary(self) -> dict:
    """summary.json's ``timing``: the totals with what follows from them: ms per train
    step, seconds per evaluation, evaluation's share of the timed seconds, and
    ``eval_cost``: the seconds of evaluating one image (train and test sets, every replica)
    over those of training on one example. A value is None until its calls have been timed
    (a process's first calls compile)."""
    t = dict(self.totals)
    train_steps, evaluations = t["train_steps"], t["evaluations"]
    per_step = t["train_seconds"] / train_steps if train_steps else None
    per_eval = t["eval_seconds"] / evaluations if evaluations else None
    images = self.eval_images
    t.update(
        train_ms_per_step=None if per_step is None else 1e3 * per_step,
        eval_seconds_each=per_eval,
        eval_images=images,
        eval_cost=(None if per_step is None or per_eval is None
                   else (per_eval / images) / (per_step / self.batch_size)))
    timed = t["train_seconds"] + t["eval_seconds"]
    t["eval_share"] = t["eval_seconds"] / timed if timed else None
    return t

  def state(self, seconds: float) -> dict:
    return dict(seconds=self.wall_seconds(seconds), timing=self.totals)

  def load(self, meta: dict) -> None:
    self.seconds_before = float(meta["seconds"])
    self.totals.update(meta["timing"])


class LossSums:
  """Each replica's minibatch losses since the last evaluation, as the train calls return
  their running sum (summed on the device step by step, so calls of any length give the same
  bits): the sum (every replica of the padded grid), its number of steps, and their mean,
  the rows' ``batch_loss``. Checkpoints keep them between evaluations."""

  def __init__(self, num_replicas: int, padded: int):
    self.total = np.zeros(padded, np.float32)
    self.steps = 0
    self.mean = np.full(num_replicas, np.nan)

  def add(self, total, steps: int) -> None:
    """A train call of ``steps`` steps returned the running sum ``total`` (waits for it)."""
    self.steps += steps
    self.total = np.asarray(total)
    self.mean = self.total[:len(self.mean)] / np.float32(self.steps)

  def reset(self) -> None:
    """After an evaluation: the sum starts again (the mean stays until the next call)."""
    self.total, self.steps = np.zeros_like(self.total), 0

  def state(self) -> dict:
    return dict(batch_loss=self.mean.tolist(), loss_sum=self.total.tolist(),
                loss_steps=self.steps)

  def load(self, meta: dict) -> None:
    self.mean = np.asarray([np.nan if v is None else v for v in meta["batch_loss"]])
    self.total = np.asarray(meta["loss_sum"], np.float32)
    self.steps = int(meta["loss_steps"])


# The fields of a checkpoint's ``meta`` (``Bookkeeping.meta``); a checkpoint without one of
# them is damaged.
META_FIELDS = ("config_hash", "fit_step", "fit_test_acc", "generalize_step", "diverged_step",
               "last", "last_rows", "batch_loss", "loss_sum", "loss_steps", "seconds", "timing")


class Bookkeeping(NamedTuple):
  """A run's bookkeeping beside its train state: the summary's ``header`` (the run's fixed
  facts), its fits, timing and loss sums. Its ``meta`` is saved in every checkpoint."""
  header: dict
  fits: Fits
  timing: Timing
  losses: LossSums

  def meta(self, seconds: float) -> dict:
    """A checkpoint's ``meta`` (``META_FIELDS``), JSON; ``seconds``: this process's."""
    return _plain(dict(config_hash=self.header["config_hash"], **self.fits.state(),
                       **self.losses.state(), **self.timing.state(seconds)))

  def load(self, meta: dict) -> None:
    """Takes up a checkpoint's ``meta``: its fields are all there (the checkpoint reads
    back only with every one of ``META_FIELDS``)."""
    for part in (self.fits, self.losses, self.timing):
      part.load(meta)

  def summary(self, step: int, status: str, seconds: float) -> dict:
    """summary.json's fields at ``step``; ``seconds``: this process's wall time."""
    return _plain(dict(self.header, status=status, steps_run=step,
                       wall_seconds=round(self.timing.wall_seconds(seconds), 2),
                       timing=self.timing.summary(), replicas=self.fits.replica_summaries()))
