"""The streaming input path's order, process slices, resumption and labels."""

import numpy as np
import pytest

from zhang.errors import UsageError
from zhang.experiment import stream


def _source(n: int):
  return [{"image": np.full((3, 3, 1), i % 256, np.uint8), "label": (7 * i) % 10}
          for i in range(n)]


def _take(it, k: int):
  return [next(it) for _ in range(k)]


def _jitter(example, rng):
  """A random host transform: adds a seeded offset to the image."""
  return {**example, "image": example["image"] + np.uint8(rng.integers(0, 50))}


def test_epochs_are_fresh_permutations_with_the_last_partial_batch_dropped():
  n, batch = 103, 20
  order = stream.Order(n, batch, seed=5)
  batches = _take(stream.TrainStream(_source(n), order).batches(), 3 * order.per_epoch)
  epochs = [np.concatenate([b["index"] for b in batches[e * 5:(e + 1) * 5]]) for e in range(3)]
  for e in epochs:
    assert len(e) == len(set(e.tolist())) == 100 and e.min() >= 0 and e.max() < n
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  for k, b in enumerate(batches):
    np.testing.assert_array_equal(b["index"], order.examples(k))
    np.testing.assert_array_equal(b["label"], (7 * b["index"]) % 10)  # the source's labels
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["index"] % 256)
  assert batches[0]["image"].dtype == np.uint8 and batches[0]["label"].dtype == np.int32


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_read_disjoint_slices_that_make_the_global_batch(processes):
  n, batch = 50, 8
  order = stream.Order(n, batch, seed=1)
  whole = _take(stream.TrainStream(_source(n), order, _jitter).batches(), 9)  # 1.5 epochs
  parts = [_take(stream.TrainStream(_source(n), order, _jitter, p, processes).batches(), 9)
           for p in range(processes)]
  for k in range(9):
    for key in ("index", "image", "label"):
      np.testing.assert_array_equal(np.concatenate([part[k][key] for part in parts]),
                                    whole[k][key])


def test_a_stream_resumes_at_any_step_as_if_never_stopped():
  n, batch = 40, 6
  s = stream.TrainStream(_source(n), stream.Order(n, batch, seed=9), _jitter)
  whole = _take(s.batches(), 14)
  for start in (1, 6, 11):
    resumed = _take(s.batches(start), 14 - start)
    for a, b in zip(resumed, whole[start:]):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  assert s.check_state(s.state(11)) == 11
  other = stream.TrainStream(_source(n), stream.Order(n, batch, seed=10))
  with pytest.raises(UsageError, match="not this run's"):
    other.check_state(s.state(11))


def test_bad_batches_get_one_line():
  with pytest.raises(UsageError, match="does not divide over 4 processes"):
    stream.TrainStream(_source(10), stream.Order(10, 6, 0), process_count=4, process_index=1)
  with pytest.raises(UsageError, match="give a batch_size between 1 and 10"):
    stream.Order(10, 11, 0)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches():
  n, batch = 30, 4
  order = stream.Order(n, batch, seed=2)
  here = _take(stream.TrainStream(_source(n), order, _jitter).batches(3), 5)
  workers = _take(stream.TrainStream(_source(n), order, _jitter, workers=2).batches(3), 5)
  for a, b in zip(here, workers):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_tfds_mock_imagenet_streams_through_the_pipeline():
  tfds = pytest.importorskip("tensorflow_datasets")

  def crop(example, rng):  # mock images have random small sizes: a fixed corner, padded
    image = np.zeros((8, 8, 3), np.uint8)
    h, w = min(8, example["image"].shape[0]), min(8, example["image"].shape[1])
    image[:h, :w] = example["image"][:h, :w]
    return {**example, "image": image}

  with tfds.testing.mock_data(num_examples=24):
    source = tfds.data_source("imagenet2012", split="train")
    s = stream.TrainStream(source, stream.Order(len(source), 8, seed=0), crop)
    batches = _take(s.batches(), 4)
    for b in batches:
      assert b["image"].shape == (8, 8, 8, 3) and b["label"].max() < 1000
      for i, label in zip(b["index"], b["label"]):
        assert label == source[int(i)]["label"]


@pytest.mark.parametrize("processes", [1, 2])
def test_evaluation_covers_the_split_once_in_padded_batches(processes):
  n, batch = 23, 6
  parts = [list(stream.eval_batches(_source(n), batch, process_index=p,
                                    process_count=processes)) for p in range(processes)]
  assert all(len(part) == 4 for part in parts)  # ceil(23 / 6)
  valid = np.concatenate([np.concatenate([b["index"][b["valid"]] for b in part])
                          for part in parts])
  np.testing.assert_array_equal(np.sort(valid), np.arange(n))
  for part in parts:
    for b in part:
      assert b["image"].shape == (batch // processes, 3, 3, 1)
      np.testing.assert_array_equal(b["label"], (7 * b["index"]) % 10)


def test_the_stream_order_is_the_in_memory_order_of_a_replica_of_its_seed():
  import jax
  import jax.numpy as jnp

  from zhang.experiment import randomize, step
  seeds = jnp.asarray([7, 8], jnp.uint32)
  salts = jnp.asarray([randomize.randomization_salt("labels", 0.5)] * 2, jnp.uint32)
  keys = jax.vmap(randomize.keys)(seeds, salts)[1]  # as train.build_replicas draws them
  reps = step.ReplicaConstants(order_key=keys, rand_key=keys, labels=None, shared_perm=None,
                               learning_rate=None, weight_decay=None, augmentation=None)
  n, batch = 61, 10
  for epoch in (0, 3):
    orders = np.asarray(step.epoch_orders(reps, epoch, n, batch))
    np.testing.assert_array_equal(stream.Order(n, batch, 7).permutation(epoch), orders[0])
    np.testing.assert_array_equal(stream.Order(n, batch, 8).permutation(epoch), orders[1])
  np.testing.assert_array_equal(stream.Order(n, n, 7).permutation(2), np.arange(n))
