r"""The embedded default: MLP 1x512 on scikit-learn's digits, the paper's randomization tests.

  zhang train --config configs/digits.py --workdir runs/digits

Grid: label corruption 0, 0.2, ..., 1.0 with seeds 0 and 1, plus one replica each of
shuffled pixels, random pixels and gaussian inputs (15 replicas, one compiled program).
Every replica fits its training set (1438 images, 11 steps per epoch). The paper's
optimizer (SGD momentum 0.9, lr 0.01, batch 128) with the learning rate decayed x0.95 every
390 steps, the CIFAR-10 epoch: decayed every 11-step digits epoch it starves training and no
replica fits in 2000 epochs.

Writes WORKDIR/config.json, metrics.jsonl, summary.json, fit_times.npz and checkpoints/.
Measured: every replica fitted by step 10,600 (true labels at 1,200, random labels at
5,200-5,700), 75 s on 2 AVX-512 CPU cores and 140 s on 2 AVX2 cores, compilation included.
"""

from zhang.experiment.config import base_config, parse_arg


def get_config(arg=None):
  parse_arg(arg)  # takes none: an argument is refused, never ignored
  c = base_config()
  c.model = "mlp_1x512"
  c.dataset = "digits"
  c.learning_rate = 0.01
  c.lr_decay_every = 390
  c.max_steps = 15000
  c.eval_every = 100
  c.checkpoint_every = 1000  # several checkpoints in a run (keeps the last 3)
  c.grid = [
      dict(kinds=["labels"], corruptions=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], seeds=[0, 1]),
      dict(kinds=["shuffled_pixels", "random_pixels", "gaussian"], corruptions=[0.0],
           seeds=[0]),
  ]
  return c
