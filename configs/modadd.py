r"""Modular addition: the randomization test on an algorithmic task, and grokking.

  zhang train --config configs/modadd.py --workdir runs/modadd     # 5.5-10 min on 2 CPU cores
  zhang kernel runs/modadd --out report                            # the kernel baseline, 4-12 s
  zhang report runs/modadd --out report                            # + the baseline, 20 s
  zhang llc runs/modadd --steps all --chains 2 --draws 500 --batch_size 348 --out report
  zhang train --config configs/modadd.py:model=transformer_1l,modulus=113,train_fraction=0.3,max_steps=10000 \
      --workdir runs/modadd_transformer                           # Nanda et al.'s setting
  zhang train --config configs/modadd.py:quick --workdir runs/modadd_quick

Data: every pair (a, b) of residues mod `modulus`, labelled (a + b) mod `modulus`; a random
`train_fraction` of the pairs trains (split from `split_seed`), the rest tests against the
true sums. Training is full-batch AdamW (betas 0.9 / 0.98, decoupled weight decay; Nanda et
al. 2023; lr 1e-3 for the transformer, their rate, and 0.01 for mlp_tokens) at a constant
rate, to `max_steps` whatever the fit (grokking comes long after it). The run writes
WORKDIR/config.json, metrics.jsonl (an evaluation every 20 steps), summary.json (each
replica's `fit_step`, train accuracy 1, and `generalize_step`, test accuracy >= 0.99),
fit_times.npz and checkpoints/ (every 200 steps, all kept: the learning coefficient
through training), and prints the table of both steps per replica.

Arguments (comma-separated after the colon):
  model=NAME        mlp_tokens (default: an MLP on the one-hot residues, 512 hidden) or
                    transformer_1l (one layer, d_model 128, 4 heads, d_mlp 512, no layer norm).
  modulus=P         a prime, 3..251 (default 59).
  train_fraction=F  in (0, 1) (default 0.5).
  lr=X              the AdamW rate (default 0.01 for mlp_tokens, 1e-3 for the transformer).
  seeds=N           seeds per grid point (default 2).
  max_steps=N       default 4000 (full-batch steps); past 10,000 an evaluation every 100.
  corruptions=L     label corruption levels joined by +, e.g. 0.1+0.3 (default 0+0.1+0.3+1).
  weight_decays=L   weight decays joined by + (default 0.3+1).
  quick             modulus 23, train fraction 0.7, mlp_tokens at lr 0.03, weight decay 1.0,
                    corruption {0, 1}, 1000 steps (10 s): a smoke test in which every
                    replica fits by step 20, the true-label ones generalize (test accuracy
                    >= 0.99) at 420-440 and the random-label ones do not.

Grid: label corruption {0, 0.1, 0.3, 1.0} x weight decay {0.3, 1.0} x seeds (16 replicas).
Only label corruption applies: the pixel randomizations have no pixels to act on here.

The default is what groks on 2 CPU cores: its 16 replicas ran 4,000 steps in 439 s on a
Xeon (103 ms per step, before mlp_tokens' first layer became a row gather), and in 5.5 min on
2 EPYC cores now (77 ms per step with its evaluations; benchmarks/modadd.py there: 61-78
ms against the dense first layer's 130-152 ms, 2.12x scaled by the matmul rate).
Every replica, random labels too, fits its training pairs by step 40; true labels
generalize at 520-540 (weight decay 1.0) and 1,080-1,100 (0.3). With 10% of the labels
corrupted test accuracy ends at 0.91-0.96, with 30% at 0.05-0.12, random labels at chance
(docs/results/modadd.md, where the run took 353 s on 2 EPYC cores). The transformer at
modulus 113 is about 14 GFLOP per replica-step (a full batch of 3,831 pairs), 1.6-2.3 s per
step for 16 replicas here: hours on a CPU, an accelerator's setting.
"""

from zhang.errors import UsageError
from zhang.experiment.config import base_config, parse_arg


def _levels(name: str, text: str) -> list[float]:
  """``0.1+0.3`` -> [0.1, 0.3]; empty -> [] (the default grid's)."""
  try:
    return [float(v) for v in text.split("+") if v]
  except ValueError:
    raise UsageError(f"config argument {name}={text!r}: give numbers joined by +, e.g. "
                     f"{name}=0.1+0.3") from None


def get_config(arg=None):
  a = parse_arg(arg, model="mlp_tokens", modulus=59, train_fraction=0.5, lr=0.0, seeds=2,
                max_steps=4000, corruptions="", weight_decays="", quick=False)
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
  corruptions = _levels("corruptions", a.corruptions) or corruptions
  wds = _levels("weight_decays", a.weight_decays) or wds
  c.batch_size = max(1, round(c.train_fraction * c.modulus ** 2))  # full batch
  c.eval_batch_size = c.modulus ** 2
  c.optimizer = "adamw"
  c.learning_rate = a.lr or (0.03 if a.quick else 1e-3 if a.model == "transformer_1l"
                             else 0.01)
  c.adam_b1, c.adam_b2 = 0.9, 0.98
  c.lr_decay = 1.0
  # Fine enough to time the fit (within tens of steps) and to draw the log-step curves.
  c.eval_every = 20 if c.max_steps <= 10_000 else 100
  # 21 checkpoints, every one kept: the learning coefficient through memorization and grokking
  c.checkpoint_every = max(c.eval_every, c.max_steps // 20)
  c.keep_checkpoints = 21
  c.stop_at_fit = False
  c.grid = [dict(kinds=["labels"], corruptions=corruptions, seeds=list(range(a.seeds)),
                 weight_decays=wds)]
  return c
