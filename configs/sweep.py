r"""A hyper-parameter sweep in one program: corruption x learning rate x weight decay x seeds.

  zhang train --config configs/sweep.py:model=mlp_1x512,dataset=digits --workdir runs/sweep
  zhang report runs/sweep --out report   # fit time vs corruption, one curve per (lr, wd)

Grid: label corruption {0, 0.5, 1} x learning rate {0.003, 0.01, 0.03} x weight decay
{0, 5e-4} x seeds {0, 1}: 36 replicas, every one a traced row of the same compiled step
(a new value does not recompile). Replicas that differ only in a hyper-parameter share
their labels, initialization and batch order (all functions of the seed and the
corruption), so each comparison is paired. The schedule is the paper's (SGD momentum 0.9,
batch 128, x0.95 every 390 steps) applied to each replica's own rate.

Arguments (comma-separated after the colon):
  model=NAME      mlp_1x512 (default), mlp_3x512, alexnet_small, inception_small, ...
  dataset=NAME    digits (default), fashion_mnist, mnist, cifar10, ...
  n_train=N       the first N training examples (0 = all)
  max_steps=N     default 15000
  quick           a smoke-test variant: 256 examples, 200 steps

Writes WORKDIR/config.json, metrics.jsonl, summary.json and checkpoints/, and prints each
replica's fit step. On digits: about 6 minutes on 2 CPU cores for the 15,000 steps; every
replica at lr 0.01 and 0.03 fits but one, none with label noise at lr 0.003 (measured:
benchmarks/RESULTS.md, "The sweep config").
"""

from zhang.experiment.config import base_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="mlp_1x512", dataset="digits", n_train=0, max_steps=15_000,
                quick=False)
  c = base_config()
  c.model = a.model
  c.dataset = a.dataset
  c.n_train = a.n_train
  c.max_steps = a.max_steps
  c.eval_every = 100 if a.dataset == "digits" else 500
  c.checkpoint_every = 1000
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 0.5, 1.0], seeds=[0, 1],
                 learning_rates=[0.003, 0.01, 0.03], weight_decays=[0.0, 5e-4])]
  if a.quick:
    c.n_train, c.n_test = 256, 256
    c.max_steps, c.eval_every, c.checkpoint_every = 200, 100, 100
  return c
