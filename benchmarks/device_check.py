"""Accelerator check: throughput rows, a short Figure 1 run and the Figure 1b estimate.

  python benchmarks/device_check.py --out results/check               # on a GPU or TPU
  python benchmarks/device_check.py --out results/check --budget_s 900 # more rows fit
  python benchmarks/device_check.py --quick --out /tmp/check          # CPU smoke run

Parts, each given a share of ``--budget_s`` (rows predicted to end past it are skipped, and
said on stderr; a part that fails does not stop the next):

1. ``throughput``: benchmarks/throughput.py's rows, mlp_1x512 at R = 1, 8, 64, 256, then
   inception_small and alexnet_small at R = 1, 8, 64 under both ``replicas`` choices of the
   execution plan (``zhang/runtime/plan.py``), ``map`` and ``vmap``.
2. ``fig1``: ``zhang.experiment.train.run`` of ``configs/fig1.py:model=inception_small,
   dataset=synthetic_cifar10,n_train=5000`` (18 replicas; generated data, no download) for
   200 steps, evaluated every 100. Stopped at a chunk boundary, as if preempted, at the end
   of its share.
3. ``estimate``: benchmarks/estimate_fig1b.py on the rows of part 1, with the evaluation
   cost the run of part 2 measured: the whole Figure 1b grid on CIFAR-10 on this device,
   with assumed steps-to-fit (``FIT_STEPS``), and again with AlexNet and the MLP run to
   ``max_steps`` (``UNFITTED_STEPS``: their random labels may never reach 100%).

``--quick`` runs the same parts tiny (R = 1 and 2, batch 2 to 4, a 20-step MLP grid; XLA's
CPU code unoptimized, to compile faster) on any backend, a smoke run; without it the CPU
backend is refused (exit 2). Writes one file, ``OUT/device_check.json``, rewritten after each
part so that a run cut short leaves what it had: the machine, the automatic plan per model,
the rows, the run's summary in short, both estimates, and each part's seconds and error.
``estimate_fig1b.py OUT/device_check.json`` reads its rows again. Exit 0 when every part
ran, else 1.

On a machine with jax, flax, optax, orbax-checkpoint and chex but no package index, the
missing pure-Python packages (ml_collections) are installed from ``--wheels`` (default
benchmarks/wheels/, made by benchmarks/fetch_wheels.sh elsewhere) into a temporary folder.
Results: benchmarks/RESULTS.md, "Accelerator check".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
NEEDED = {"ml_collections": "ml_collections", "tqdm": "tqdm", "etils": "etils",
          "absl": "absl_py", "yaml": "PyYAML"}  # module: distribution, pure-Python wheels

# Steps until each model's slowest replica (random labels) fits CIFAR-10, assumed until a
# real run's summary.json measures them (estimate_fig1b.py --fit_from).
FIT_STEPS = "inception_small=16600,alexnet_small=16000,mlp_1x512=16000"
FIT_SOURCE = ("inception_small: a public reproduction's random-label steps to a loss of 0.1; "
              "alexnet_small and mlp_1x512: 4 x Inception's 4,000 true-label steps (Figure 1b: "
              "random labels take up to about 4x as long)")
UNFITTED_STEPS = "inception_small=16600,alexnet_small=60000,mlp_1x512=60000"
UNFITTED_SOURCE = ("inception_small as assumed; alexnet_small and mlp_1x512 never fit and run "
                   "to max_steps (benchmarks/RESULTS.md, \"Steps-to-fit at full size\")")

# (part, share of the budget): the estimate is arithmetic and takes what is left.
SHARES = {"throughput mlp_1x512": 0.12, "throughput inception_small": 0.3,
          "throughput alexnet_small": 0.17, "fig1": 0.3}


def install_missing(wheels: pathlib.Path, target: pathlib.Path) -> list[str]:
  """Installs the modules of NEEDED that do not import, from the wheels in ``wheels``, into
  ``target``, then first on sys.path. Returns the distributions installed; exits with one line
  if one has no wheel."""
  missing = [dist for module, dist in NEEDED.items()
             if importlib.util.find_spec(module) is None]
  if not missing:
    return []
  # Wheel names spell the distribution with underscores; compare case-blind.
  norm = lambda name: name.lower().replace("-", "_")
  found = {norm(w.name.split("-")[0]): w for w in sorted(wheels.glob("*.whl"))}
  absent = [d for d in missing if norm(d) not in found]
  if absent:
    raise SystemExit(f"device_check.py: {', '.join(absent)} not installed and no wheel in "
                     f"{wheels}: run benchmarks/fetch_wheels.sh where an index answers, and "
                     f"bring {wheels} along")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                  "--no-compile", "--disable-pip-version-check", "--target", str(target),
                  *(str(found[norm(d)]) for d in missing)], check=True)
  sys.path.insert(0, str(target))
  importlib.invalidate_caches()
  return missing


def machine() -> dict:
  import jax

  env = dict(backend=jax.default_backend(), device_count=jax.device_count(),
             device_kind=jax.devices()[0].device_kind, jax_version=jax.__version__,
             python=platform.python_version(), cpu_count=os.cpu_count(),
             date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
  try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
  except (OSError, subprocess.TimeoutExpired):
    pass
  return env


def throughput_argv(model: str, quick: bool, max_seconds: float) -> list[str]:
  if quick:
    tiny = ["--steps", "1", "--repeats", "1", "--n_train", "256", "--matmul_n", "256",
            "--quick"]
    shape = (["--replicas", "1,2", "--batch_size", "4"] if model == "mlp_1x512" else
             ["--replicas", "1", "--batch_size", "2"])
    return ["--models", model, *shape, *tiny, "--max_seconds", f"{max_seconds:.0f}"]
  # The reference matmul is 8192^3: a 2048^3 one is too short to time on a large GPU.
  shape = (["--replicas", "1,8,64,256"] if model == "mlp_1x512" else
           ["--replicas", "1,8,64", "--plan", "replicas=map", "--plan", "replicas=vmap"])
  return ["--models", model, *shape, "--matmul_n", "8192", "--max_seconds",
          f"{max_seconds:.0f}"]


def fig1_config(quick: bool):
  from zhang.experiment import config as config_lib

  if quick:
    arg = "model=mlp_1x512,dataset=synthetic_cifar10,levels=2,seeds=1,n_train=256"
    sets = ["max_steps=20", "eval_every=10", "n_test=128", "batch_size=32",
            "eval_batch_size=128"]
  else:
    arg = "model=inception_small,dataset=synthetic_cifar10,n_train=5000"
    sets = ["max_steps=200", "eval_every=100", "n_test=1000", "checkpoint_every=1000"]
  spec = f"configs/fig1.py:{arg}"
  return spec, sets, config_lib.load(str(REPO / spec), sets)


def train_within(config, workdir: pathlib.Path, seconds: float) -> dict:
  """``zhang.experiment.train.run`` that stops at a chunk boundary once ``seconds`` have passed: a
  SIGTERM to this process, which the trainer takes as a preemption notice."""
  from zhang.experiment import train as train_lib

  fired = []
  previous = signal.signal(signal.SIGTERM, lambda *_: fired.append(True))  # after the run
  timer = threading.Timer(max(seconds, 1.0), os.kill, (os.getpid(), signal.SIGTERM))
  timer.start()
  try:
    return train_lib.run(config, workdir, restart=True, progress=False)
  finally:
    timer.cancel()
    signal.signal(signal.SIGTERM, previous)


def short_run(summary: dict, spec: str, sets: list[str]) -> dict:
  keep = ("kind", "corruption", "seed", "fit_step", "final_train_acc", "final_test_acc")
  # "preempted": stopped at the end of its share of the budget (train_within).
  return dict(config=spec, overrides=sets, plan=summary.get("plan"),
              status=summary.get("status"), steps_run=summary.get("steps_run"),
              wall_seconds=summary.get("wall_seconds"), timing=summary.get("timing"),
              replicas=[{k: r.get(k) for k in keep} for r in summary.get("replicas", [])])


def short_estimate(e: dict) -> dict:
  keep = ("total_seconds", "total_hours", "budget_hours", "under_budget", "lower_bound",
          "extrapolated", "batch_scaled")
  return dict({k: e[k] for k in keep}, assumptions=e["assumptions"], models={
      m["model"]: dict(seconds=m["seconds"], step_ms=m["step_ms"], steps=m["steps"],
                       plan=m["step"]["plan"], row_replicas=m["step"]["row_replicas"],
                       eval_cost=m["eval_cost"], eval_cost_measured=m["eval_cost_measured"],
                       extrapolated=m["extrapolated"])
      for m in e["models"]})


def report(result: dict) -> str:
  e = result["machine"]
  lines = [f"device_check: {e['backend']} ({e['device_kind']} x{e['device_count']}), jax "
           f"{e['jax_version']}, {result['seconds']:.0f} s of {result['budget_s']:.0f}"]
  for name, part in result["parts"].items():
    state = "ok" if part["ok"] else f"FAILED: {part['error'].splitlines()[-1]}"
    lines.append(f"  {name:<28} {part['seconds']:7.1f} s  {state}")
  lines.append(f"  {'model':<16} {'plan':<48} {'R':>4} {'step ms':>9} {'compile s':>9} "
               f"{'x matmul':>8}")
  for r in result["throughput"]:
    lines.append(f"  {r['model']:<16} {r['plan']:<48} {r['replicas']:>4} {r['step_ms']:>9.2f} "
                 f"{r['compile_s']:>9.1f} {r['fraction_of_matmul']:>8.3f}")
  run = result.get("fig1")
  if run:
    fitted = sum(r["fit_step"] is not None for r in run["replicas"])
    status = ("stopped at its share of the budget" if run["status"] == "preempted"
              else run["status"])
    lines.append(f"  fig1: {run['config']}: {status}, {run['steps_run']} steps, "
                 f"{fitted}/{len(run['replicas'])} replicas fitted")
  for key in ("estimate", "estimate_unfitted"):
    est = result.get(key)
    if est:
      bound = ">= " if est["lower_bound"] else ""
      lines.append(f"  {key}: {bound}{est['total_seconds']:,.0f} s = {bound}"
                   f"{est['total_hours']:.2f} h (" + ", ".join(
                       f"{m} {v['seconds']:,.0f} s" for m, v in est["models"].items()) + ")")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 2)[2])
  p.add_argument("--out", required=True, help="folder for device_check.json")
  p.add_argument("--quick", action="store_true",
                 help="the same parts, tiny, on any backend (a smoke run)")
  p.add_argument("--budget_s", type=float, default=None,
                 help="seconds for the whole check (default 480; 60 with --quick)")
  p.add_argument("--wheels", default=str(HERE / "wheels"),
                 help="wheels of missing pure-Python packages (benchmarks/fetch_wheels.sh)")
  args = p.parse_args(argv)
  budget = args.budget_s or (60.0 if args.quick else 480.0)
  flags = os.environ.get("XLA_FLAGS", "")
  if args.quick and "xla_backend_optimization_level" not in flags:
    # A smoke run's numbers mean nothing and compiling is most of its time: LLVM's
    # optimization of XLA's CPU code off halves it (read when jax starts, below).
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
  start = time.perf_counter()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  scratch = tempfile.TemporaryDirectory(prefix="zhang-device-check-")
  installed = install_missing(pathlib.Path(args.wheels), pathlib.Path(scratch.name) / "site")

  sys.path.insert(0, str(HERE))
  import estimate_fig1b  # noqa: E402  (this folder's scripts)
  import throughput  # noqa: E402

  from zhang.experiment import models
  from zhang.runtime import plan as plan_lib  # noqa: E402

  env = machine()
  print(json.dumps(env), flush=True)
  if env["backend"] == "cpu" and not args.quick:
    print("device_check.py: jax sees no accelerator (backend cpu); the check is for a GPU or "
          "TPU machine. On CPU: benchmarks/device_check.py --quick --out DIR", file=sys.stderr)
    return 2
  result_file = out / "device_check.json"
  result = dict(machine=env, quick=args.quick, budget_s=budget, installed=installed,
                plans={m: str(plan_lib.choose(m, 33)) for m in estimate_fig1b.MODELS
                       if m in models.names()},
                parts={}, throughput=[], fig1=None, estimate=None, estimate_unfitted=None,
                seconds=0.0, ok=False)

  def save():
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["ok"] = all(part["ok"] for part in result["parts"].values())
    result_file.write_text(json.dumps(result, indent=1) + "\n")

  def part(name: str, fn) -> None:
    t0 = time.perf_counter()
    print(f"== {name}", flush=True)
    error = None
    try:
      fn()
    except Exception:  # noqa: BLE001 - one part's failure is reported, the next one runs
      error = traceback.format_exc()
      print(error, file=sys.stderr, flush=True)
    result["parts"][name] = dict(ok=error is None, error=error,
                                 seconds=round(time.perf_counter() - t0, 1))
    save()

  def share(name: str) -> float:
    left = budget - (time.perf_counter() - start)
    return max(1.0, min(SHARES[name] * budget, left))

  for model in ("mlp_1x512", "inception_small", "alexnet_small"):
    name = f"throughput {model}"

    def measure(model=model, name=name):
      targs = throughput.parse(throughput_argv(model, args.quick, share(name)))
      for row in throughput.rows(targs):
        print(json.dumps(row), flush=True)
        result["throughput"].append(row)
        save()
    part(name, measure)

  summary_file = pathlib.Path(scratch.name) / "fig1" / "summary.json"

  def fig1():
    spec, sets, config = fig1_config(args.quick)
    summary = train_within(config, summary_file.parent, share("fig1"))
    result["fig1"] = short_run(summary, spec, sets)
  part("fig1", fig1)

  def estimates():
    cost = []
    if summary_file.exists() and (json.loads(summary_file.read_text()).get("timing") or {}
                                  ).get("eval_cost") is not None:
      cost = ["--eval_cost_from", str(summary_file)]
    for key, steps, source in (("estimate", FIT_STEPS, FIT_SOURCE),
                               ("estimate_unfitted", UNFITTED_STEPS, UNFITTED_SOURCE)):
      a = estimate_fig1b.parse([str(result_file), "--fit_steps", steps, "--fit_source",
                                source, *cost])
      result[key] = short_estimate(estimate_fig1b.compute(a))
  part("estimate", estimates)

  scratch.cleanup()
  print(report(result), flush=True)
  print(f"results: {result_file}")
  return 0 if result["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
