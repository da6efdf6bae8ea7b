"""The streaming path (``zhang/experiment/feed.py``) on 2 processes on loopback.

Each process reads the rows of every global batch that its devices hold on the mesh's
``data`` axis: half of it where that axis spans the processes (mesh (1, 2), one device
each), all of it where each process has a whole ``data`` axis of its own (mesh (2, 2), two
devices each). Either way the pair trains to the same bits as one process of the same mesh
layout (the same program: the sum over the ``data`` axis adds the same two halves), and
killed and resumed, as the uninterrupted pair (the same layout: ``tests/test_mesh.py``).
"""

import json
import signal
import subprocess
import sys
import time

import pytest
from test_mesh import ROOT, _env, _finish, _free_port, _results

from zhang.experiment import stream

N_TRAIN, BATCH, ORDER_SEED, CHECKPOINT = 128, 32, 3, 20
# Three replicas (true and half-random labels, Gaussian inputs: the labels and inputs drawn
# from the indices), 60 steps: 15 epochs of 4 batches, each epoch its own permutation.
ARGS = ["--config", "configs/digits.py", "--set", f"n_train={N_TRAIN}", "--set", "n_test=64",
        "--set", f"batch_size={BATCH}", "--set", "learning_rate=0.03", "--set",
        "max_steps=60", "--set", "eval_every=10", "--set", f"checkpoint_every={CHECKPOINT}",
        "--set", "eval_batch_size=64", "--set", "stream=true", "--set", "batch_order=shared",
        "--set", f"order_seed={ORDER_SEED}", "--set",
        "grid=[dict(kinds=['labels'], corruptions=[0.0, 0.5], seeds=[0]), "
        "dict(kinds=['gaussian'], corruptions=[0.0], seeds=[1])]", "--no_progress"]
# `zhang train` with each Feed call's batches recorded as the process put them on its
# devices: per device, the rows of the global batch it holds and their example indices.
RECORDING = """
import json, os, sys
import jax
from zhang import cli
from zhang.experiment import feed

put = feed.Feed.next

def next(self, steps):
  batches = put(self, steps)
  shards = [(s.index[1].indices(self.stream.order.global_batch)[:2], s.data[:steps].tolist())
            for s in batches.indices.addressable_shards]
  with open(os.path.join(os.environ["READS"], f"{jax.process_index()}.jsonl"), "a") as f:
    f.write(json.dumps({"step": self.step - steps, "shards": shards}) + "\\n")
  return batches

feed.Feed.next = next
sys.exit(cli.main(sys.argv[1:]))
"""
# (mesh_shape, devices per process) of the 2 processes.
LAYOUTS = {"data_across_processes": ("(1, 2)", 1), "data_within_each_process": ("(2, 2)", 2)}


def _start(workdir, reads, mesh, processes, devices):
  """`zhang train` in ``processes`` processes of ``devices`` devices each, recording their
  reads in the folder ``reads``."""
  reads.mkdir(parents=True)
  env = dict(_env(devices), READS=str(reads))
  extra = []
  if processes > 1:
    extra = ["--num_processes", str(processes), "--coordinator_address",
             f"127.0.0.1:{_free_port()}"]
  return [subprocess.Popen(
      [sys.executable, "-c", RECORDING, "train", *ARGS, "--set", f"mesh_shape={mesh}",
       "--workdir", str(workdir), *extra, *(["--process_id", str(i)] if extra else [])],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)]


def _reads(folder) -> dict:
  """{process: {step: {(first row, end row): example indices}}} from a recording."""
  out = {}
  for path in sorted(folder.glob("*.jsonl")):
    steps = out.setdefault(int(path.stem), {})
    for line in path.read_text().splitlines():
      call = json.loads(line)
      for (start, stop), indices in call["shards"]:
        for k, rows in enumerate(indices):
          steps.setdefault(call["step"] + k, {})[(start, stop)] = rows
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A factory: (one process, two processes) of a ``LAYOUTS`` layout, each (results,
  reads), trained once per module."""
  done = {}

  def get(layout):
    if layout not in done:
      mesh, devices = LAYOUTS[layout]
      base = tmp_path_factory.mktemp(layout)
      for name, processes in (("one", 1), ("two", 2)):
        _finish(*_start(base / name, base / f"{name}_reads", mesh, processes,
                        devices * 2 // processes))
      done[layout] = [(_results(base / n), _reads(base / f"{n}_reads")) for n in ("one", "two")]
    return done[layout]
  return get


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_process_reads_the_rows_its_devices_hold(runs, layout):
  (_, one), (_, two) = runs(layout)
  order = stream.Order(N_TRAIN, BATCH, ORDER_SEED)
  assert sorted(one) == [0] and sorted(two) == [0, 1]
  assert sorted(one[0]) == sorted(two[0]) == sorted(two[1]) == list(range(60))
  for k in range(60):
    whole = order.examples(k).tolist()  # the single process's global batch, in order
    assert [i for _, rows in sorted(one[0][k].items()) for i in rows] == whole
    held = []
    for process in (0, 1):
      # Every device's rows are where the global batch has them.
      for (start, stop), rows in two[process][k].items():
        assert rows == whole[start:stop]
      spans = sorted(two[process][k])
      held.append(range(spans[0][0], spans[-1][1]))
    if layout == "data_across_processes":  # disjoint halves, process 0 the first
      assert held == [range(0, BATCH // 2), range(BATCH // 2, BATCH)]
    else:  # each process's two devices hold the whole batch
      assert held == [range(BATCH)] * 2


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_two_processes_train_to_the_bits_of_one(runs, layout):
  """Every evaluation row (losses, accuracies) and the summary: the same bits."""
  (one, _), (two, _) = runs(layout)
  assert one[0]["device_count"] == two[0]["device_count"] == 2 * LAYOUTS[layout][1]
  assert len(one[1]) == 3 * 7  # evaluations at 0, 10, ..., 60
  assert one == two


@pytest.mark.slow
def test_two_processes_killed_and_resumed_stream_as_if_never_stopped(runs, tmp_path):
  """Killed after the checkpoint of step 20, the pair starts its stream again at step 20
  and ends exactly as the uninterrupted pair."""
  mesh, devices = LAYOUTS["data_across_processes"]
  _, (uninterrupted, reads) = runs("data_across_processes")
  procs = _start(tmp_path / "w", tmp_path / "killed", mesh, 2, devices)
  deadline = time.time() + 300
  while not (tmp_path / "w" / "checkpoints" / str(CHECKPOINT)).exists():
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.02)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  outs = _finish(*_start(tmp_path / "w", tmp_path / "resumed", mesh, 2, devices))
  assert "resuming" in outs[0][1]
  resumed = _reads(tmp_path / "resumed")
  for process in (0, 1):
    assert sorted(resumed[process]) == list(range(CHECKPOINT, 60))
    for k, shards in resumed[process].items():
      assert shards == reads[process][k]
  assert _results(tmp_path / "w") == uninterrupted

