r"""The paper's Table 1 as one study: regularizers on and off for each model (Section 3).

  zhang train --config configs/table1.py --workdir runs/table1     # CIFAR-10, an accelerator
  zhang train --config configs/table1.py:dataset=fashion_mnist,n_train=4000,models=mlp_1x512+mlp_3x512 \
      --workdir runs/table1_fm
  zhang report runs/table1_fm --out report    # report/table1.md beside the paper's numbers

Arguments (comma-separated after the colon):
  models=A+B+...  the study's models, `+`-separated (default all five: inception_small,
                  inception_small_nobn, alexnet_small, mlp_3x512, mlp_1x512); each trains
                  as its own program into WORKDIR/MODEL, one after another.
  dataset=NAME    cifar10 (default), fashion_mnist, mnist, digits, ...
  n_train=N       train on the first N examples (0 = all); n_test=N likewise for the test set.
  seeds=N         seeds per row (default 2; the paper reports one run).
  wd=X            the weight-decay coefficient of the "weight decay: yes" rows (default 5e-4).
  crop=WHICH      paper (default): the crop rows for the models the paper crops for; all:
                  for every model (beyond the paper: does augmentation help an MLP?).
  max_steps=N     default 60000, as configs/fig1.py; eval_every=N (default 1000).
  quick           a smoke-test variant: 256 examples, 200 steps, evaluation every 50.

Rows, per model and seed, as the paper's Table 1 lists them: true labels with weight decay
on and off, and, for inception_small and alexnet_small (the models the paper also trains
with random crops), both again with `crop`; random labels without any regularizer; and
random labels with weight decay (the paper: AlexNet with weight decay fails to converge on
random labels). Batch norm is a model (inception_small against inception_small_nobn).
The learning rate is the paper's for each model; the schedule is Figure 1's (SGD momentum
0.9, batch 128, lr x0.95 every 390 steps). Replicas stop when every one has fitted.

The weight-decay coefficient is not in the paper. 5e-4 is the common value for CIFAR-10
networks (the VGG and wide-ResNet CIFAR recipes; the ResNet paper used 1e-4), applied as an
L2 term added to the gradient. Choose another with wd=X; the paper's weight-decay rows differ
from their neighbours by at most 1.6 points of test accuracy, so a coefficient that moves
test accuracy by much more is stronger than the paper's.
"""

from zhang.errors import UsageError
from zhang.experiment.config import base_config, parse_arg

MODELS = ("inception_small", "inception_small_nobn", "alexnet_small", "mlp_3x512",
          "mlp_1x512")
CROP_MODELS = ("inception_small", "alexnet_small")  # the paper's rows with random crops


def get_config(arg=None):
  a = parse_arg(arg, models="+".join(MODELS), dataset="cifar10", n_train=0, n_test=0,
                seeds=2, wd=5e-4, crop="paper", max_steps=60_000, eval_every=1000,
                quick=False)
  names = [m for m in a.models.split("+") if m]
  if not names:
    raise UsageError("models= is empty: name one or more models, e.g. "
                     "models=mlp_1x512+mlp_3x512")
  if not a.wd > 0:
    raise UsageError(f"wd={a.wd}: the weight-decay rows need a coefficient > 0, e.g. wd=5e-4")
  if a.seeds < 1:
    raise UsageError(f"seeds={a.seeds}: need at least 1")
  c = base_config()
  c.models = names
  c.model = names[0]
  c.dataset = a.dataset
  c.n_train, c.n_test = a.n_train, a.n_test
  c.max_steps = a.max_steps
  c.eval_every = a.eval_every
  c.checkpoint_every = 2000
  c.lr_decay_every = 390
  seeds = list(range(a.seeds))
  wds = [0.0, a.wd]
  c.grid = [
      dict(kinds=["labels"], corruptions=[0.0], seeds=seeds, weight_decays=wds,
           augmentations=["none"]),
      dict(kinds=["labels"], corruptions=[1.0], seeds=seeds, weight_decays=wds,
           augmentations=["none"]),
  ]
  if a.crop not in ("paper", "all"):
    raise UsageError(f"crop={a.crop!r}: use crop=paper (the paper's crop rows) or crop=all")
  crop = [m for m in (names if a.crop == "all" else CROP_MODELS) if m in names]
  if crop:
    c.grid.append(dict(models=crop, kinds=["labels"], corruptions=[0.0], seeds=seeds,
                       weight_decays=wds, augmentations=["crop"]))
  if a.quick:
    c.n_train, c.n_test = 256, 256
    c.max_steps, c.eval_every, c.checkpoint_every = 200, 50, 100
  return c
