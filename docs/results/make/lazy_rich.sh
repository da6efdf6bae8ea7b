#!/usr/bin/env bash
# Regenerates docs/results/lazy_rich.md's tables and figures: configs/lazy_rich.py's modadd
# study (mlp_tokens at widths 64 to 4,096 x standard, ntk, mup) with how far each kernel moved
# and the tangent kernel baseline, and its digits randomization test at output scales 1, 10,
# 100 beside `zhang ntk`'s prediction. The page says how long each command took on 2 CPU
# cores; no download.
source "$(dirname "$0")/lib.sh"

time zhang train --config configs/lazy_rich.py --workdir runs/lr_modadd
time zhang ntk runs/lr_modadd --steps all --out runs/lr_modadd_report
time zhang kernel runs/lr_modadd/mlp_tokens_64 --out runs/lr_modadd_report
time zhang kernel runs/lr_modadd/mlp_tokens_1024 --out runs/lr_modadd_report
time zhang kernel runs/lr_modadd/mlp_tokens_64_mup --out runs/lr_modadd_report
time zhang kernel runs/lr_modadd/mlp_tokens_1024_mup --out runs/lr_modadd_report
zhang report runs/lr_modadd --out runs/lr_modadd_report

time zhang train --config configs/lazy_rich.py:task=modadd_scales --workdir runs/lr_modadd_scales
time zhang ntk runs/lr_modadd_scales --steps all --out runs/lr_modadd_scales_report
zhang report runs/lr_modadd_scales --out runs/lr_modadd_scales_report

time zhang train --config configs/lazy_rich.py:task=digits --workdir runs/lr_digits
time zhang ntk runs/lr_digits --out runs/lr_digits_report
time zhang ntk runs/lr_digits --steps all --out runs/lr_digits_report
zhang report runs/lr_digits --out runs/lr_digits_report

keep lazy_rich runs/lr_modadd_report kernel_movement.png=modadd_kernel_movement.png
keep lazy_rich runs/lr_modadd_scales_report kernel_movement.png=modadd_scales_kernel_movement.png
keep lazy_rich runs/lr_digits_report kernel_movement.png=digits_kernel_movement.png \
  ntk_fig1b.png=digits_ntk_fig1b.png
python docs/results/make/lazy_rich_table.py runs/lr_modadd runs/lr_modadd_report \
  runs/lr_digits runs/lr_digits_report > runs/lazy_rich_tables.md
keep lazy_rich runs lazy_rich_tables.md=tables.md
