r"""A grid made for the complexity measures: width and depth x learning rate x weight decay
x augmentation x label corruption x seeds, every replica kept as it fitted.

  zhang train --config configs/measures.py --workdir runs/measures
  zhang measures runs/measures --out report      # every measure of every replica
  zhang report runs/measures --out report        # + which measures rank the gap

Jiang et al. (2020) compare measures across networks that differ in one hyper-parameter at a
time, each stopped at the same training loss; here every replica stops at its own fit
(``freeze_at_fit``: 100% training accuracy, the paper's criterion) and the axes are those
this codebase trains in one program: the model (a study of MLPs of two widths and two
depths, ``mlp_DxW``), and per model a grid of learning rate {0.01, 0.03} x weight decay
{0, 5e-4} x seeds {0, 1} over label corruption {0, 0.5, 1} (the paper's axis), plus the
true-label replicas again with random crops (the augmentation axis). 32 replicas a model,
96 in all; every pair that differs only in one axis is a granulated comparison, and every
corruption-1 replica has a corruption-0 twin (the randomization test).

Arguments (comma-separated after the colon):
  dataset=NAME    digits (default) or fashion_mnist (Debian's dataset-fashion-mnist)
  n_train=N       the first N training examples (default: all of digits, 500 of
                  Fashion-MNIST, so that random labels fit on 2 CPU cores in half an hour)
  max_steps=N     default 20000 (digits), 30000 (fashion_mnist)
  quick           a smoke test: one small model, 256 examples, 300 steps

Writes WORKDIR/MODEL/{config.json, metrics.jsonl, summary.json, fit_times.npz,
checkpoints/} for each model. Measured on 2 CPU cores of an AMD EPYC (docs/results/measures.md):
digits, every replica fitted (steps 300-11,700), training 7.7 min and `zhang measures` 4.6
min; `:dataset=fashion_mnist` (500 images), every replica fitted (steps 200-2,800), training
14.4 min and `zhang measures` 5.5 min.
"""

from zhang.experiment.config import base_config, parse_arg

MODELS = ["mlp_1x128", "mlp_1x512", "mlp_2x256"]


def get_config(arg=None):
  a = parse_arg(arg, dataset="digits", n_train=-1, max_steps=0, quick=False)
  digits = a.dataset == "digits"
  c = base_config()
  c.dataset = a.dataset
  c.model = MODELS[0]
  c.models = list(MODELS)
  c.n_train = (0 if digits else 500) if a.n_train < 0 else a.n_train
  c.learning_rate = 0.01
  # A constant rate: the paper's decay (x0.95 every 390 steps) starves the narrow MLP at
  # 0.01 before random labels fit, and Jiang et al. compare networks at one training loss
  # however long each took to reach it.
  c.lr_decay = 1.0
  c.max_steps = a.max_steps or (20_000 if digits else 30_000)
  c.eval_every = 100 if digits else 200
  c.checkpoint_every = 1000
  c.freeze_at_fit = True
  hyper = dict(seeds=[0, 1], learning_rates=[0.01, 0.03], weight_decays=[0.0, 5e-4])
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 0.5, 1.0], **hyper),
            dict(kinds=["labels"], corruptions=[0.0], augmentations=["crop"], **hyper)]
  if a.quick:
    c.models = ["mlp_1x32"]
    c.model = "mlp_1x32"
    c.n_train, c.n_test = 256, 256
    c.max_steps, c.eval_every, c.checkpoint_every = 300, 100, 100
  return c
