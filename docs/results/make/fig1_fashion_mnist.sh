#!/usr/bin/env bash
# Regenerates docs/results/fig1_fashion_mnist.md: Figure 1 of MLP 1x512 on 4,000
# Fashion-MNIST images. About 25 minutes on 2 CPU cores (the run 15, the two throughput
# trials 4); needs Fashion-MNIST (README.md, "Data").
source "$(dirname "$0")/lib.sh"

# Trials to measure throughput (not part of the result).
time zhang train --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,n_train=2000 \
  --workdir runs/fm_trial --set n_test=2000 --set eval_every=100 --set checkpoint_every=1000 \
  --max_steps 300
time zhang train --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,n_train=5000 \
  --workdir runs/fm_trial5k --set n_test=2000 --set eval_every=200 --set checkpoint_every=1000 \
  --max_steps 1000

# The run and its report.
time zhang train \
  --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,n_train=4000,max_steps=8000 \
  --workdir runs/fm_mlp --set n_test=2000 --set eval_every=100 --set checkpoint_every=1000
time zhang report runs/fm_mlp --out runs/fm_mlp_report
zhang report runs/fm_mlp --out runs/fm_mlp_report_loss --loss_below 0.1

keep_report fig1_fashion_mnist runs/fm_mlp_report
