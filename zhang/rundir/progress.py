"""What a run shows while it trains: replicas fitted so far, the step, the lowest accuracy.

A run ends when every replica has fitted its training set (or at ``max_steps``), so the
measure of progress is the replicas fitted, not the steps; a run that trains on after the fit
(``stop_at_fit=False``: grokking) ends at ``max_steps``, so its measure is the step. On a
terminal: a bar of that measure, which ends when the run does. Elsewhere (a log file, CI):
one plain line every ``every`` evaluations (about 20 lines for a run to ``max_steps``) and
one at the end. The bar's text is shortened to keep the bar readable on a narrow terminal
(80 columns).
"""

from __future__ import annotations

import math
import os
import sys
import time

from tqdm.auto import tqdm

LINES = 20  # plain lines for a run that goes to max_steps
MIN_BAR = 10  # columns the bar itself keeps, whatever the terminal's width


class Progress:

  def __init__(self, config, num_replicas: int, enabled: bool = True, stream=None,
               columns: int | None = None):
    """``columns``: the terminal's width (default: measured at each update)."""
    self.stream = stream or sys.stderr
    self.columns = columns
    self.max_steps = config.max_steps
    self.num_replicas = num_replicas
    self.enabled = enabled
    self.start = time.time()
    evaluations = max(1, config.max_steps // config.eval_every)
    self.every = max(1, math.ceil(evaluations / LINES))
    self._updates = 0
    self._bar = None
    self._last_line = None
    self.by_step = not config.get("stop_at_fit", True)
    if enabled and self.stream.isatty():
      self._what = "steps" if self.by_step else "replicas fitted"
      self._bar = tqdm(total=config.max_steps if self.by_step else num_replicas, initial=0,
                       file=self.stream, dynamic_ncols=columns is None, ncols=columns,
                       mininterval=0.5,
                       bar_format="{desc} |{bar}| {n}/{total} " + self._what + " [{elapsed}]")
    self.name = f"{config.model}/{config.dataset}"

  def describe(self, step: int, fits) -> str:
    """``fits``: the run's ``zhang.rundir.metrics.Fits``."""
    text = (f"step {step:,}/{self.max_steps:,}, lowest train accuracy "
            f"{fits.min_train_acc():.4f}")
    if self.by_step:
      generalized = sum(g is not None for g in fits.generalize_step)
      text = (f"{fits.num_fitted()}/{self.num_replicas} replicas fitted, {generalized}/"
              f"{self.num_replicas} generalized, " + text)
    return text

  def bar_text(self, step: int, fits) -> str:
    """The longest of the bar's descriptions that leaves the bar ``MIN_BAR`` columns."""
    columns = self.columns or _width(self.stream)
    total = self.max_steps if self.by_step else self.num_replicas
    # " |", "| ", "N/TOTAL", " WHAT", " [hh:mm:ss]"
    room = (columns or 0) - MIN_BAR - 4 - 2 * len(str(total)) - 1 - len(self._what) - 11
    acc = fits.min_train_acc()
    short = f"step {step:,}/{self.max_steps:,}, min acc {acc:.4f}"
    if self.by_step:
      generalized = sum(g is not None for g in fits.generalize_step)
      short = (f"{fits.num_fitted()}/{self.num_replicas} fitted, {generalized}/"
               f"{self.num_replicas} generalized")
    shortest = short if self.by_step else f"acc {acc:.4f}"
    for text in (f"{self.name} {self.describe(step, fits)}", self.describe(step, fits), short):
      if columns is None or len(text) <= room:
        return text
    return shortest

  def update(self, step: int, fits, final: bool = False) -> None:
    """After an evaluation (or a resume): ``final`` on the last one."""
    if not self.enabled:
      return
    fitted = fits.num_fitted()
    if self._bar is not None:
      self._bar.n = step if self.by_step else fitted
      self._bar.set_description_str(self.bar_text(step, fits), refresh=False)
      self._bar.refresh()
      return
    if self._updates % self.every == 0 or final:
      head = "" if self.by_step else f"{fitted}/{self.num_replicas} replicas fitted, "
      line = f"zhang: {head}{self.describe(step, fits)}, {time.time() - self.start:.0f} s"
      if line != self._last_line:
        print(line, file=self.stream, flush=True)
        self._last_line = line
    self._updates += 1

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _width(stream) -> int | None:
  """The columns of the terminal ``stream`` writes to; None when it is not one."""
  try:
    return os.get_terminal_size(stream.fileno()).columns
  except (AttributeError, OSError, ValueError):
    return None
