"""The training loop's side of the streaming input path (``config.stream``): the run's
``stream.TrainStream`` and its batches put on the devices a call's steps at a time.

A call of ``step.stream_chunk`` takes ``capacity`` steps' batches as one array (K, B, ...)
whatever number of steps it runs (a shorter call before an evaluation pads with copies of
its last batch, never read), so it compiles once. K keeps a call's batches to about
``CALL_BYTES`` of images. Grain reads and preprocesses batches ahead in its threads (or
worker processes), and ``Feed.prepare`` puts the next call's on the devices while the
current call runs. Each process reads the rows of every global batch that its
devices hold on the mesh's ``data`` axis (``local_block``): its part when that axis spans
processes, else the whole batch, whatever the number of processes.
"""

from __future__ import annotations

import numpy as np

from zhang.errors import UsageError
from zhang.experiment import augment as augment_lib
from zhang.experiment import data as data_lib
from zhang.experiment import program as program_lib
from zhang.experiment import step as step_lib
from zhang.experiment import stream as stream_lib

CALL_BYTES = 256 << 20  # a call's images on the host at most (and at least one batch)
MAX_STEPS = 32  # steps per call at most


class ArraySource:
  """A dataset's arrays as a random-access source of examples (``len``, ``[i]``)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": self.labels[i]}

  def batch(self, indices: np.ndarray) -> dict:
    """The examples ``indices`` in one read (``stream``'s batches without a transform)."""
    return {"image": self.images[indices], "label": self.labels[indices]}


def capacity_of(config, image_shape: tuple) -> int:
  """Steps per call: about ``CALL_BYTES`` of images, at least 1, at most ``MAX_STEPS``."""
  per_batch = config.batch_size * int(np.prod(image_shape))
  return int(max(1, min(MAX_STEPS, CALL_BYTES // max(1, per_batch))))


class Feed:
  """The batches of a run's calls, from global batch ``start_step`` on: of ``source``'s
  examples, each made ``image_shape`` by ``transform`` (None: they are)."""

  def __init__(self, config, source, image_shape: tuple, mesh, start_step: int,
               transform=None, augment=None):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    self.mesh = mesh
    self.capacity = capacity_of(config, image_shape)
    self.sharding = NamedSharding(mesh, P(None, "data"))
    block, blocks = local_block(self.sharding, (self.capacity, config.batch_size), 1)
    self.stream = stream_lib.TrainStream(
        source, stream_lib.Order(len(source), config.batch_size, config.order_seed),
        transform, process_index=block, process_count=blocks,
        workers=config.stream_workers, prefetch=self.capacity, augment=augment)
    self.batches = self.stream.batches(start_step)
    self.step = start_step
    self.ahead: list[dict] = []  # batches read and not yet trained on, in order
    self.pending = None  # the first ``capacity`` of them on the devices (``prepare``)

  def next(self, steps: int) -> step_lib.StreamBatches:
    """The next ``steps`` (<= ``capacity``) global batches on the devices, padded to
    ``capacity`` steps: the ones ``prepare`` put there when it is a whole call's."""
    if not 1 <= steps <= self.capacity:
      raise ValueError(f"{steps} steps in a call of at most {self.capacity}")
    self._read(steps)
    chunk = self.pending if steps == self.capacity else None
    if chunk is None:
      got = self.ahead[:steps]
      chunk = self._put(got + [got[-1]] * (self.capacity - steps))
    self.ahead, self.pending = self.ahead[steps:], None
    self.step += steps
    return chunk

  def prepare(self) -> None:
    """Reads the next call's batches and starts putting them on the devices: called while
    the devices run the current call, so that the next one need not wait for either."""
    self._read(self.capacity)
    self.pending = self._put(self.ahead[:self.capacity])

  def _read(self, steps: int) -> None:
    while len(self.ahead) < steps:
      self.ahead.append(next(self.batches))

  def _put(self, got: list[dict]) -> step_lib.StreamBatches:
    """``capacity`` host batches as one global array each (sent without waiting)."""
    import jax

    def put(key: str, dtype):
      local = np.stack([b[key] for b in got]).astype(dtype)
      shape = (self.capacity, self.stream.order.global_batch) + local.shape[2:]
      return jax.make_array_from_process_local_data(self.sharding, local, shape)

    return step_lib.StreamBatches(
        put("image", np.uint8), put("label", np.int32), put("index", np.int32),
        put("augmented", np.uint8) if "augmented" in got[0] else None)

  def state(self, step: int) -> dict:
    return self.stream.state(step)


def local_block(sharding, shape: tuple, axis: int) -> tuple[int, int]:
  """(block, blocks): the rows of ``axis`` that this process's devices hold under
  ``sharding`` are block ``block`` of ``blocks`` equal contiguous blocks (the process index
  and count of ``stream.process_rows``); (0, 1) when they hold every row. Not the process
  index: a ``data`` axis within each process (mesh (2, 2) on 2 processes of 2 devices)
  gives every process the whole batch, and the mesh's device order, not the process index,
  says which part of the batch a process holds."""
  size = shape[axis]
  spans = {index[axis].indices(size)[:2]
           for index in sharding.addressable_devices_indices_map(tuple(shape)).values()}
  start, stop = min(a for a, _ in spans), max(b for _, b in spans)
  rows = stop - start
  if sum(b - a for a, b in spans) != rows or size % rows or start % rows:
    raise UsageError(f"the mesh gives this process rows {sorted(spans)} of each batch of "
                     f"{size}, not one of equal contiguous blocks: give mesh_shape a data "
                     f"axis that each process's devices split in one piece")
  return start // rows, size // rows


def for_dataset(config, dataset, augmentations: tuple, mesh, start_step: int) -> Feed:
  """The run's feed for the grid's ``augmentations``: a ``stream.StreamedDataset``'s
  training source and transform (and its augmented view when a replica takes the host's
  augmentation), or an in-memory dataset's arrays as the device path holds them
  (``train.device_data``)."""
  if isinstance(dataset, stream_lib.StreamedDataset):
    host = any(augment_lib.on_host(augmentations))
    return Feed(config, dataset.train, dataset.image_shape, mesh, start_step,
                dataset.train_transform, dataset.augment_transform if host else None)
  crops = augment_lib.crops(augmentations)
  images = dataset.train_images if crops else data_lib.paper_crop(dataset.train_images)
  return Feed(config, ArraySource(images, np.asarray(dataset.train_labels, np.int32)),
              images.shape[1:], mesh, start_step)


def evaluate(program: program_lib.GridProgram, states, reps, d, train_source, test_source,
             batch: int, mesh, transform=None):
  """The evaluation's metrics (``evaluate.grid_metrics``') from the two splits streamed in
  order (``stream.eval_batches``: each process the rows of every batch its devices hold),
  each replica's training labels drawn from the indices, for data that does not fit on a
  device; and whether each training example is classified as labelled, (R, n_train)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  sharding = NamedSharding(mesh, P("data"))
  block, blocks = local_block(sharding, (batch,), 0)
  sums, bins, hits = [None, None], None, []
  for is_test, source in ((False, train_source), (True, test_source)):
    for b in stream_lib.eval_batches(source, batch, transform, block, blocks):
      arrays = [np.asarray(b[key]).astype(dtype) for key, dtype in (
          ("image", np.uint8), ("label", np.int32), ("index", np.int32), ("valid", bool))]
      arrays = [jax.make_array_from_process_local_data(sharding, a, (batch,) + a.shape[1:])
                for a in arrays]
      got, got_bins, got_hits = program.stream_eval(states, reps, d, *arrays,
                                                    jnp.asarray(is_test))
      if not is_test:
        hits.append(got_hits)
      sums[is_test] = got if sums[is_test] is None else sums[is_test] + got
      bins = got_bins if bins is None else bins + got_bins
  metrics = program.stream_metrics(states, reps, sums[0], sums[1], bins, len(train_source),
                                   len(test_source))
  return metrics, jnp.concatenate(hits, axis=1)[:, :len(train_source)]
