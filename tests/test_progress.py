"""The progress bar of `zhang train` on a terminal: readable at 80 columns."""

import io
import re

import pytest

from zhang.experiment import config as config_lib
from zhang.rundir import progress as progress_lib


class _Terminal(io.StringIO):
  def isatty(self):
    return True


class _Fits:
  def __init__(self, fitted, acc, generalized=0, replicas=15):
    self.fitted, self.acc = fitted, acc
    self.generalize_step = [100] * generalized + [None] * (replicas - generalized)

  def num_fitted(self):
    return self.fitted

  def min_train_acc(self):
    return self.acc


def _lines(config, replicas, fits, step, columns):
  """The bar's renderings after an update (tqdm draws an empty one first)."""
  out = _Terminal()
  show = progress_lib.Progress(config, replicas, stream=out, columns=columns)
  show.update(step, fits)
  show.close()
  lines = [line for line in out.getvalue().replace("\r", "\n").splitlines() if line.strip()]
  return lines[1:]


@pytest.mark.parametrize("columns", [80, 100, 200])
def test_the_bar_fits_the_terminal_and_keeps_its_bar(columns):
  config = config_lib.load("configs/digits.py")  # 15 replicas, 15,000 steps
  for line in _lines(config, 15, _Fits(14, 0.9986), 10_600, columns):
    assert len(line) <= columns, line
    bar = re.search(r"\|(.*)\| 14/15 replicas fitted", line)
    assert bar and len(bar.group(1)) >= progress_lib.MIN_BAR, line
    assert "0.9986" in line and "step 10,600/15,000" in line


def test_a_run_past_its_fit_fits_80_columns():
  config = config_lib.load("configs/modadd.py")  # to max_steps: the bar counts steps
  for line in _lines(config, 16, _Fits(16, 1.0, 3, 16), 3_500, 80):
    assert len(line) <= 80 and "16/16 fitted, 3/16 generalized" in line, line
    assert len(re.search(r"\|(.*)\| 3500/", line).group(1)) >= progress_lib.MIN_BAR
