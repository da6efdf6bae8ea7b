r"""A study made for the PAC-Bayes bounds of Dziugaite and Roy (2017): two-class tasks, the
networks of their smallest experiments, label corruption, every replica kept as it fitted.

  zhang train --config configs/bounds.py --workdir runs/bounds
  zhang bound runs/bounds --out b_report         # every replica's bound (bound.json)
  zhang report runs/bounds --out b_report        # + the bounds against the test errors

  zhang train --config configs/bounds.py:dataset=digits --workdir runs/bounds_digits
  zhang bound runs/bounds_digits --out bd_report
  zhang report runs/bounds_digits --out bd_report

Dziugaite and Roy bound the error of networks of one and two hidden layers of 600 units
(T-600, T-600^2) trained on binary MNIST (0-4 against 5-9) with true and with random labels:
a bound far below chance for true labels and above it for random ones. Here the task is
binary Fashion-MNIST (``binary=True``: T-shirt/top, Trouser, Pullover, Dress, Coat against
Sandal, Shirt, Sneaker, Bag, Ankle boot), the models mlp_1x600 and mlp_2x600, and per model
a grid of label corruption {0, 0.2, 0.5, 1} x seeds {0, 1} (8 replicas, 16 in all) at a
constant learning rate 0.01, each replica stopped where it fits its training set
(``freeze_at_fit``) and bounded there (``zhang bound``'s default step for such a run).

The bound's n is the number of training examples, and at n of a few thousand any KL of a
useful posterior is a vacuous bound. The default is the first 10,000 training images, sized
for 2 CPU cores (training about 12 minutes, `zhang bound` about as long again:
docs/results/bounds.md); ``n_train=0`` takes all 60,000, Dziugaite and Roy's size (their
55,000), an accelerator's job (random labels take many more epochs to fit at that n).

Arguments (comma-separated after the colon):
  dataset=NAME    fashion_mnist (default; Debian's dataset-fashion-mnist) or digits (a quick
                  check: scikit-learn's 1,438 training digits as 0-4 against 5-9)
  n_train=N       the first N training examples (default 10000 for fashion_mnist; 0: all)
  max_steps=N     default 100000 (fashion_mnist), 20000 (digits)

Writes WORKDIR/MODEL/{config.json, metrics.jsonl, summary.json, fit_times.npz,
checkpoints/} for each model. Digits on 2 CPU cores (docs/bounds.md has the numbers):
training and `zhang bound` take a few minutes each.
"""

from zhang.experiment.config import base_config, parse_arg

MODELS = ["mlp_1x600", "mlp_2x600"]


def get_config(arg=None):
  a = parse_arg(arg, dataset="fashion_mnist", n_train=-1, max_steps=0)
  digits = a.dataset == "digits"
  c = base_config()
  c.dataset = a.dataset
  c.binary = True
  c.model = MODELS[0]
  c.models = list(MODELS)
  c.n_train = a.n_train if a.n_train != -1 else (0 if digits else 10_000)
  c.learning_rate = 0.01
  # A constant rate: the paper's decay (x0.95 every 390 steps) slows the random-label
  # replicas' fit to a crawl long before they fit.
  c.lr_decay = 1.0
  c.max_steps = a.max_steps or (20_000 if digits else 100_000)
  c.eval_every = 100 if digits else 500
  c.checkpoint_every = 1000 if digits else 5000
  c.freeze_at_fit = True
  # Fitted at a training error of at most 0.001, Dziugaite and Roy's T-600's (their R-600
  # stopped at 0.007): the last few random labels of a constant rate take as long again.
  c.fit_threshold = 0.999
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 0.2, 0.5, 1.0], seeds=[0, 1])]
  return c
