"""Prints docs/results/bounds.md's tables: per dataset, model and corruption level, the mean
test error of the trained networks, the posterior's Monte Carlo training error, its KL, the
certified bound (mean, and the range over seeds) and how many replicas it certifies below
chance (``zhang.analysis.bound``), and the settings they were computed with.

  python docs/results/make/bounds_table.py fashion=runs/bounds_report/bound.json \\
      digits=runs/bounds_digits_report/bound.json
"""

import sys

from zhang.analysis import bound
from zhang.formatting import condition_name


def table(name: str, path: str) -> list[str]:
  result = bound.load(path)
  s = result["settings"]
  frame = bound.replicas(result)
  lines = [f"### {name}: n = {s['examples']:,}, {len(frame)} replicas, confidence "
           f"{s['confidence']:g}", "",
           "| model | labels | test error | Q's training error | KL (nats) | bound | "
           "bound, each seed | certified (< 0.5) |",
           "|---|---|---:|---:|---:|---:|---|---:|"]
  for (model, kind, p), g in frame.groupby(["model", "kind", "corruption"], sort=True):
    each = ", ".join(f"{b:.3f}" for b in g.sort_values("seed").bound)
    lines.append(f"| {model} | {condition_name(kind, p)} | {g.test_error.mean():.3f} | "
                 f"{g.mc_error.mean():.3f} | {g.kl.mean():,.0f} | {g.bound.mean():.3f} | "
                 f"{each} | {int((g.bound < bound.CHANCE).sum())} of {len(g)} |")
  runs = "; ".join(f"{r['model']} compiled in {r['compile_seconds']:.0f} s, bounded in "
                   f"{r['bound_seconds']:.0f} s" for r in s["runs"])
  return lines + ["", f"Settings: {s['steps']:,} steps, rates {s['learning_rate']:g} (mean) "
                  f"and {s['variance_learning_rate']:g} (log variances), {s['draws']:,} "
                  f"draws on {s['mc_batch']:,} examples each, delta {s['delta']:g} + "
                  f"{s['mc_delta']:g}. {runs}.", ""]


def main(argv: list[str]) -> None:
  lines = []
  for arg in argv:
    name, path = arg.split("=", 1)
    lines += table(name, path)
  print("\n".join(lines).rstrip())


if __name__ == "__main__":
  main(sys.argv[1:])
