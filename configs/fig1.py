r"""The paper's Figure 1 grid for any model and dataset (default: small Inception, CIFAR-10).

  zhang train --config configs/fig1.py --workdir runs/fig1
  zhang train --config configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist,n_train=4000 --workdir runs/fm

Arguments (comma-separated after the colon):
  model=NAME      inception_small (default), inception_small_nobn, alexnet_small, mlp_1x512,
                  mlp_3x512; the learning rate is the paper's for the model.
  dataset=NAME    cifar10 (default), cifar100, mnist, fashion_mnist, digits,
                  synthetic_cifar10 (no download; benchmarks/device_check.py).
  levels=N        corruption levels 0, 1/(N-1), ..., 1 (default 6: 0, 0.2, ..., 1.0; the
                  Figure 1b sweep of benchmarks/estimate_fig1b.py is levels=11).
  seeds=N         seeds per corruption level (default 2).
  n_train=N       train on the first N examples only (0 = all). With the paper's schedule
                  MLP 1x512 fits every replica of 4,000 Fashion-MNIST images in 6,500 steps,
                  but no label replica of all 60,000 in 60,000 (benchmarks/RESULTS.md).
  max_steps=N     default 60000 (about 150 CIFAR-10 epochs; random labels need ~20k).
  quick           a smoke-test variant: 512 examples, 300 steps.

Grid: labels at every corruption level x seeds (p=0 is Figure 1a's true labels, p=1 its
random labels), plus shuffled pixels, random pixels and gaussian for each seed: Figure 1a,
1b and 1c from one run. Schedule: SGD momentum 0.9, batch 128, lr x0.95 every 390 steps
(one CIFAR-10 epoch, the paper's). On CIFAR-10 with small Inception this is a job for an
accelerator: on 2 CPU cores one replica-step takes seconds (see benchmarks/RESULTS.md).
"""

from zhang.errors import UsageError
from zhang.experiment.config import base_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="inception_small", dataset="cifar10", levels=6, seeds=2,
                n_train=0, max_steps=60_000, quick=False)
  c = base_config()
  c.model = a.model
  c.dataset = a.dataset
  c.n_train = a.n_train
  c.max_steps = a.max_steps
  c.eval_every = 1000
  c.lr_decay_every = 390
  if a.levels < 2:
    raise UsageError(f"levels={a.levels}: need at least 2 (corruption 0 and 1)")
  levels = [round(i / (a.levels - 1), 4) for i in range(a.levels)]
  seeds = list(range(a.seeds))
  c.grid = [
      dict(kinds=["labels"], corruptions=levels, seeds=seeds),
      dict(kinds=["shuffled_pixels", "random_pixels", "gaussian"], corruptions=[0.0],
           seeds=seeds),
  ]
  if a.quick:
    c.n_train, c.n_test = 512, 512
    c.max_steps, c.eval_every = 300, 100
  return c
