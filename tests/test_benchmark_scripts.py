"""The profiling benchmarks run and report what they say, on tiny shapes (no timing asserted)."""

import json
import pathlib
import re
import sys

import pytest

from zhang import layers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import ab_source  # noqa: E402
import batched_matmul  # noqa: E402
import layers_in_loops  # noqa: E402
import profile_step  # noqa: E402
import roofline  # noqa: E402


def test_layers_in_loops_reports_every_variant(capsys):
  layers_in_loops.main(["--batch", "2", "--size", "6", "--cin", "3", "--cout", "4",
                        "--repeats", "1"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["layer"], r["how"]) for r in rows] == [
      ("conv3x3", "plain"), ("conv3x3", "loop_jax"), ("conv3x3", "loop_explicit_whole"),
      ("conv3x3", "loop_explicit"), ("conv3x3", "loop_im2col"), ("conv3x3", "loop_slices"),
      ("max_pool3x3s2", "loop_jax"), ("max_pool3x3s2", "loop_explicit")]
  assert all(r["weight_grad_gflops"] > 0 for r in rows[:6])
  assert all(r["gradient_ms"] > 0 for r in rows[6:])

  layers_in_loops.main(["--batch", "2", "--size", "6", "--cin", "3", "--cout", "4",
                        "--repeats", "1", "--kernel", "1"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["layer"], r["how"]) for r in rows] == [
      ("conv1x1", "plain"), ("conv1x1", "loop_jax"), ("conv1x1", "loop_explicit_whole"),
      ("conv1x1", "loop_explicit")]
  assert all(r["forward_gflops"] > 0 and r["kernel"] == 1 for r in rows)


def test_profile_step_finds_the_convolutions(capsys):
  profile_step.main(["--model", "alexnet_small", "--batch_size", "2", "--steps", "1",
                     "--conv_gradient", "explicit", "--top", "3"])
  out = capsys.readouterr().out
  assert "alexnet_small, R = 1, batch 2, strategy" in out and "ms per step" in out
  # Every convolution in the explicit step is canonical (tests/test_layers.py says why).
  roles, conv_rows = out.split("\nconvs:")[1].split("\n\n")[:2]
  # alexnet_small's two conv layers: two forwards, two weight gradients, and one input
  # gradient (the first layer's input needs none).
  parsed = [re.match(r"\s*([\d.]+)  (.+?) +(\d+) ops +([\d.]+) GF/s", r)
            for r in roles.splitlines()[1:]]
  assert {m.group(2): int(m.group(3)) for m in parsed} == {
      "forward": 2, "weight grad": 2, "input grad": 1}
  assert all(float(m.group(4)) > 0 for m in parsed)
  conv_rows = conv_rows.splitlines()
  assert len(conv_rows) == 3 and all("b01f_01io->b01f" in row for row in conv_rows)


def test_profile_step_lists_eigens_unfused_dots(capsys):
  profile_step.main(["--model", "mlp_1x512", "--input_shape", "8,8,1", "--replicas", "3",
                     "--batch_size", "4", "--steps", "1", "--cpu_kernels", "eigen"])
  out = capsys.readouterr().out
  rows = out.split("\ndots:")[1].strip().splitlines()[1:]
  # Forward: two products; backward: two weight gradients and the second layer's input
  # gradient. The logits' weight gradient comes as (out, in) = (10, 512) (zhang/layers.py).
  shapes = sorted(row.split()[2] for row in rows)
  assert shapes == sorted(["f32[3,4,512]", "f32[3,4,10]", "f32[3,4,512]", "f32[3,64,512]",
                           "f32[3,10,512]"])
  assert all(re.search(r"lb\{0\} lc\{\d\} rb\{0\} rc\{\d\}", row) for row in rows)


