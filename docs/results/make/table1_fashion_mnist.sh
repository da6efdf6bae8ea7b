#!/usr/bin/env bash
# Regenerates docs/results/table1_fashion_mnist.md: Table 1's regularizer study of MLP 1x512
# and MLP 3x512 on 4,000 Fashion-MNIST images. About 80 minutes on 2 CPU cores (the study 56,
# the study without crop rows 20, the AlexNet step time 2); needs Fashion-MNIST (README.md,
# "Data").
source "$(dirname "$0")/lib.sh"

time zhang train --config configs/table1.py:dataset=fashion_mnist,n_train=4000,n_test=2000,models=mlp_1x512+mlp_3x512,crop=all,max_steps=10000,eval_every=100 \
  --workdir runs/table1_fm
time zhang report runs/table1_fm --out runs/table1_fm_report
time zhang train --config configs/table1.py:dataset=fashion_mnist,n_train=4000,n_test=2000,models=mlp_1x512+mlp_3x512,max_steps=10000,eval_every=100 \
  --workdir runs/table1_fm_paper
time zhang train --config configs/table1.py:dataset=fashion_mnist,n_train=4000,n_test=2000,models=alexnet_small,seeds=1,max_steps=20,eval_every=10 \
  --workdir runs/table1_fm_alexnet

keep_report table1_fashion_mnist runs/table1_fm_report
