"""The published numbers (paper_numbers.json) and matching them to a run's experiments."""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

import numpy as np
import pandas as pd

_CIFAR10 = {"cifar10", "cifar-10", "cifar_10"}
_IMAGENET = {"imagenet2012", "imagenet"}
_LABELS = {"true labels": "true", "random labels": "random"}


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
  labels = _LABELS.get(condition)
  if labels is None:
    return None
  crop = "crop" in str(config.get("augmentation") or "none").split("+")
  wd = (config.get("weight_decay") or 0) > 0
  for row in paper_numbers()["table1"]:
    if (row["model"], row["labels"], row["crop"], row["weight_decay"]) == (
        model, labels, crop, wd):
      return row
  return None


def is_imagenet(dataset: str) -> bool:
  return dataset.lower() in _IMAGENET


def table2_match(model: str, dataset: str, condition: str, config: dict[str, Any]
                 ) -> dict[str, Any] | None:
  """The paper's Table 2 row for this experiment (Inception V3 on ImageNet), or None.

  `config` holds the replica's `augmentation`, `dropout` and `weight_decay`; each counts as
  on or off, since the paper's Table 2 gives no coefficients. A row holds only the numbers
  the paper has (`train_acc`, `test_acc`: top-1; `train_top5`, `test_top5`).
  """
  t2 = paper_numbers()["table2"]
  labels = _LABELS.get(condition)
  if not is_imagenet(dataset) or model != t2["model"] or labels is None:
    return None
  key = (labels, str(config.get("augmentation") or "none") != "none",
         (config.get("dropout") or 0) > 0, (config.get("weight_decay") or 0) > 0)
  for row in t2["rows"]:
    if (row["labels"], row["augmentation"], row["dropout"], row["weight_decay"]) == key:
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
