"""The published numbers (paper_numbers.json) and matching them to a run's experiments."""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

import numpy as np
import pandas as pd

_CIFAR10 = {"cifar10", "cifar-10", "cifar_10"}


@functools.cache
def paper_numbers() -> dict[str, Any]:
  """The published numbers of Zhang et al. (2017), accuracies as fractions."""
  text = importlib.resources.files("zhang.analysis").joinpath("paper_numbers.json").read_text()
  return json.loads(text)


def matches_paper_dataset(dataset: str) -> bool:
  return dataset.lower() in _CIFAR10


def table1_match(model: str, dataset: str, condition: str, config: dict[str, Any]
                 ) -> dict[str, Any] | None:
  """The paper's Table 1 row for this experiment, or None when the paper has none.

  `config` holds the replica's `weight_decay` and `augmentation` ("crop", "crop+flip", ...).
  """
  if not matches_paper_dataset(dataset):
    return None
  labels = {"true labels": "true", "random labels": "random"}.get(condition)
  if labels is None:
    return None
  crop = "crop" in str(config.get("augmentation") or "none").split("+")
  wd = (config.get("weight_decay") or 0) > 0
  for row in paper_numbers()["table1"]:
    if (row["model"], row["labels"], row["crop"], row["weight_decay"]) == (
        model, labels, crop, wd):
      return row
  return None


def paper_name(model: str) -> str:
  return paper_numbers()["models"].get(model, {}).get("name", model)


def figure1c_shape(errors: pd.DataFrame, num_classes: int) -> dict[str, Any]:
  """How a run's test-error curve compares with the paper's Figure 1c shape.

  Args:
    errors: one row per corruption level with columns `corruption`, `mean` (test error).
    num_classes: for the chance level.

  Returns:
    `rho` (Spearman correlation of error with p; the paper's curve rises steadily, rho = 1),
    `error_p0`, `error_p1`, `chance` and the paper's error at p = 1.
  """
  e = errors.sort_values("corruption")
  rho = np.nan
  if len(e) >= 3 and e["mean"].nunique() > 1:
    rho = float(e["corruption"].rank().corr(e["mean"].rank()))

  def at(p):
    hit = e.loc[e.corruption == p, "mean"]
    return float(hit.iloc[0]) if len(hit) else np.nan

  return dict(rho=rho, error_p0=at(0.0), error_p1=at(1.0), chance=1 - 1 / num_classes,
              paper_error_p1=paper_numbers()["figure1c"]["test_error_at_p1"])
