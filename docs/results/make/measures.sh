#!/usr/bin/env bash
# Regenerates docs/results/measures.md's tables and figures: Jiang et al.'s complexity
# measures of every replica of configs/measures.py (96 MLPs, each kept as it fitted) on
# digits and on 500 Fashion-MNIST images, and which of them rank the generalization gap.
# About 20 minutes on 2 CPU cores for digits and 40 for Fashion-MNIST; needs Fashion-MNIST
# (README.md, "Data").
source "$(dirname "$0")/lib.sh"

time zhang train --config configs/measures.py --workdir runs/measures
time zhang measures runs/measures --out runs/measures_report
zhang report runs/measures --out runs/measures_report

time zhang train --config configs/measures.py:dataset=fashion_mnist --workdir runs/measures_fm
time zhang measures runs/measures_fm --out runs/measures_fm_report
zhang report runs/measures_fm --out runs/measures_fm_report

keep measures/digits runs/measures_report measures.md measures_vs_gap.png measures_tau.png
keep measures/fashion runs/measures_fm_report measures.md measures_vs_gap.png measures_tau.png
python docs/results/make/measures_table.py digits=runs/measures_report/measures.json \
  fashion=runs/measures_fm_report/measures.json > runs/measures_tables.md
keep measures runs measures_tables.md=tables.md
