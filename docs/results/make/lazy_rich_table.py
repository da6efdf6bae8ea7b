"""docs/results/lazy_rich/tables.md from the lazy-rich runs' files (no jax: files only).

  python docs/results/make/lazy_rich_table.py runs/lr_modadd runs/lr_modadd_report \
      runs/lr_digits runs/lr_digits_report > runs/lazy_rich_tables.md

Modadd: per model (width x parameterization) and corruption level, the mean over seeds of
the fit step, the generalize step (test accuracy >= 0.99; "-" where a seed never did), the
final test accuracy, the last evaluation's relative weight change, and the kernel distance
and alignment at the last step (kernel_movement.json), beside the tangent kernel baseline
(kernel_baseline.json). Digits: per output scale, the true and random labels' fit steps, the
measured slowdown and `zhang ntk`'s predicted one, and how far the kernel moved.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import numpy as np


def _mean(values, digits=0):
  """The mean of the values given (None left out) with ``digits`` decimals, or with
  three significant digits for ``digits`` "g"; "-" for none."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  return f"{np.mean(values):.3g}" if digits == "g" else f"{np.mean(values):,.{digits}f}"


def _last_rows(run: pathlib.Path) -> dict:
  """metrics.jsonl's last row of each replica."""
  last = {}
  for line in (run / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    last[row["replica"]] = row
  return last


def _width_preset(model: str) -> tuple[int, str]:
  match = re.fullmatch(r"mlp_tokens_([0-9]+)(?:_([a-z_]+))?", model)
  return int(match[1]), match[2] or "standard"


def modadd(study: pathlib.Path, report: pathlib.Path) -> list[str]:
  summary = json.loads((study / "summary.json").read_text())
  moved = json.loads((report / "kernel_movement.json").read_text())["rows"]
  last_step = max(r["step"] for r in moved)
  lines = ["| width | parameterization | corruption | fit step | generalize step | "
           "test accuracy | weight change | kernel distance | alignment |",
           "|---|---|---|---|---|---|---|---|---|"]
  models = sorted(summary["models"], key=lambda m: (_width_preset(m)[1], _width_preset(m)[0]))
  for model in models:
    width, preset = _width_preset(model)
    rows = _last_rows(study / model)
    for p in sorted({r["corruption"] for r in summary["replicas"]}):
      reps = [r for r in summary["replicas"] if r["model"] == model and r["corruption"] == p]
      gen = [r["generalize_step"] for r in reps]
      kern = [r for r in moved if r["model"] == model and r["corruption"] == p
              and r["step"] == last_step]
      lines.append(
          f"| {width:,} | {preset} | {p:g} | {_mean([r['fit_step'] for r in reps])} | "
          f"{_mean(gen) if None not in gen else '-'} | "
          f"{_mean([r['final_test_acc'] for r in reps], 3)} | "
          f"{_mean([rows[r['replica']]['weight_change'] for r in reps], 3)} | "
          f"{_mean([r['kernel_distance'] for r in kern], 'g')} | "
          f"{_mean([r['alignment'] for r in kern], 3)} |")
  baseline = report / "kernel_baseline.json"
  if baseline.exists():
    lines += ["", "| kernel interpolation (zhang kernel RUN) | test accuracy |", "|---|---|"]
    seen = set()
    for entry in json.loads(baseline.read_text()):
      for row in entry.get("rows", []):
        name = f"{row['kernel']}, {row['features']}"
        if name not in seen:
          seen.add(name)
          acc = row.get("test_acc")
          lines.append(f"| {name} | {'-' if acc is None else f'{acc:.3f}'} |")
  return lines


def digits(run: pathlib.Path, report: pathlib.Path) -> list[str]:
  summary = json.loads((run / "summary.json").read_text())
  ntk = {r["replica"]: r for r in json.loads((report / "ntk.json").read_text())["replicas"]}
  moved_path = report / "kernel_movement.json"
  moved = json.loads(moved_path.read_text())["rows"] if moved_path.exists() else []
  last_step = max((r["step"] for r in moved), default=None)
  rows = _last_rows(run)
  lines = ["| output scale | labels | fit step | slowdown | predicted fit step | "
           "predicted slowdown | weight change | kernel distance |",
           "|---|---|---|---|---|---|---|---|"]
  for alpha in sorted({r["output_scale"] for r in summary["replicas"]}):
    for p, name in ((0.0, "true"), (1.0, "random")):
      reps = [r for r in summary["replicas"]
              if r["output_scale"] == alpha and r["corruption"] == p]
      kern = [r for r in moved if r["output_scale"] == alpha and r["corruption"] == p
              and r["step"] == last_step]
      lines.append(
          f"| {alpha:g} | {name} | {_mean([r['fit_step'] for r in reps])} | "
          f"{_mean([ntk[r['replica']]['measured_slowdown'] for r in reps], 2)} | "
          f"{_mean([ntk[r['replica']]['predicted_fit_step'] for r in reps])} | "
          f"{_mean([ntk[r['replica']]['predicted_slowdown'] for r in reps], 2)} | "
          f"{_mean([rows[r['replica']]['weight_change'] for r in reps], 3)} | "
          f"{_mean([r['kernel_distance'] for r in kern], 'g')} |")
  return lines


def main(argv) -> int:
  study, study_report, run, run_report = map(pathlib.Path, argv)
  print("## Modular addition: width x parameterization\n")
  print("\n".join(modadd(study, study_report)))
  print("\n## Digits: the randomization test at growing output scale\n")
  print("\n".join(digits(run, run_report)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
