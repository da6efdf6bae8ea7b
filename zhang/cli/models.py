"""`zhang models`: the model table with parameter counts."""

from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
  """Adds `models` to an argparse sub-parser collection."""
  p = sub.add_parser("models", help="list the models and their parameter counts")
  p.add_argument("--input_shape", type=int, nargs=3, default=(28, 28, 3),
                 metavar=("H", "W", "C"))
  p.add_argument("--num_classes", type=int, default=10)
  p.set_defaults(func=run_models_command)

  return p


def run_models_command(args) -> int:
  from zhang.experiment import models
  shape = tuple(args.input_shape)
  print(f"{'model':<22} {'parameters':>12}  description (input {'x'.join(map(str, shape))})")
  for name in models.names("images"):
    spec = models.get(name)
    count = models.param_count(name, shape, args.num_classes)
    print(f"{name:<22} {count:>12,}  {spec.description}, lr {spec.learning_rate}")
  print("Batch-norm scales and offsets are not counted, as in the paper.")
  print(f"\n{'token model':<22} {'parameters':>12}  description (modadd, modulus 113)")
  for name in models.names("tokens"):
    spec = models.get(name)
    count = models.param_count(name, (1, 2, 1), 113)
    print(f"{name:<22} {count:>12,}  {spec.description}, lr {spec.learning_rate}")
  return 0
