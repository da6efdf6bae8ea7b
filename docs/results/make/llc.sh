#!/usr/bin/env bash
# Regenerates docs/results/llc.md: the local learning coefficient of every replica of the
# digits run and of the 4,000-image Fashion-MNIST run. About 60 minutes on 2 CPU cores with
# both runs to train (memorization.sh trains the same two); needs Fashion-MNIST (README.md,
# "Data").
source "$(dirname "$0")/lib.sh"

time zhang train --config configs/digits.py --workdir runs/digits
time zhang llc runs/digits --out runs/digits_report
zhang report runs/digits --out runs/digits_report
time zhang llc runs/digits --sweep step_size=3e-5,1e-4,3e-4,gamma=100,1000 \
  | tee runs/digits_llc_sweep.txt
zhang llc runs/digits --nbeta batch --out runs/digits_llc_nbeta_batch
zhang llc runs/digits --steps all --out runs/digits_llc_steps

time zhang train --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,n_train=4000,max_steps=8000 \
  --workdir runs/fm --set n_test=2000 --set eval_every=100 --set checkpoint_every=1000 \
  --set keep_checkpoints=10
time zhang llc runs/fm --steps 6500 --chains 2 --out runs/fm_report

for data in digits fm; do
  name=$([[ $data == fm ]] && echo fashion || echo digits)
  keep llc "runs/${data}_report" llc_traces.png="${name}_llc_traces.png" \
    llc_vs_corruption.png="${name}_llc_vs_corruption.png"
done
