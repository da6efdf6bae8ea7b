"""Cost of the trainer's checkpoints for a whole grid, against one train step of that grid.

  python benchmarks/checkpoint.py           # digits, fig1 MLP on Fashion-MNIST, CIFAR-shaped
  python benchmarks/checkpoint.py --quick   # 2 repeats, small synthetic training sets

Prints one JSON object per config (with the execution ``plan`` its grid ran under). Each
builds the trainer's own grid state (``zhang.experiment.train.build``) and times the trainer's own
``zhang.rundir.checkpoint.Checkpointer`` in a temporary directory:

- ``save_blocking_s``: how long ``Checkpointer.save`` blocks the caller (the save is
  asynchronous: the device-to-host copy, then Orbax writes in a background thread);
- ``save_total_s``: ``save`` + ``wait`` until the checkpoint is on disk;
- ``restore_s``: ``restore_latest`` into the state's shardings (what a resumed run does);
- ``load_cpu_s``: ``zhang.rundir.checkpoint.load`` (a notebook reading a run, as numpy on CPU);
- ``step_s``: one train step of the same grid, timed in the same process with no save in
  flight: the trainer's compiled ``train_chunk`` run for ``--steps`` and 2 x ``--steps``
  steps, (median long - median short) / steps, so the chunk's fixed cost (drawing the
  epoch's batch order of every replica, dispatch) is left out and reported as
  ``chunk_fixed_s``;
- ``checkpoint_bytes``: the size of one ``checkpoints/<step>`` directory (sum of file sizes).

Every time is the median of ``--repeats`` (default 5), after one untimed warm-up. Saves use
the config's ``keep_checkpoints``, so later saves also delete the oldest checkpoint, as in
training. Configs: ``configs/digits.py`` (15 replicas), ``configs/fig1.py`` with
``model=mlp_1x512,dataset=fashion_mnist`` (18 replicas, 28x28x1), and the same grid on
synthetic CIFAR-shaped uint8 images (32x32x3, cropped to 28x28x3: the paper's 1,209,866
parameters per replica; CIFAR-10 itself need not be on the machine). Results:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from zhang.experiment import config as config_lib
from zhang.experiment import train as train_lib
from zhang.experiment.data import Dataset
from zhang.rundir import checkpoint as checkpoint_lib

FIG1_MLP = "configs/fig1.py:model=mlp_1x512,dataset=fashion_mnist"
CONFIGS = {
    "digits": "configs/digits.py",
    "fig1_mlp_fashion_mnist": FIG1_MLP,
    "fig1_mlp_cifar_shaped": FIG1_MLP,  # the grid of fig1's MLP on synthetic 32x32x3 images
}


def synthetic_dataset(n_train: int, n_test: int, shape=(32, 32, 3), num_classes=10) -> Dataset:
  """Random uint8 images and labels (CIFAR-10's shape by default)."""
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, *shape), dtype=np.uint8)
  labels = lambda n: rng.integers(0, num_classes, n).astype(np.int32)
  return Dataset("synthetic", images(n_train), labels(n_train), images(n_test), labels(n_test),
                 num_classes)


def directory_bytes(path) -> int:
  """Bytes under a local folder (the trainer's paths are epath's, whose rglob refuses ``**``)."""
  return sum(f.stat().st_size for f in pathlib.Path(str(path)).rglob("*") if f.is_file())


def median(times) -> float:
  return round(statistics.median(times), 4)


def setup(name: str, root: pathlib.Path, quick: bool):
  """(config, replicas, built grid) of one benchmarked config."""
  config = config_lib.load(CONFIGS[name])
  if name == "fig1_mlp_cifar_shaped":
    n_train, n_test = (2048, 512) if quick else (50_000, 10_000)
    config = config_lib.resolve(config)
    replicas = config_lib.expand_grid(config)
    dataset = synthetic_dataset(n_train, n_test)
  else:
    config, replicas, dataset = train_lib.prepare(config, root / "prepare")
  return config, replicas, train_lib.build(config, replicas, dataset)[:4]


