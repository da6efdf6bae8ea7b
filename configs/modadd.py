r"""Modular addition: the randomization test on an algorithmic task, and grokking.

  zhang train --config configs/modadd.py --workdir runs/modadd
  zhang train --config configs/modadd.py:model=mlp_tokens,modulus=59 --workdir runs/modadd59
  zhang train --config configs/modadd.py:quick --workdir runs/modadd_quick

Data: every pair (a, b) of residues mod `modulus`, labelled (a + b) mod `modulus`; a random
`train_fraction` of the pairs trains (split from `split_seed`), the rest tests. Training is
full-batch AdamW (lr 1e-3, betas 0.9 / 0.98, decoupled weight decay; Nanda et al. 2023) at a
constant rate, to `max_steps` whatever the fit (grokking comes long after it): each
replica's `fit_step` (train accuracy 1) and `generalize_step` (test accuracy >= 0.99) are in
summary.json.

Arguments (comma-separated after the colon):
  model=NAME        transformer_1l (default: one layer, d_model 128, 4 heads, d_mlp 512, no
                    layer norm) or mlp_tokens (an MLP on the one-hot residues).
  modulus=P         a prime, 3..251 (default 113).
  train_fraction=F  in (0, 1) (default 0.3).
  seeds=N           seeds per grid point (default 2).
  max_steps=N       default 10000 (full-batch steps).
  quick             modulus 23, train fraction 0.7, mlp_tokens at lr 0.03, weight decay 1.0,
                    corruption {0, 1}, 1000 steps: a smoke test in which the true-label
                    replicas generalize (fitted at step 100, test accuracy >= 0.99 from step
                    500 in a trial) and the random-label ones do not.

Grid: label corruption {0, 0.1, 0.3, 1.0} x weight decay {0.3, 1.0} x seeds (16 replicas). Only label
corruption applies: the pixel randomizations have no pixels to act on here.

Not yet measured: the default grid's time to grokking on 2 CPU cores (a full batch of 3,831
pairs through the transformer is about 14 GFLOP per replica-step, so 16 replicas x 10,000
steps is hours on a CPU, not minutes: a smaller modulus or mlp_tokens is the CPU's choice).
"""

from zhang.config import base_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="transformer_1l", modulus=113, train_fraction=0.3, seeds=2,
                max_steps=10_000, quick=False)
  c = base_config()
  c.dataset = "modadd"
  c.model = a.model
  c.modulus, c.train_fraction = a.modulus, a.train_fraction
  c.max_steps = a.max_steps
  corruptions, wds = [0.0, 0.1, 0.3, 1.0], [0.3, 1.0]
  if a.quick:
    c.modulus, c.train_fraction, c.model = 23, 0.7, "mlp_tokens"
    c.max_steps = 1000
    corruptions, wds = [0.0, 1.0], [1.0]
  c.batch_size = max(1, round(c.train_fraction * c.modulus ** 2))  # full batch
  c.eval_batch_size = c.modulus ** 2
  c.optimizer = "adamw"
  c.learning_rate = 0.03 if a.quick else 1e-3
  c.adam_b1, c.adam_b2 = 0.9, 0.98
  c.lr_decay = 1.0
  c.eval_every = 100 if c.max_steps <= 20_000 else 500
  c.checkpoint_every = max(c.eval_every, c.max_steps // 10)
  c.keep_checkpoints = 11  # every checkpoint: the learning coefficient through training
  c.stop_at_fit = False
  c.grid = [dict(kinds=["labels"], corruptions=corruptions, seeds=list(range(a.seeds)),
                 weight_decays=wds)]
  return c
