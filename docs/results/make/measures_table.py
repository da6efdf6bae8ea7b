"""Prints docs/results/measures.md's tables: per dataset, each measure's Kendall tau with the
generalization gap and Psi over the true-label replicas (all of them, and those trained
without augmentation) and over the label-corruption replicas, and its median ratio random
labels / true labels (``zhang.analysis.measures``).

  python docs/results/make/measures_table.py digits=runs/measures_report/measures.json \
      fashion=runs/measures_fm_report/measures.json
"""

import json
import sys

from zhang.analysis import measures


def _number(v, digits: int = 2) -> str:
  return "–" if v != v else f"{v:.{digits}f}"


def table(name: str, path: str) -> list[str]:
  result = json.load(open(path))
  a = measures.analyze(result)
  plain = dict(result, replicas=[r for r in result["replicas"] if r["augmentation"] == "none"])
  no_aug = measures.analyze(plain).taus["true labels"].set_index("measure")
  true = a.taus["true labels"].set_index("measure")
  corrupt = a.taus["label corruption"].set_index("measure")
  ratio = a.randomization.set_index("measure")["median_ratio"]
  lines = [f"### {name} ({len(a.replicas)} replicas)", "",
           "| measure | tau, true labels | Psi | tau, true labels without augmentation | Psi | "
           "tau, label corruption | Psi | random / true labels |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for m in corrupt.sort_values("tau", ascending=False).index:
    r = ratio.get(m, float("nan"))
    lines.append(f"| {m} | {_number(true.tau[m])} | {_number(true.psi[m])} | "
                 f"{_number(no_aug.tau[m])} | {_number(no_aug.psi[m])} | "
                 f"{_number(corrupt.tau[m])} | {_number(corrupt.psi[m])} | "
                 f"{'–' if r != r else f'{r:.3g}'} |")
  return lines + [""]


def main(argv: list[str]) -> int:
  for arg in argv:
    name, _, path = arg.partition("=")
    print("\n".join(table(name, path)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
