"""How numbers, tables, randomizations and their colours are written, in one place.

Every report, table and figure of the package names a randomization with
``condition_name`` and colours it with ``KIND_COLORS`` / ``CONDITION_COLORS``, so a figure's
legend, a markdown table and a terminal line agree. Pure Python: no jax, no matplotlib.
"""

from __future__ import annotations

import math
from typing import Sequence

DASH = "–"  # an empty cell: no value, or not a finite one


def pct(x, digits: int = 1, signed: bool = False) -> str:
  """``x`` (a fraction) in percent with ``digits`` decimals, no % sign; ``–`` for None, NaN
  or infinity. ``signed``: with its sign (a difference in points)."""
  if x is None or not math.isfinite(x):
    return DASH
  return f"{100 * x:{'+' if signed else ''}.{digits}f}"


def fixed(x, digits: int = 2) -> str:
  """``x`` with ``digits`` decimals; ``–`` for None, NaN or infinity."""
  if x is None or not math.isfinite(x):
    return DASH
  return f"{x:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None
             ) -> list[str]:
  """A markdown table's lines. ``align``: one character per column, ``l`` or ``r``
  (default: every column left)."""
  align = align or "l" * len(header)
  if len(align) != len(header):
    raise ValueError(f"align {align!r} has {len(align)} columns, the header {len(header)}")
  rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
  return ["| " + " | ".join(str(h) for h in header) + " |", rule,
          *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def condition_name(kind: str, corruption: float) -> str:
  """A randomization in words: 'true labels', 'labels p=0.2', 'random labels', 'shuffled
  pixels', 'gaussian p=1', ...

  Label corruption applies to every kind (``zhang.experiment.randomize``): a pixel kind at
  p > 0 also has corrupted labels, so its level is named; at p = 0 (the paper's pixel tests)
  the kind alone.
  """
  if kind == "labels":
    return {0.0: "true labels", 1.0: "random labels"}.get(corruption,
                                                          f"labels p={corruption:g}")
  name = kind.replace("_", " ")
  return name if corruption == 0 else f"{name} p={corruption:g}"


# Figure 1's colours: the randomization kinds (at p = 0), and random labels.
KIND_COLORS = {"labels": "#1f77b4", "shuffled_pixels": "#2ca02c",
               "random_pixels": "#ff7f0e", "gaussian": "#9467bd"}
RANDOM_LABELS_COLOR = "#d62728"
CONDITION_COLORS = ({condition_name(kind, 0.0): c for kind, c in KIND_COLORS.items()}
                    | {condition_name("labels", 1.0): RANDOM_LABELS_COLOR})


def corruption_colours(levels) -> dict:
  """Label-corruption levels to colours: true labels blue, random labels red, as in Figure 1,
  whichever levels a run has; the levels between them green, orange, purple, brown in order;
  None (matplotlib's cycle) past four."""
  middle = [p for p in levels if p not in (0.0, 1.0)]
  palette = ["#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
  colours = {p: (palette[i] if len(middle) <= len(palette) else None)
             for i, p in enumerate(middle)}
  ends = {0.0: KIND_COLORS["labels"], 1.0: RANDOM_LABELS_COLOR}
  return colours | {p: ends[p] for p in levels if p in ends}
