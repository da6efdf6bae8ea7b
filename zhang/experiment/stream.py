"""The streaming input path: training batches from a grain pipeline, for datasets that do not
fit on the device (ImageNet).

The in-memory path puts the whole training set on the device and each replica draws its own
batch order there. Here the examples stay on the host, in a random-access source (a
``tfds.data_source``: array_record, no TensorFlow), and one grain pipeline reads, decodes and
preprocesses them on host worker processes. Every replica trains on the same stream of
batches: replicas with different seeds differ in initialization, labels and randomization,
not in batch order. Nothing is stored per replica and example: a replica's label of example
``i`` (``randomize.corrupt_labels_at``), its random-pixel permutation and its Gaussian image
are pure functions of (replica key, i), so each batch carries its examples' indices.

The order is the in-memory path's, shared: global batch k is ``k % per_epoch``'s slice of
epoch ``k // per_epoch``'s permutation of the training set (``per_epoch = n // global_batch``;
an epoch's last partial batch is dropped; a full batch keeps the examples' order), each
epoch's permutation the one ``step.epoch_orders`` draws for the order key of a replica of
seed ``seed`` (``randomize.keys``), so a grid whose replicas all take that key
(``batch_order="shared"``) trains in memory on exactly the stream's batches. The main
process draws each epoch's permutation (JAX, on the CPU) and hands the workers the indices
they read. On a multi-process mesh each process reads only its contiguous part of each
global batch, the rows its devices hold on the ``data`` axis; the augmentation of a
position is seeded by the position itself, so a batch is the same however many processes
read it.

A stream is a pure function of (seed, step): it resumes at any step without replaying the
ones before (``TrainStream.batches(start_step)``); ``state(step)`` is what a checkpoint keeps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

import numpy as np

from zhang.errors import UsageError

# A host transform of one example: (example dict, np.random.Generator) -> example dict.
Transform = Callable[[dict, np.random.Generator], dict]


@dataclasses.dataclass(frozen=True)
class Order:
  """The shared batch order of ``n`` examples in global batches of ``global_batch``."""
  n: int
  global_batch: int
  seed: int

  def __post_init__(self):
    if not 1 <= self.global_batch <= self.n:
      raise UsageError(f"a global batch of {self.global_batch} does not fit a training set "
                       f"of {self.n} examples: give a batch_size between 1 and {self.n}")

  @property
  def per_epoch(self) -> int:
    return self.n // self.global_batch

  def permutation(self, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s order of the examples (int64 (n,)): ``step.epoch_orders``' for a
    replica of seed ``seed``, drawn on this process's CPU (``jax.devices("cpu")[0]`` is
    process 0's on a multi-process run: another process cannot read it)."""
    if self.global_batch == self.n:
      return np.arange(self.n, dtype=np.int64)  # full batch: see step.epoch_orders
    import jax

    from zhang.experiment import randomize
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      key = randomize.keys(np.uint32(self.seed), np.uint32(0))[1]
      return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), self.n),
                        np.int64)

  def examples(self, step: int, rows: slice | None = None) -> np.ndarray:
    """The example indices of global batch ``step`` (or of its ``rows``), int64."""
    epoch, pos = divmod(step, self.per_epoch)
    rows = rows or slice(0, self.global_batch)
    start = pos * self.global_batch
    return self.permutation(epoch)[start + rows.start:start + rows.stop]


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  """The rows of each global batch that process ``process_index`` reads: the contiguous
  ``global_batch / process_count`` its devices hold on the ``data`` axis."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process {process_index} of {process_count}")
  if global_batch % process_count:
    raise UsageError(f"a global batch of {global_batch} does not divide over "
                     f"{process_count} processes: give a batch_size that is a multiple of "
                     f"{process_count}")
  b = global_batch // process_count
  return slice(process_index * b, (process_index + 1) * b)


@dataclasses.dataclass
class TrainStream:
  """This process's training batches: dicts of ``image`` (b, H, W, C) uint8, ``label`` (b,)
  int32 (the dataset's true labels) and ``index`` (b,) int64, where b is the global batch
  over the processes. ``source`` is random-access (``len`` and ``[i]`` giving a dict with
  ``image`` and ``label``), ``transform`` the host preprocessing of one example, seeded per
  global position; ``workers`` > 0 runs reading and preprocessing in that many grain worker
  processes."""
  source: Any
  order: Order
  transform: Transform | None = None
  process_index: int = 0
  process_count: int = 1
  workers: int = 0
  prefetch: int = 2  # batches each worker prepares ahead
  # A second view of every example (``augmented``, uint8 like ``image``), made from the same
  # decoded example with its own seeded generator: the host's augmentation, for the
  # replicas that take it (``augment.HOST``). None: no second view.
  augment: Transform | None = None

  def __post_init__(self):
    self.rows = process_rows(self.order.global_batch, self.process_index, self.process_count)

  def epoch_dataset(self, epoch: int, first_step: int = 0):
    """The grain dataset of this process's batches of epoch ``epoch``, from its batch
    ``first_step`` on: each element one batch, its examples (this process's rows of the
    epoch's indices) read and preprocessed together (in a worker, when there are any)."""
    import grain
    o = self.order
    perm = self.order.permutation(epoch)
    steps = np.arange(first_step, o.per_epoch)
    offsets = (steps[:, None] * o.global_batch + np.arange(self.rows.start, self.rows.stop))
    items = np.stack([perm[offsets], epoch * o.n + offsets], axis=1)  # (steps, 2, b)
    return grain.MapDataset.source(items).map(
        functools.partial(_read_batch, self.source, self.transform, o.seed, self.augment))

  def batches(self, start_step: int = 0) -> Iterator[dict]:
    """This process's batches from global batch ``start_step`` on, without end, read ahead
    (an epoch's pipeline starts when the epoch does)."""
    import grain
    epoch, pos = divmod(start_step, self.order.per_epoch)
    while True:
      ds = self.epoch_dataset(epoch, pos).to_iter_dataset(
          grain.ReadOptions(num_threads=0 if self.workers else 1,
                            prefetch_buffer_size=self.prefetch))
      if self.workers:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; the CLI has none
          flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=self.workers, per_worker_buffer_size=self.prefetch))
      yield from ds
      epoch, pos = epoch + 1, 0

  def state(self, step: int) -> dict:
    """What resumes the stream at ``step``: the order and the next global batch (a
    checkpoint stores it beside the replicas' states)."""
    o = self.order
    return {"next_step": int(step), "seed": o.seed, "n": o.n, "global_batch": o.global_batch}

  def check_state(self, state: dict) -> int:
    """The step a checkpoint's ``state`` resumes at, after checking it is this stream's."""
    o = self.order
    saved = (state.get("seed"), state.get("n"), state.get("global_batch"))
    if saved != (o.seed, o.n, o.global_batch):
      raise UsageError(f"the checkpoint's stream (seed, examples, global batch) {saved} is not "
                       f"this run's {(o.seed, o.n, o.global_batch)}: resume with the config "
                       f"it was written with")
    return int(state["next_step"])


