r"""A model and a dataset of your own, registered for `zhang` (README: "Add a model or a
dataset"). Name this module in a config's ``imports``, with this folder on PYTHONPATH:

  PYTHONPATH=docs/examples zhang train --config configs/digits.py --workdir runs/bars \
    --config.imports="['my_setup']" --config.model=linear --config.dataset=bars \
    --config.max_steps=2000
"""

import flax.linen as nn
import numpy as np

from zhang.experiment import data, models


class Linear(nn.Module):
  """One dense layer: (B, H, W, C) floats -> logits."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train=True):
    del train  # no batch norm
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


models.register("linear", Linear, learning_rate=0.01, description="one dense layer")


@data.register("bars")
def bars(data_dir):
  """4x4 grey images of 4 classes, class c with row c bright: 800 training, 200 test."""
  del data_dir  # generated; a dataset read from files gets the config's data_dir here
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 1000).astype(np.int32)
  images = rng.integers(0, 60, (1000, 4, 4, 1)).astype(np.uint8)  # uint8 (N, H, W, C)
  images[np.arange(1000), labels] += 150
  return data.Dataset("bars", images[:800], labels[:800], images[800:], labels[800:], 4)
