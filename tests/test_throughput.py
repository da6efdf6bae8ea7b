"""benchmarks/throughput.py in-process, tiny: --conv_gradient, --cpu_kernels, --grad_chunks,
--kind and the --up_to_memory sweep."""

import importlib.util
import json
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)

TINY = ["--models", "mlp_1x512", "--replicas", "1", "--steps", "1", "--repeats", "1",
        "--n_train", "256", "--batch_size", "4", "--matmul_n", "128", "--quick"]
RAM = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # the limit's base on CPU


def run(capsys, *args):
  throughput.main([*TINY, *args])
  out, err = capsys.readouterr()
  rows = [json.loads(line) for line in out.splitlines()]
  return rows, [line for line in err.splitlines() if line.startswith("throughput:")]


def test_conv_gradient_rows_report_the_resolved_value(capsys):
  rows, _ = run(capsys, "--models", "alexnet_small", "--batch_size", "2",
                "--conv_gradient", "jax,explicit")
  assert [(r["model"], r["replicas"], r["conv_gradient"]) for r in rows] == [
      ("alexnet_small", 1, "jax"), ("alexnet_small", 1, "explicit")]
  assert all(r["step_ms"] > 0 and r["memory_limit_bytes"] == int(0.8 * RAM) for r in rows)
  # The same-process references: matmul rate and elementwise bandwidth (--quick: 16 MB).
  assert all(r["matmul_flops_per_s"] > 0 and r["memory_bytes_per_s"] > 0 for r in rows)


def test_kind_rows_time_the_randomized_grid(capsys):
  rows, _ = run(capsys, "--replicas", "2", "--kind", "labels,random_pixels")
  assert [(r["kind"], r["replicas"]) for r in rows] == [("labels", 2), ("random_pixels", 2)]
  # The same model and batch: the same FLOP count, whatever the inputs.
  assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"] > 0
  assert all(r["step_ms"] > 0 for r in rows)


def test_grad_chunks_off_compiles_one_weight_gradient_per_layer(capsys):
  """alexnet_small at batch 8: its first layer's x and dy take 210 KB per image, so the
  0.75 MiB weight-gradient budget makes chunks of 3 images, 3 convolutions instead of 1.
  Chunks are for YNNPACK's kernels (cpu_kernels "default"); with Eigen's there are none."""
  from zhang import layers
  budgets = layers.INPUT_GRAD_CHUNK_BYTES, layers.WEIGHT_GRAD_CHUNK_BYTES
  dataset = throughput.synthetic_dataset(64, (28, 28, 3))
  count = {}
  for chunks in (False, True):
    prep = throughput.prepare("alexnet_small", 1, dataset, 8, 1, conv_gradient="explicit",
                              grad_chunks=chunks, cpu_kernels="default")
    assert prep.cpu_kernels == "default"
    assert prep.grad_chunk_bytes == (list(budgets) if chunks else None)
    assert (layers.INPUT_GRAD_CHUNK_BYTES, layers.WEIGHT_GRAD_CHUNK_BYTES) == budgets
    count[chunks] = prep.compiled.as_text().count(" convolution(")
  assert count[True] > count[False] + 1

  # Budgets of one image's x and dy (first layer): one convolution per image.
  prep = throughput.prepare("alexnet_small", 1, dataset, 8, 1, conv_gradient="explicit",
                            grad_chunks=(1, 1), cpu_kernels="default")
  assert prep.grad_chunk_bytes == [1, 1]
  assert prep.compiled.as_text().count(" convolution(") > count[True]

  # Eigen's kernels (what "auto" picks for conv nets on CPU): no chunks, whatever is asked.
  prep = throughput.prepare("alexnet_small", 1, dataset, 8, 1, conv_gradient="explicit",
                            grad_chunks=(1, 1), cpu_kernels="auto")
  assert prep.cpu_kernels == "eigen" and prep.grad_chunk_bytes is None
  assert prep.compiled.as_text().count(" convolution(") == count[False]

  rows, _ = run(capsys, "--models", "alexnet_small", "--batch_size", "2",
                "--grad_chunks", "off,4096:2048", "--cpu_kernels", "default,eigen")
  assert [(r["cpu_kernels"], r["grad_chunk_bytes"]) for r in rows] == [
      ("default", None), ("default", [4096, 2048]), ("eigen", None), ("eigen", None)]
  for bad in ("sometimes", "4096", "0:10", "a:b"):
    with pytest.raises(SystemExit) as exit_info:
      throughput.main([*TINY, "--grad_chunks", f"on,{bad}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: --grad_chunks {bad!r}: use on, off or INPUT:WEIGHT (positive byte counts), "
        "comma-separated")


def test_up_to_memory_doubles_while_the_estimate_fits(capsys):
  (one,), _ = run(capsys)
  m1 = one["xla_memory_bytes"]
  assert one["backend"] == "cpu" and m1 > 0

  # A limit of 2.5 x R=1's estimate: R=2 (about 2x) fits, R=4 (about 4x) does not.
  rows, stops = run(capsys, "--up_to_memory", "--memory_fraction", str(2.5 * m1 / RAM))
  assert [r["replicas"] for r in rows] == [1, 2]
  limit = rows[0]["memory_limit_bytes"]
  assert abs(limit - 2.5 * m1) < 1e-3 * m1
  assert rows[0]["xla_memory_bytes"] == m1
  assert 1.5 * m1 < rows[1]["xla_memory_bytes"] <= limit  # grows with R, within the limit
  assert len(stops) == 1 and stops[0].startswith("throughput: stopped mlp_1x512 R=4:")
  assert "predicted" in stops[0] and "above the limit" in stops[0]

  # Below R=1's own estimate: R=1 is compiled and checked but not run; the sweep stops.
  rows, stops = run(capsys, "--up_to_memory", "--memory_fraction", str(0.9 * m1 / RAM))
  assert rows == []
  assert stops[0].startswith("throughput: skipped mlp_1x512 R=1: XLA's estimate")
  assert stops[0].endswith("not run")
  assert stops[1].startswith("throughput: stopped mlp_1x512 R=2: predicted")
  assert len(stops) == 2


def test_up_to_memory_stops_at_max_replicas_and_the_time_budget(capsys):
  rows, stops = run(capsys, "--up_to_memory", "--max_replicas", "1")
  assert [r["replicas"] for r in rows] == [1]
  assert stops == ["throughput: stopped mlp_1x512 R=2: above --max_replicas 1"]

  rows, stops = run(capsys, "--up_to_memory", "--max_seconds", "0")  # nothing compiled
  assert rows == [] and len(stops) == 2
  assert stops[0].startswith("throughput: skipped mlp_1x512 R=1: ")
  assert stops[1].startswith("throughput: stopped mlp_1x512 R=2: ")
  assert all(s.endswith("budget 0 s") for s in stops)


@pytest.mark.parametrize("args,message", [
    (["--conv_gradient", "jax,cudnn"],
     "--conv_gradient 'cudnn': use auto, jax or explicit (comma-separated)"),
    (["--cpu_kernels", "eigen,mkl"],
     "--cpu_kernels 'mkl': use auto, default or eigen (comma-separated)"),
    (["--kind", "labels,noise"], "--kind 'noise': use labels, shuffled_pixels, random_pixels, "
     "gaussian (comma-separated)"),
])
def test_bad_choice_exits_2_with_one_line(capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    throughput.main([*TINY, *args])
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  errors = [line for line in err.splitlines() if "error:" in line]
  assert out == "" and "Traceback" not in err
  assert len(errors) == 1  # argparse names the program after sys.argv[0]
  assert errors[0].endswith(f" error: {message}")