def measure(name: str, root: pathlib.Path, repeats: int, steps: int, quick: bool) -> dict:
  config, replicas, (program, d, reps, states) = setup(name, root, quick)
  leaves = jax.tree.leaves(states.params)
  params_per_replica = sum(int(np.prod(x.shape[1:])) for x in leaves)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(states))
  stored = leaves[0].shape[0]  # the grid padded to the mesh's replica axis, if at all

  # One train step of the grid: chunks of `steps` and 2 x `steps` steps (one compiled
  # program, the count is an argument), interleaved; the difference of their medians over
  # `steps` is a step without the chunk's fixed cost (the epoch's batch order, dispatch).
  step = 0
  chunk = {steps: [], 2 * steps: []}
  for i in range(repeats + 1):  # the first pair compiles and warms up
    for n in chunk:
      t = time.perf_counter()
      states, loss = program.train_chunk(states, reps, d, jnp.asarray(step, jnp.int32),
                                         jnp.asarray(n, jnp.int32))
      loss.block_until_ready()
      if i:
        chunk[n].append(time.perf_counter() - t)
      step += n
  short, long = statistics.median(chunk[steps]), statistics.median(chunk[2 * steps])
  step_s = (long - short) / steps
  chunk_fixed_s = short - steps * step_s
  if not np.all(np.isfinite(np.asarray(loss))):
    raise RuntimeError(f"{name}: non-finite loss {loss}")

  workdir = root / name
  ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  meta = dict(note="benchmark", config_hash=checkpoint_lib.config_hash(
      config_lib.to_json_dict(config)))
  blocking, total = [], []
  for i in range(repeats + 1):  # the first save is an untimed warm-up
    t = time.perf_counter()
    ckpt.save(step, states, meta)
    t_blocked = time.perf_counter() - t
    ckpt.wait()
    t_total = time.perf_counter() - t
    if i:
      blocking.append(t_blocked)
      total.append(t_total)
    saved = step
    # A new state for the next save, as in training (train_chunk donates the old one).
    states, loss = program.train_chunk(states, reps, d, jnp.asarray(step, jnp.int32),
                                       jnp.asarray(1, jnp.int32))
    loss.block_until_ready()
    step += 1
  checkpoint_bytes = directory_bytes(ckpt.directory / str(saved))

  restore_times = []
  for i in range(repeats + 1):
    t = time.perf_counter()
    got_step, restored, _ = ckpt.restore_latest(states)
    jax.block_until_ready(restored)
    if i:
      restore_times.append(time.perf_counter() - t)
    assert got_step == saved, (got_step, saved)
    del restored
  ckpt.close()

  load_times = []
  for i in range(repeats + 1):
    t = time.perf_counter()
    loaded = checkpoint_lib.load(workdir)
    if i:
      load_times.append(time.perf_counter() - t)
    assert loaded["step"] == saved
    del loaded

  save_blocking_s = statistics.median(blocking)
  device = jax.devices()[0]
  return dict(
      config=CONFIGS[name] if name != "fig1_mlp_cifar_shaped"
      else f"{FIG1_MLP} on synthetic 32x32x3 (cropped 28x28x3)",
      name=name, replicas=len(replicas), stored_replicas=stored, plan=str(program.plan),
      devices=jax.device_count(), input_shape=list(d.train_images.shape[1:]),
      params_per_replica=params_per_replica,
      state_bytes=state_bytes,  # params + momentum (+ batch stats), all replicas, in memory
      checkpoint_bytes=checkpoint_bytes,
      bytes_per_replica=round(checkpoint_bytes / len(replicas)),
      save_blocking_s=median(blocking), save_total_s=median(total),
      restore_s=median(restore_times), load_cpu_s=median(load_times),
      step_s=round(step_s, 5), chunk_fixed_s=round(chunk_fixed_s, 4),
      save_blocking_over_step=round(save_blocking_s / step_s, 3),
      save_total_over_step=round(statistics.median(total) / step_s, 3),
      checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
      # The blocking time as a fraction of the steps between two checkpoints.
      save_blocking_fraction_of_interval=round(
          save_blocking_s / (config.checkpoint_every * step_s), 6),
      repeats=repeats, steps_per_timed_chunk=steps,
      save_blocking_all_s=[round(x, 4) for x in blocking],
      chunk_s={str(n): [round(x, 4) for x in v] for n, v in chunk.items()},
      backend=jax.default_backend(), device_kind=device.device_kind,
      jax_version=jax.__version__)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", default=",".join(CONFIGS),
                 help=f"comma-separated, of {', '.join(CONFIGS)}")
  p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
  p.add_argument("--steps", type=int, default=None,
                 help="steps per timed train chunk (default 10)")
  p.add_argument("--quick", action="store_true",
                 help="2 repeats, 2-step chunks, a small synthetic CIFAR-shaped set")
  p.add_argument("--dir", default=None, help="parent of the temporary directory")
  args = p.parse_args(argv)
  names = args.configs.split(",")
  for name in names:
    if name not in CONFIGS:
      p.error(f"unknown config {name!r}: choose from {', '.join(CONFIGS)}")
  repeats = args.repeats or (2 if args.quick else 5)
  steps = args.steps or (2 if args.quick else 10)
  logging.getLogger("absl").setLevel(logging.ERROR)
  os.chdir(pathlib.Path(__file__).absolute().parent.parent)  # configs/ paths are relative
  for name in names:
    with tempfile.TemporaryDirectory(prefix="zhang-ckpt-bench-", dir=args.dir) as root:
      row = measure(name, pathlib.Path(root), repeats, steps, args.quick)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
