"""zhang/formatting.py: the one way numbers, tables and randomizations are written."""

import math

import pytest

from zhang import formatting
from zhang.analysis import llc, load


@pytest.mark.parametrize("kind,p,name", [
    ("labels", 0.0, "true labels"), ("labels", 1.0, "random labels"),
    ("labels", 0.25, "labels p=0.25"), ("shuffled_pixels", 0.0, "shuffled pixels"),
    ("gaussian", 0.0, "gaussian"), ("gaussian", 1.0, "gaussian p=1"),
    ("random_pixels", 0.5, "random pixels p=0.5")])
def test_condition_name_says_when_a_pixel_kind_has_corrupted_labels_too(kind, p, name):
  # Label corruption applies to every kind: gaussian inputs with random labels are not the
  # paper's gaussian test, and the name says so. Every reader of runs uses this one name.
  assert formatting.condition_name(kind, p) == name
  assert load.condition_name(kind, p) == llc.condition(kind, p) == name


def test_pct_and_md_table():
  assert formatting.pct(0.12345) == "12.3" and formatting.pct(0.12345, 2) == "12.35"
  assert formatting.pct(-0.005, 2, signed=True) == "-0.50"
  assert formatting.pct(0.005, 2, signed=True) == "+0.50"
  assert formatting.pct(0.5, 0) == "50"
  assert formatting.fixed(2 / 3) == "0.67" and formatting.fixed(-1234.5678, 1) == "-1234.6"
  for empty in (None, math.nan, math.inf, -math.inf):
    assert formatting.pct(empty) == formatting.fixed(empty) == "–"
  assert formatting.md_table(["a", "b"], [[1, "x"], [2.5, None]], align="lr") == [
      "| a | b |", "|---|---:|", "| 1 | x |", "| 2.5 | None |"]
  with pytest.raises(ValueError, match="align"):
    formatting.md_table(["a", "b"], [], align="l")


def test_colours_of_conditions_and_corruption_levels():
  c = formatting.CONDITION_COLORS
  assert c["true labels"] == formatting.KIND_COLORS["labels"]
  assert c["gaussian"] == formatting.KIND_COLORS["gaussian"]
  assert c["random labels"] == formatting.RANDOM_LABELS_COLOR
  assert len(set(c.values())) == len(c) == 5
  levels = formatting.corruption_colours([0.0, 0.2, 0.5, 1.0])
  assert levels[0.0] == c["true labels"] and levels[1.0] == c["random labels"]
  assert len({levels[0.2], levels[0.5], levels[0.0], levels[1.0]}) == 4
  assert set(formatting.corruption_colours([0.1 * i for i in range(1, 6)]).values()) == {None}
