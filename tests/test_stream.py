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


def _rows(workdir):
  import json
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _train(config, workdir, **fields):
  from zhang.experiment import config as config_lib
  from zhang.experiment import train
  c = config_lib.base_config()
  for key, value in dict(config).items():
    c[key] = value
  for key, value in fields.items():
    c[key] = value
  train.run(config_lib.resolve(c), workdir, progress=False)
  return _rows(workdir)


@pytest.mark.slow
def test_streaming_trains_as_the_in_memory_path_in_the_same_order(tiny_config, tmp_path):
  """Every kind of replica (labels at p = 0 and 0.5, the three pixel kinds) trained on the
  stream's batches equals the in-memory grid of the same shared batch order, row for row;
  and a streaming run resumed from an earlier checkpoint ends as the uninterrupted one."""
  import shutil
  tiny_config.checkpoint_every = 20
  tiny_config.fit_threshold = 0.6  # fit steps within the 60 steps, to compare
  memory = _train(tiny_config, tmp_path / "memory", batch_order="shared", order_seed=3)
  streamed = _train(tiny_config, tmp_path / "stream", batch_order="shared", order_seed=3,
                    stream=True)
  assert len(memory) == len(streamed) == 4 * 7  # evaluations at 0, 20, 40, 60
  for a, b in zip(memory, streamed):
    assert (a["step"], a["replica"]) == (b["step"], b["replica"])
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)
  import json
  fits = [[(r["fit_step"], r["generalize_step"]) for r in json.loads(
      (tmp_path / name / "summary.json").read_text())["replicas"]] for name in ("memory", "stream")]
  assert fits[0] == fits[1] and sum(f is not None for f, _ in fits[0]) >= 2
  # Each replica its own order (the default) is another run.
  own = _train(tiny_config, tmp_path / "own")
  assert any(a["train_loss"] != b["train_loss"] for a, b in zip(own, memory) if a["step"])
  # Killed after the checkpoint of step 20: the stream restarts at that step.
  reference = (tmp_path / "stream" / "metrics.jsonl").read_text()
  for step in ("40", "60"):
    shutil.rmtree(tmp_path / "stream" / "checkpoints" / step)
  _train(tiny_config, tmp_path / "stream", batch_order="shared", order_seed=3, stream=True)
  assert (tmp_path / "stream" / "metrics.jsonl").read_text() == reference


@pytest.mark.parametrize("fields,message", [
    (dict(stream=True), "stream=true trains every replica on the same batches: set "
                        "batch_order=shared"),
    (dict(batch_order="mine"), "batch_order='mine' must be replica"),
    (dict(order_seed=-1), "order_seed=-1 must be an integer >= 0"),
    (dict(stream_workers=-2), "stream_workers=-2 must be an integer >= 0")])
def test_bad_stream_fields_get_one_line(tiny_config, fields, message):
  from zhang.experiment import config as config_lib
  for key, value in fields.items():
    tiny_config[key] = value
  with pytest.raises(UsageError, match=message.replace("(", r"\(")) as e:
    config_lib.resolve(tiny_config)
  assert "\n" not in str(e.value)


def test_worker_count_is_not_part_of_a_runs_identity(tiny_config):
  from zhang.experiment import config as config_lib
  before = config_lib.identity(tiny_config)
  tiny_config.stream_workers = 8
  assert config_lib.identity(tiny_config) == before
  tiny_config.batch_order = "shared"
  assert config_lib.identity(tiny_config) != before


@pytest.mark.slow
def test_a_streamed_evaluation_equals_the_one_on_the_device(tiny_config):
  """Both splits streamed in padded batches, each replica's training labels drawn from the
  indices (every kind of replica): the metrics of the evaluation on the device."""
  import jax
  import jax.numpy as jnp

  from zhang.experiment import config as config_lib
  from zhang.experiment import feed, train
  tiny_config.update(stream=True, batch_order="shared", eval_batch_size=50)
  config = config_lib.resolve(tiny_config)
  replicas = config_lib.expand_grid(config)
  program, d, reps, states, _ = train.build(config, replicas, train.load_dataset(config))
  states, _ = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(7))
  on_device = jax.device_get(program.evaluate(states, reps, d))
  sources = [feed.ArraySource(np.asarray(images), np.asarray(labels)) for images, labels in
             ((d.train_images, d.train_labels), (d.test_images, d.test_labels))]
  streamed, hits = jax.device_get(feed.evaluate(program, states, reps, d, *sources, 50,
                                                reps.learning_rate.sharding.mesh))
  _, tracked = program.evaluate_and_track(states, reps, d, jnp.full(hits.shape, -1), 7)
  np.testing.assert_array_equal(np.where(hits, 7, -1), tracked)  # the same hits
  assert set(streamed) == set(on_device)
  for key, value in on_device.items():
    np.testing.assert_allclose(streamed[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
  assert len(set(np.round(on_device["train_loss"], 4))) == len(replicas)


@pytest.mark.slow
def test_a_batch_that_does_not_divide_over_the_data_axis_is_refused(tmp_path):
  import subprocess
  import sys
  out = subprocess.run(
      [sys.executable, "-m", "zhang", "train", "--config", "configs/digits.py",
       "--workdir", str(tmp_path / "run"), "--config.stream=true",
       "--config.batch_order=shared", "--config.batch_size=127",
       "--config.mesh_shape=(1, 2)"], capture_output=True, text=True,
      env={**__import__("os").environ,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert out.returncode == 2, out.stderr
  assert "batch_size=127 does not divide over the mesh's data axis of 2 devices" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
