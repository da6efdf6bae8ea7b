"""Run files a notebook reads without the code: config.json, metrics.jsonl, summary.json.

Only process 0 writes. ``summary.json`` is rewritten atomically after every evaluation
(``"status": "running"``) and at the end (``"complete"``), so a run in progress is readable.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import numpy as np

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


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes JSON atomically (a reader never sees half a file)."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(_plain(obj), indent=1) + "\n")
  os.replace(tmp, path)


class Writer:
  """Appends metric rows and rewrites the summary; a no-op on processes other than 0."""

  def __init__(self, workdir: pathlib.Path, active: bool = True):
    self.workdir = workdir
    self.active = active
    self._metrics = open(workdir / METRICS, "w") if active else None

  def rows(self, rows: list[dict]) -> None:
    if not self.active:
      return
    for row in rows:
      self._metrics.write(json.dumps(_plain(row)) + "\n")
    self._metrics.flush()

  def summary(self, summary: dict) -> None:
    if self.active:
      write_json(self.workdir / SUMMARY, summary)

  def close(self) -> None:
    if self._metrics:
      self._metrics.close()
