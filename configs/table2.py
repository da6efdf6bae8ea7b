r"""Table 2: Inception V3 on ImageNet, true and random labels, with and without regularizers.

  # on a Cloud TPU VM slice, ImageNet prepared once as tfds array_record in gs://BUCKET/tfds
  # (docs/tpu.md, "ImageNet"); or `zhang train ... --config.data_dir=DIR` on one machine
  launch/tpu.sh --name table2 --zone ZONE --config configs/table2.py --workdir gs://BUCKET/table2
  zhang report gs://BUCKET/table2 --out report        # top-1 and top-5, train and test
  # here, on CPU: the same path on tfds's fake ImageNet (random images, random labels), ~2 min
  zhang train --config configs/table2.py:quick --workdir runs/table2_quick

ImageNet never fits on a device: it is streamed (``stream=true``, set for it by the config's
resolution): a grain pipeline reads and preprocesses each global batch on the hosts, every
replica trains on the same batches in one shared order, each replica's labels drawn from its
key and the examples' indices (zhang/experiment/stream.py). Images are the central 87.5% view
resized to 299x299 (zhang/experiment/imagenet.py) and whitened per image as the paper's other
inputs. Evaluation streams the validation split and the first 10,000 training examples (train
accuracy, fits and fit steps are on those); every row has top-1 and top-5 accuracy.

Grid (6 replicas, one program), the paper's rows: true labels with (augmentation, dropout,
weight decay) all on, augmentation alone, weight decay alone and none; random labels with
dropout and weight decay, and with none. Augmentation is ``inception``: the Inception random
crop, flip and colour distortion made on the host (``imagenet.TrainTransform``); the stream
carries that view beside the central one and each replica trains on its own. Dropout 0.2
before the logits and weight decay 4e-5 are TF-slim's Inception V3 settings (the paper does
not give its coefficients).

Sized for a TPU v4-32 (16 chips): SGD momentum 0.9 at the paper's 0.1, decayed x0.95 every
epoch (5,004 steps of the global batch of 256), 90 epochs (450,360 steps; the paper does not
say how long). Inception V3's train step is 34.28 GFLOP per image (``zhang.runtime.flops``), so
6 replicas x 256 images x 450,360 steps are 2.4e19 FLOP: about 3.7 hours at 0.4 of the chips'
bf16 peak (16 x 275 TFLOP/s), if the hosts keep up: each step's 256 examples in both views
(decoded once) at 0.03 s a step are 8,500 examples/s, about 70 host vCPUs at the 120
examples/s each that decoding, the augmented and the central view take (benchmarks/
RESULTS.md, "Input pipeline"), of the slice's 4 x 240. Not measured on a TPU: a plan.

Arguments:
  model=NAME    default inception_v3; a model without dropout drops the dropout from its rows
                (those rows then differ by weight decay alone).
  dataset=NAME  default imagenet2012 (streamed from the host); another dataset (e.g.
                fashion_mnist) is held in memory and trained through the same streaming path,
                its augmented rows with the paper's random crop made on the device (``crop``)
                instead of the host's Inception view.
  quick         ImageNet: tfds's fake ImageNet (``data_dir=tfds-mock``, 64 examples a split,
                random sizes) at 75x75 (Inception V3's smallest input), batch 8, 2 steps, an
                evaluation and a checkpoint after each, about 1.5 min on 2 CPU cores (most of
                it compilation): the whole path as CI runs it. Another dataset: batch 128,
                200 steps (under a minute for an MLP on Fashion-MNIST).
  seeds=N       seeds per row (default 1).
"""

from zhang.errors import UsageError
from zhang.experiment import models
from zhang.experiment.config import base_config, parse_arg

BATCH = 256
EPOCH_STEPS = 1_281_167 // BATCH  # ImageNet's training set
WEIGHT_DECAY = 4e-5
DROPOUT = 0.2


def rows(model: str, dataset: str) -> list[tuple]:
  """The paper's rows as (corruption, augmentation, dropout, weight decay), for a model with
  or without dropout and a dataset streamed from the host (the host's augmentation) or not."""
  aug = "inception" if dataset == "imagenet2012" else "crop"
  drop = DROPOUT if models.get(model).dropout else 0.0
  out = [(0.0, aug, drop, WEIGHT_DECAY), (0.0, aug, 0.0, 0.0), (0.0, "none", 0.0, WEIGHT_DECAY),
         (0.0, "none", 0.0, 0.0), (1.0, "none", drop, WEIGHT_DECAY), (1.0, "none", 0.0, 0.0)]
  return list(dict.fromkeys(out))  # without dropout two rows are one


def get_config(arg=None):
  a = parse_arg(arg, model="inception_v3", dataset="imagenet2012", seeds=1, quick=False)
  if a.seeds < 1:
    raise UsageError(f"seeds={a.seeds}: need at least 1")
  c = base_config()
  c.model, c.dataset = a.model, a.dataset
  c.stream, c.batch_order = True, "shared"
  c.batch_size = BATCH
  c.lr_decay_every = EPOCH_STEPS
  c.max_steps = 90 * EPOCH_STEPS
  c.eval_every = EPOCH_STEPS
  c.checkpoint_every = EPOCH_STEPS // 2
  c.eval_batch_size = 500
  c.stop_at_fit = False
  seeds = list(range(a.seeds))
  c.grid = [dict(kinds=["labels"], corruptions=[p], seeds=seeds, augmentations=[aug],
                 dropouts=[drop], weight_decays=[wd])
            for p, aug, drop, wd in rows(a.model, a.dataset)]
  if a.quick and a.dataset == "imagenet2012":
    c.data_dir = "tfds-mock"
    c.image_size = 75
    c.batch_size, c.eval_batch_size = 8, 16
    c.max_steps, c.eval_every, c.checkpoint_every = 2, 1, 1
    c.lr_decay_every = 8
  elif a.quick:
    c.batch_size, c.eval_batch_size = 128, 1000
    c.max_steps, c.eval_every, c.checkpoint_every = 200, 100, 100
    c.lr_decay_every = 390
  return c
