"""`zhang llc` on a run against a plain PyTorch SGLD loop over the same MLPs.

The yardstick is the loop one writes without this project (devinterp's step on one model at
a time): each replica's MLP as a ``torch.nn.Sequential`` of its trained weights, each chain in
turn, a minibatch of the replica's own training set (its labels, its randomized inputs, as
`zhang llc` samples it), ``torch.autograd.grad`` and the step w - eps/2 (n beta grad +
gamma (w - w*)) + sqrt(eps) N(0, 1), the same chains, draws, burn-in, batch, eps, gamma and
n beta as `zhang llc`'s defaults. It needs PyTorch, which the project does not (CPU wheels):

  pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

Two steps. ``export`` (this project's environment) writes what the loop needs to a .npz: each
replica's weights at the run's last checkpoint, its whole training set as `zhang llc` sees it
(randomized, whitened), its labels, and the sampler's settings. ``torch`` (an environment with
PyTorch; it imports neither JAX nor this project) runs the loop and prints one JSON line:
the chain-steps per second and each replica's lambda-hat, to set beside llc.json's.

  python benchmarks/llc_torch.py export runs/digits runs/llc_torch.npz
  python benchmarks/llc_torch.py torch runs/llc_torch.npz --threads 1   # default: every core
  zhang llc runs/digits --out runs/digits_llc_timed --no_plots          # the same chains

Time the last two as whole processes, start-up included, alternated on the same machine
(``/usr/bin/time``, in turn, several times each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np


def export(run_dir: str, out: str) -> None:
  """The run's MLPs (weights at the last checkpoint), each replica's training inputs and
  labels, and `zhang llc`'s default settings, to ``out`` (.npz, written whole or not at all)."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from zhang.experiment import models
  from zhang.probes import run as run_lib
  from zhang.probes.llc import sgld

  run = run_lib.open(run_dir)
  if models.get(run.config.model).family != "mlp" or run.config.get(
      "parameterization", "standard") != "standard":
    raise SystemExit(f"llc_torch: {run.config.model} is not a plain MLP: export takes MLPs "
                     f"of the standard parameterization")
  state = run.state(run.steps[-1])
  s = sgld.Settings()
  arrays = dict(step_size=s.step_size, gamma=s.gamma, chains=s.chains, draws=s.draws,
                burnin=s.burnin, batch_size=run.config.batch_size, step=run.steps[-1])
  for r in run.replicas:
    params, _ = run.variables(state, r)
    layers = [params[name] for name in sorted(params, key=lambda k: int(k.split("_")[-1]))]
    for i, layer in enumerate(layers):
      arrays[f"r{r.index}_kernel{i}"] = np.asarray(layer["kernel"], np.float32)
      arrays[f"r{r.index}_bias{i}"] = np.asarray(layer["bias"], np.float32)
    x = np.asarray(run.inputs(r, run_lib.TRAIN), np.float32)
    arrays[f"r{r.index}_x"] = x.reshape(x.shape[0], -1)
    arrays[f"r{r.index}_y"] = np.asarray(run.labels[r.index], np.int64)
  arrays["replicas"] = len(run.replicas)
  folder = os.path.dirname(os.path.abspath(out))
  with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as f:
    np.savez(f, **arrays)
  os.replace(f.name, out)
  print(f"llc_torch: {len(run.replicas)} replicas of {run.config.model} at step "
        f"{run.steps[-1]} -> {out}")


def _replica(torch, data, r: int):
  """Replica r's MLP (``nn.Sequential``: Linear, ReLU, ..., Linear), inputs and labels."""
  nn = torch.nn
  layers, i = [], 0
  while f"r{r}_kernel{i}" in data:
    kernel, bias = data[f"r{r}_kernel{i}"], data[f"r{r}_bias{i}"]
    linear = nn.Linear(*kernel.shape)
    with torch.no_grad():
      linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
      linear.bias.copy_(torch.from_numpy(bias))
    layers += [linear, nn.ReLU()]
    i += 1
  return (nn.Sequential(*layers[:-1]), torch.from_numpy(data[f"r{r}_x"]),
          torch.from_numpy(data[f"r{r}_y"]))


def chains(torch, model, x, y, s: dict, generator) -> tuple[float, np.ndarray]:
  """L_n(w*) and the loss traces (chains, steps) of SGLD chains from the model's weights."""
  f = torch.nn.functional
  n, m = x.shape[0], s["batch_size"]
  nbeta, steps = n / math.log(n), s["burnin"] + s["draws"]
  w_star = [p.detach().clone() for p in model.parameters()]
  with torch.no_grad():
    init_loss = float(f.cross_entropy(model(x), y))
  traces = torch.empty((s["chains"], steps))
  for c in range(s["chains"]):
    with torch.no_grad():
      for p, p0 in zip(model.parameters(), w_star):
        p.copy_(p0)
    for t in range(steps):
      pos = t % (n // m)
      if pos == 0:  # a fresh order each epoch
        order = torch.randperm(n, generator=generator)
      idx = order[pos * m:(pos + 1) * m]
      loss = f.cross_entropy(model(x[idx]), y[idx])
      grads = torch.autograd.grad(loss, list(model.parameters()))
      with torch.no_grad():
        for p, g, p0 in zip(model.parameters(), grads, w_star):
          noise = torch.randn(p.shape, generator=generator)
          p.add_(-0.5 * s["step_size"] * (nbeta * g + s["gamma"] * (p - p0))
                 + math.sqrt(s["step_size"]) * noise)
      traces[c, t] = loss.detach()
  return init_loss, traces.numpy()


def run_torch(path: str, threads: int | None, seed: int) -> None:
  import torch  # noqa: PLC0415 - only this step needs it
  if threads:
    torch.set_num_threads(threads)
  data = dict(np.load(path))
  s = {k: data[k].item() for k in ("step_size", "gamma", "chains", "draws", "burnin",
                                   "batch_size")}
  generator = torch.Generator().manual_seed(seed)
  start, llcs = time.perf_counter(), []
  for r in range(int(data["replicas"])):
    model, x, y = _replica(torch, data, r)
    init_loss, trace = chains(torch, model, x, y, s, generator)
    nbeta = x.shape[0] / math.log(x.shape[0])
    llcs.append(round(float(nbeta * (trace[:, s["burnin"]:].mean() - init_loss)), 2))
  seconds = time.perf_counter() - start
  steps = int(data["replicas"]) * s["chains"] * (s["burnin"] + s["draws"])
  print(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(),
                        replicas=int(data["replicas"]), **s, sampling_s=round(seconds, 1),
                        chain_steps_per_s=round(steps / seconds, 1), llc=llcs)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  e = sub.add_parser("export", help="the run's MLPs and training sets to a .npz")
  e.add_argument("run")
  e.add_argument("out")
  t = sub.add_parser("torch", help="the PyTorch SGLD loop over an exported .npz")
  t.add_argument("data")
  t.add_argument("--threads", type=int, default=None, help="PyTorch's threads (default: "
                 "its own, every core)")
  t.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.command == "export":
    export(args.run, args.out)
  else:
    run_torch(args.data, args.threads, args.seed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