def test_batched_matmul_reports_each_replica_count_and_the_reference(capsys):
  batched_matmul.main(["--replicas", "1,3", "--batch", "4", "--din", "6", "--dout", "5",
                       "--matmul_n", "16", "--repeats", "1"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r.get("replicas") for r in rows] == [1, 3, None]
  assert [r["weight_bytes"] for r in rows[:2]] == [4 * 6 * 5, 3 * 4 * 6 * 5]
  assert all(r["batched_gflops"] > 0 and r["loop_gflops"] > 0 for r in rows[:2])
  assert rows[2]["reference"] == "16^3" and rows[2]["gflops"] > 0


def test_ab_source_times_each_variant_then_restores_the_module(capsys):
  budget = layers.INPUT_GRAD_CHUNK_BYTES
  ab_source.main([
      "--model", "alexnet_small", "--batch_size", "2", "--steps", "1", "--rounds", "3",
      "--variant", "as_is",
      "--variant", "no_chunks=INPUT_GRAD_CHUNK_BYTES: int | None = 6 * 2**20>>>"
                   "INPUT_GRAD_CHUNK_BYTES: int | None = None"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["variant"] for r in rows] == ["as_is", "no_chunks"]
  for r in rows:
    assert len(r["rounds_ms"]) == 3 and 0 < r["best_ms"] <= r["median_ms"]
    assert r["module"] == "zhang.layers" and r["compile_s"] > 0
  assert layers.INPUT_GRAD_CHUNK_BYTES == budget  # the edited source was undone


@pytest.mark.parametrize("spec,message", [
    ("x=text that is not in the source>>>y", "occurs 0 times"),
    ("x=no arrow", "write NAME=OLD>>>NEW"),
])
def test_ab_source_refuses_an_edit_it_cannot_apply(spec, message):
  with pytest.raises(SystemExit, match=message):
    ab_source.main(["--variant", "as_is", "--variant", spec])


def test_roofline_counts_the_mlps_bytes_and_its_floor(tmp_path, capsys):
  # mlp_1x512 on 28x28x3: Dense 2352 -> 512 and 512 -> 10, with biases.
  params = 2352 * 512 + 512 + 512 * 10 + 10
  # Per example: each layer's input and output twice, the second layer's input gradient.
  elements = (2 * 2352 + 2 * 512) + (2 * 512 + 2 * 10 + 512)
  row = dict(model="mlp_1x512", replicas=4, batch_size=16, input_shape=[28, 28, 3],
             strategy="vmap", compute_dtype="float32", flops_per_step=3 * 2 * 16 * 4 * (
                 2352 * 512 + 512 * 10), matmul_flops_per_s=1e12, step_ms_median=2.0,
             fraction_of_matmul=0.1)
  r = roofline.analyse(row, bandwidth=1e10)
  assert r["params_per_replica"] == params
  assert r["state_bytes"] == 7 * 4 * params * 4
  assert r["layer_bytes"] == 4 * elements * 16 * 4
  memory_ms = (r["state_bytes"] + r["layer_bytes"]) / 1e10 * 1e3
  assert r["bound"] == "memory" and r["floor_ms"] == pytest.approx(memory_ms)
  assert r["best_fraction"] == pytest.approx(row["flops_per_step"] / 1e12 * 1e3 / memory_ms)
  assert r["of_floor"] == pytest.approx(memory_ms / 2.0)
  assert roofline.analyse(row, 1e10, state_passes=5)["state_bytes"] == 5 * 4 * params * 4

  rows = tmp_path / "rows.jsonl"
  rows.write_text("a log line\n" + json.dumps(row) + "\n")
  roofline.main([str(rows), "--bandwidth_gbps", "10", "--json", str(tmp_path / "r.json")])
  table = capsys.readouterr().out
  assert "| mlp_1x512 | 4 | vmap / float32 |" in table and f"{memory_ms:.3f} (memory)" in table
  assert json.loads((tmp_path / "r.json").read_text())[0]["floor_ms"] == pytest.approx(memory_ms)
  with pytest.raises(SystemExit):
    roofline.main([str(tmp_path / "missing.jsonl"), "--bandwidth_gbps", "10"])
  assert "no such file" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # no bandwidth given and none measured in the row
    roofline.main([str(rows)])
  assert "--bandwidth_gbps" in capsys.readouterr().err
  # A row with throughput.py's measured bandwidth: taken when none is given.
  measured = roofline.analyse(dict(row, memory_bytes_per_s=2e10))
  assert measured["bandwidth_measured"] and measured["memory_ms"] == pytest.approx(memory_ms / 2)
  assert not roofline.analyse(dict(row, memory_bytes_per_s=2e10), 1e10)["bandwidth_measured"]


def _xspace(planes: str, names: list[str]) -> str:
  """A text-format XSpace: ``planes`` with event metadata ids 1.. for ``names`` and stat
  metadata id 100 for ``hlo_op`` added to every plane."""
  meta = "".join(f'event_metadata {{ key: {i} value {{ id: {i} name: "{n}" }} }}\n'
                 for i, n in enumerate(names, 1))
  meta += 'stat_metadata { key: 100 value { id: 100 name: "hlo_op" } }\n'
  return planes.replace("META", meta)


def _event(meta_id: int, ns: int, hlo_op: str | None = None) -> str:
  stat = f' stats {{ metadata_id: 100 str_value: "{hlo_op}" }}' if hlo_op else ""
  return f"events {{ metadata_id: {meta_id} duration_ps: {ns * 1000}{stat} }}\n"


def test_profile_step_charges_gpu_kernels_to_their_hlo_ops():
  from jax.profiler import ProfileData
  names = ["PjitFunction(train_chunk)", "sm90_xmma_fprop_tf32", "loop_add_fusion",
           "sm90_xmma_wgrad_tf32", "jit_train_chunk"]
  host = ('planes { id: 1 name: "/host:CPU" META lines { id: 1 name: "python" '
          + _event(1, 50_000) + "} }\n")
  streams = ('lines { id: 1 name: "Stream #13(XLA Ops)" ' + _event(2, 700, "cudnn-conv.1")
             + _event(3, 100, "loop_add_fusion.2") + _event(2, 300, "cudnn-conv.1") + "}\n"
             'lines { id: 2 name: "Stream #14" ' + _event(4, 900, "cudnn-conv-bw-filter.3")
             + "}\n"
             'lines { id: 3 name: "XLA Modules" ' + _event(5, 2_000) + "}\n")
  gpu = 'planes { id: 2 name: "/device:GPU:0" META ' + streams + "}\n"
  trace = profile_step.trace_times(ProfileData.from_text_proto(_xspace(host + gpu, names)))
  # Only the device's kernels count (not the host's events, nor the module line over them).
  assert trace.ops == {"cudnn-conv.1": 1000, "loop_add_fusion.2": 100,
                       "cudnn-conv-bw-filter.3": 900}
  assert trace.kernels == {"sm90_xmma_fprop_tf32": 1000, "loop_add_fusion": 100,
                           "sm90_xmma_wgrad_tf32": 900}
  assert trace.calls["sm90_xmma_fprop_tf32"] == 2
  assert "Stream #13(XLA Ops)" in trace.source and "XLA Modules" not in trace.source

  # Where the trace has an "XLA Ops" line (events named by HLO op), only that line is read;
  # an event without an hlo_op stat is charged to its own name.
  ops_line = ('lines { id: 4 name: "XLA Ops" ' + _event(2, 400, "fusion.7") + _event(3, 50)
              + "}\n")
  gpu = 'planes { id: 2 name: "/device:GPU:0" META ' + streams + ops_line + "}\n"
  trace = profile_step.trace_times(ProfileData.from_text_proto(_xspace(gpu, names)))
  assert trace.ops == {"fusion.7": 400, "loop_add_fusion": 50}

  # On CPU (no device plane) every event counts, by name.
  trace = profile_step.trace_times(ProfileData.from_text_proto(_xspace(host, names)))
  assert trace.ops == {"PjitFunction(train_chunk)": 50_000} and not trace.kernels


def test_profile_step_reads_cudnn_convolutions_and_cublas_products():
  n, h, w, cin, cout, groups = 128, 28, 28, 3, 96, 8
  fwd = 2 * n * h * w * cout * 3 * 3 * cin  # one replica's 3x3 convolution
  hlo = f"""ENTRY %main (p0: f32[{n},{h},{w},{cin}]) -> f32[{n},{h},{w},{cin}] {{
  %p0 = f32[{n},{h},{w},{cin}]{{3,2,1,0}} parameter(0)
  %p1 = f32[3,3,{cin},{cout}]{{3,2,1,0}} parameter(1)
  %dy = f32[{n},{h},{w},{cout}]{{3,2,1,0}} parameter(2)
  %cudnn-conv.1 = (f32[{n},{h},{w},{cout}]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%p0, %p1), window={{size=3x3 pad=1_1x1_1}}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward", backend_config={{}}
  %cudnn-conv-bw-filter.2 = (f32[3,3,{cin},{cout}]{{3,2,1,0}}, u8[0]{{0}}) custom-call(f32[{n},{h},{w},{cin}]{{3,2,1,0}} %p0, f32[{n},{h},{w},{cout}]{{3,2,1,0}} %dy), window={{size=3x3 pad=1_1x1_1}}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %cudnn-conv-bw-input.3 = (f32[{n},{h},{w},{cin}]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%dy, %p1), window={{size=3x3 pad=1_1x1_1}}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardInput"
  %pg = f32[{n},{h},{w},{groups * cin}]{{3,2,1,0}} parameter(3)
  %kg = f32[3,3,{cin},{groups * cout}]{{3,2,1,0}} parameter(4)
  %cudnn-conv.4 = (f32[{n},{h},{w},{groups * cout}]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%pg, %kg), window={{size=3x3 pad=1_1x1_1}}, dim_labels=b01f_01io->b01f, feature_group_count={groups}, custom_call_target="__cudnn$convForward"
  %a = f32[{n},512]{{1,0}} parameter(5)
  %b = f32[512,10]{{1,0}} parameter(6)
  ROOT %gemm.5 = (f32[{n},10]{{1,0}}, s8[0]{{0}}) custom-call(%a, %b), custom_call_target="__cublas$gemm", backend_config={{}}
}}
"""
  rows = profile_step.fusion_contents(hlo)
  assert {k: (v[1], v[3], v[4]) for k, v in rows.items()} == {
      "cudnn-conv.1": ("conv", "forward", fwd),
      "cudnn-conv-bw-filter.2": ("conv", "weight grad", fwd),
      "cudnn-conv-bw-input.3": ("conv", "input grad", fwd),
      "cudnn-conv.4": ("conv", "forward", groups * fwd),  # grouped: 8 replicas' products
      "gemm.5": ("dot", "", 0)}
  assert rows["cudnn-conv.1"][0] == f"f32[{n},{h},{w},{cout}]"
  assert rows["cudnn-conv.4"][2].endswith(f"groups={groups}")
  assert rows["gemm.5"][2] == "__cublas$gemm"