def eval_batches(source, batch: int, transform: Transform | None = None,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """The whole of ``source`` (a validation split) in order, in global batches of ``batch``,
  this process's rows of each: dicts like ``TrainStream``'s plus ``valid`` (b,) bool. The
  last batch is padded with copies of the split's first example, marked invalid, so every
  batch has one shape (one compiled evaluation) and every example counts once. ``transform``
  is called with a generator seeded by the example's index (an evaluation transform
  should not use it)."""
  rows = process_rows(batch, process_index, process_count)
  n = len(source)
  for start in range(0, n, batch):
    out = []
    for j in range(rows.start, rows.stop):
      index = start + j
      example = dict(source[index if index < n else 0])
      if transform is not None:
        example = transform(example, np.random.default_rng([index]))
      out.append({"image": np.asarray(example["image"]), "label": np.int32(example["label"]),
                  "index": np.int64(index if index < n else 0), "valid": index < n})
    yield _stack(out)


def _read_batch(source, transform: Transform | None, seed: int, augment: Transform | None,
                item) -> dict:
  """The batch of (indices, global positions) ``item`` (2, b), each example preprocessed
  with a generator of (seed, its position) (and, with ``augment``, its second view with one
  of (seed, position, 1)); a source with a ``batch`` method and no transform is read in one
  go. A module-level function, so grain's worker processes can unpickle it."""
  indices, positions = item
  if transform is None and augment is None and hasattr(source, "batch"):
    out = source.batch(indices)
  else:
    examples = [dict(source[int(i)]) for i in indices]
    views = [{"image": np.asarray(
        (transform(dict(e), np.random.default_rng([seed, int(p)])) if transform else e)
        ["image"]), "label": e["label"]} for e, p in zip(examples, positions)]
    if augment is not None:
      for v, e, p in zip(views, examples, positions):
        v["augmented"] = np.asarray(
            augment(dict(e), np.random.default_rng([seed, int(p), 1]))["image"])
    out = _stack(views)
  batch = {"image": np.asarray(out["image"]), "label": np.asarray(out["label"], np.int32),
           "index": np.asarray(indices, np.int64)}
  if "augmented" in out:
    batch["augmented"] = out["augmented"]
  return batch


def _stack(examples) -> dict:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class Slice:
  """The first ``n`` examples of a random-access source (picklable for grain's workers)."""

  def __init__(self, source, n: int):
    self.source, self.n = source, n

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


# The training examples a streamed dataset's evaluation reads (its first ones): train
# accuracy, fits and per-example fit steps are on these, not on a whole ImageNet.
EVAL_TRAIN = 10_000


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedDataset:
  """A dataset that stays on the host, read through the streaming path: random-access
  ``train`` and ``test`` sources of examples (``image`` of any size, ``label``) and the host
  transforms that make every image ``image_shape`` (uint8): ``train_transform`` for the
  training stream, ``eval_transform`` (no randomness) for the evaluation, which reads the
  test split and the first ``eval_train`` training examples. ``train_labels`` are those
  examples' labels (what the loop's fits, label noise and fit steps are of)."""
  name: str
  train: Any
  test: Any
  num_classes: int
  image_shape: tuple[int, int, int]
  train_transform: Transform
  eval_transform: Transform
  eval_train: int = EVAL_TRAIN
  inputs: str = "images"
  augment_transform: Transform | None = None  # the host's augmentation (``augment.HOST``)

  @property
  def n_train(self) -> int:
    return len(self.train)

  @property
  def n_test(self) -> int:
    return len(self.test)

  @functools.cached_property
  def train_labels(self) -> np.ndarray:
    n = min(self.eval_train, self.n_train)
    return np.asarray([int(self.train[i]["label"]) for i in range(n)], np.int32)

  def eval_source(self):
    """The evaluated training examples, as a source."""
    return Slice(self.train, min(self.eval_train, self.n_train))

  def subset(self, n_train: int | None = None, n_test: int | None = None):
    """The first ``n_train`` / ``n_test`` examples (None keeps all)."""
    for n, have, what in ((n_train, self.n_train, "n_train"), (n_test, self.n_test, "n_test")):
      if n is not None and not 0 < n <= have:
        raise UsageError(f"{what}={n} is out of range for {self.name}: use 1..{have} "
                         f"(or 0 for the whole split)")
    return dataclasses.replace(
        self, train=Slice(self.train, n_train) if n_train else self.train,
        test=Slice(self.test, n_test) if n_test else self.test)
