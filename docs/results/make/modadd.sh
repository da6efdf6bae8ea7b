#!/usr/bin/env bash
# Regenerates docs/results/modadd.md: modular addition, grokking under label noise, the
# kernels and the learning coefficient. About 45 minutes on 2 CPU cores (the llc of every
# checkpoint 13, the transformer's kernel at P = 31 12, the long run 7); no download.
source "$(dirname "$0")/lib.sh"

time zhang train --config configs/modadd.py --workdir runs/modadd
time zhang llc runs/modadd --steps all --chains 2 --draws 500 --batch_size 348 \
  --out runs/modadd_report
time zhang kernel runs/modadd --out runs/modadd_report
time zhang report runs/modadd --out runs/modadd_report
time zhang llc runs/modadd --steps 400,4000 --chains 1 --draws 200 --burnin 100 \
  --batch_size 348 --sweep step_size=1e-4,1e-3,1e-2,gamma=1,10,100 \
  | tee runs/modadd_llc_sweep.txt
time zhang train --config configs/modadd.py:corruptions=0.1+0.3,weight_decays=1,max_steps=20000 \
  --workdir runs/modadd_long
zhang report runs/modadd_long --out runs/modadd_long_report
time zhang kernel --dataset modadd --modulus 113 --train_fraction 0.3 --n 0
time zhang kernel --dataset modadd --modulus 113 --train_fraction 0.3 --n 0 --kernel ntk
time zhang kernel --dataset modadd --modulus 23 --train_fraction 0.7 --n 0 --kernel ntk \
  --model transformer_1l --ridge 1e-3
# Without a ridge the transformer's tangent kernel is singular: these two fail, as the page says.
zhang kernel --dataset modadd --modulus 23 --train_fraction 0.7 --n 0 --kernel ntk \
  --model transformer_1l || echo "P = 23 without a ridge failed" >&2
zhang kernel --dataset modadd --modulus 31 --train_fraction 0.5 --n 0 --kernel ntk \
  --model transformer_1l || echo "P = 31 without a ridge failed" >&2
time zhang train --config configs/modadd.py:model=transformer_1l,modulus=23,train_fraction=0.7,weight_decays=1,corruptions=0+1,max_steps=3000 \
  --workdir runs/modadd_transformer23
zhang kernel runs/modadd_transformer23 --out runs/modadd_transformer23_report
zhang report runs/modadd_transformer23 --out runs/modadd_transformer23_report
python benchmarks/modadd.py
python benchmarks/modadd.py \
  --config configs/modadd.py:model=transformer_1l,modulus=113,train_fraction=0.3 \
  --steps 2 --repeats 2

keep modadd runs/modadd_report grokking.png grokking_steps.png llc_vs_step.png \
  llc_vs_corruption.png
keep modadd runs/modadd_long_report grokking.png=long_grokking.png
keep modadd runs/modadd_transformer23_report grokking.png=transformer_grokking.png
