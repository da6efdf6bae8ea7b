"""`zhang models`: the model table with parameter counts."""

from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
  """Adds `models` to an argparse sub-parser collection."""
  p = sub.add_parser(
      "models", help="list the models and their parameter counts",
      description="Lists every registered model with its trainable parameter count for one "
      "input shape (batch-norm scales and offsets not counted, as in the paper), its "
      "description and the learning rate a config without learning_rate trains it with. "
      "Token models (modular addition) are counted for configs/modadd.py's modulus, 59. "
      "Any mlp_DxW (D hidden layers of width W, e.g. mlp_2x1024) or mlp_tokens_W is a model "
      "too, and either with a parameterization suffix (_ntk, _mup, _mean_field, e.g. "
      "mlp_2x1024_mup): name it to count it.")
  p.add_argument("names", nargs="*", metavar="NAME",
                 help="count only these models, e.g. mlp_2x1024 mlp_4x256 (default: every "
                 "registered model)")
  p.add_argument("--input_shape", type=int, nargs=3, default=(28, 28, 3),
                 metavar=("H", "W", "C"), help="height, width and channels of one input "
                 "image (default 28 28 3: the paper's crop of CIFAR-10)")
  p.add_argument("--num_classes", type=int, default=10,
                 help="number of classes, the width of the last layer (default 10)")
  p.set_defaults(func=run_models_command)

  return p


def run_models_command(args) -> int:
  from zhang.experiment import models
  shape = tuple(args.input_shape)
  models.check_shapes(shape, args.num_classes)  # before the table's first line
  chosen = [models.get(name) for name in args.names]  # an unknown name: one line, exit 2
  if chosen:
    _table([s.name for s in chosen if s.inputs == "images"], shape, args.num_classes)
    _tokens([s.name for s in chosen if s.inputs == "tokens"])
    return 0
  _table(models.names("images"), shape, args.num_classes)
  print("Batch-norm scales and offsets are not counted, as in the paper. Any mlp_DxW "
        "(e.g. mlp_2x1024) or mlp_tokens_W is a model too, also with a parameterization "
        "suffix (mlp_2x1024_mup; _ntk, _mean_field): `zhang models mlp_2x1024` counts it.")
  _tokens(models.names("tokens"))
  return 0


def _table(names, shape, num_classes: int) -> None:
  from zhang.experiment import models
  if not names:
    return
  print(f"{'model':<22} {'parameters':>12}  description (input {'x'.join(map(str, shape))})")
  for name in names:
    spec = models.get(name)
    if min(shape[:2]) < spec.min_size:  # inception_v3 at the default 28x28
      print(f"{name:<22} {'-':>12}  {spec.description}, lr {spec.learning_rate}; takes "
            f"inputs of at least {spec.min_size}x{spec.min_size}")
      continue
    count = models.param_count(name, shape, num_classes)
    print(f"{name:<22} {count:>12,}  {spec.description}, lr {spec.learning_rate}")


def _tokens(names) -> None:
  """The token models' counts, for configs/modadd.py's default modulus (59)."""
  from zhang.experiment import models
  if not names:
    return
  print(f"\n{'token model':<22} {'parameters':>12}  description (modadd, modulus 59)")
  for name in names:
    spec = models.get(name)
    count = models.param_count(name, (1, 2, 1), 59)
    print(f"{name:<22} {count:>12,}  {spec.description}, lr {spec.learning_rate}")
