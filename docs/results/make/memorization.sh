#!/usr/bin/env bash
# Regenerates docs/results/memorization.md: clean and noisy examples, calibration and the
# NTK's prediction, on digits and on 4,000 Fashion-MNIST images. About 40 minutes on 2 CPU
# cores (the Fashion-MNIST run 32); needs Fashion-MNIST (README.md, "Data"). Shares its runs
# and report folders with llc.sh.
source "$(dirname "$0")/lib.sh"

time zhang train --config configs/digits.py --workdir runs/digits
time zhang ntk runs/digits --out runs/digits_report
zhang report runs/digits --out runs/digits_report

time zhang train --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,n_train=4000,max_steps=8000 \
  --workdir runs/fm --set n_test=2000 --set eval_every=100 --set checkpoint_every=1000 \
  --set keep_checkpoints=10
time zhang ntk runs/fm --out runs/fm_report
zhang report runs/fm --out runs/fm_report

for data in digits fm; do
  name=$([[ $data == fm ]] && echo fashion || echo digits)
  keep memorization "runs/${data}_report" noisy_fit.png="${name}_noisy_fit.png" \
    fit_times.png="${name}_fit_times.png" reliability.png="${name}_reliability.png" \
    ntk_fig1b.png="${name}_ntk_fig1b.png" ntk_test_acc.png="${name}_ntk_test_acc.png"
done
