#!/usr/bin/env bash
# Regenerates docs/results/bounds.md's tables and figures: Dziugaite and Roy's PAC-Bayes
# bound for every replica of configs/bounds.py (mlp_1x600 and mlp_2x600 x label corruption
# {0, 0.2, 0.5, 1} x 2 seeds, each kept as it fitted) on 10,000 binary Fashion-MNIST images
# and on binary digits. About 35 minutes on 2 CPU cores for Fashion-MNIST and 10 for digits;
# needs Fashion-MNIST (README.md, "Data").
source "$(dirname "$0")/lib.sh"

time zhang train --config configs/bounds.py --workdir runs/bounds
time zhang bound runs/bounds --out runs/bounds_report
zhang report runs/bounds --out runs/bounds_report

time zhang train --config configs/bounds.py:dataset=digits --workdir runs/bounds_digits
time zhang bound runs/bounds_digits --out runs/bounds_digits_report
zhang report runs/bounds_digits --out runs/bounds_digits_report

keep bounds runs/bounds_report bound_vs_test_error.png=fashion.png
keep bounds runs/bounds_digits_report bound_vs_test_error.png=digits.png
python docs/results/make/bounds_table.py fashion=runs/bounds_report/bound.json \
  digits=runs/bounds_digits_report/bound.json > runs/bounds_tables.md
keep bounds runs bounds_tables.md=tables.md
