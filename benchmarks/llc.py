"""The SGLD sampler of ``zhang llc`` against the train step, timed in the same process.

  python benchmarks/llc.py                              # the digits grid, 4 chains
  python benchmarks/llc.py --config configs/digits.py --chains 1,4 --steps 300

Prints one JSON object per chain count: the train chunk's replica-steps per second (the
trainer's own ``train_chunk``, the config's grid and batch size) and the sampler's
replica-chain-steps per second (``zhang.probes.llc.estimate.Sampler``'s compiled program: the
same model, inputs and batch size, one SGLD step per chain), each the best of ``--repeats``
timed calls of ``--steps`` steps after a compiling call, alternated so that both see the same
machine load. The parameters are the grid's initial ones (the rate does not depend on them).
One SGLD step is a train step's forward and backward pass plus the Gaussian noise of every
parameter, so ``ratio`` (sampler rate / train rate) near 1 is what it should be where the noise is
cheap against the step; ``noise_share`` is the share of an SGLD step that generating that
noise alone takes (timed apart, the same number of normals; in the step it is made inside the
update's one pass, ``sgld.sgld_step``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from zhang.experiment import config as config_lib
from zhang.experiment import train  # noqa: E402
from zhang.probes import run as run_lib
from zhang.probes.llc import estimate as llc
from zhang.probes.llc import sgld


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--chains", default="4", help="comma-separated chain counts")
  parser.add_argument("--steps", type=int, default=300, help="steps per timed call")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  config = config_lib.resolve(config_lib.load(args.config))
  replicas = config_lib.expand_grid(config)
  dataset = train.load_dataset(config)
  program, d, reps, states, _ = train.build(config, replicas, dataset)
  params = jax.tree.map(jnp.copy, states.params)
  batch_stats = jax.tree.map(jnp.copy, states.batch_stats)
  sampler = llc.Sampler(run_lib.from_config(config))
  r, k = len(replicas), args.steps

  def train_seconds():
    nonlocal states
    t0 = time.perf_counter()
    states, loss = program.train_chunk(states, reps, d, jnp.asarray(0), jnp.asarray(k))
    np.asarray(loss)
    return time.perf_counter() - t0

  # One chain's parameters in pairs (``sgld.pair_leaves``).
  pairs = sum(-(-int(np.prod(p.shape[1:])) // 2) for p in jax.tree.leaves(params))

  for chains in [int(c) for c in args.chains.split(",")]:
    s = llc.Settings(chains=chains, draws=k, burnin=0)
    sgld_seconds = lambda s=s: sampler.sample(params, batch_stats, s)[3]
    # The Gaussian noise of one step of every chain, alone (``sgld.normal_pairs``).
    noise = jax.jit(lambda keys: jax.vmap(lambda key: sgld.normal_pairs(key, pairs))(keys))
    keys = jax.random.split(jax.random.key(0), r * chains)
    jax.block_until_ready(noise(keys))
    compiled = sampler.compile_seconds
    first = (train_seconds(), sgld_seconds())  # compiling calls
    first = (first[0], first[1] + sampler.compile_seconds - compiled)
    times = [(train_seconds(), sgld_seconds()) for _ in range(args.repeats)]
    best_train, best_sgld = min(t for t, _ in times), min(t for _, t in times)
    t0 = time.perf_counter()
    for _ in range(20):
      out = noise(keys)
    jax.block_until_ready(out)
    noise_step = (time.perf_counter() - t0) / 20
    train_rate, sgld_rate = r * k / best_train, r * chains * k / best_sgld
    print(json.dumps(dict(
        model=config.model, dataset=config.dataset, replicas=r, chains=chains,
        batch_size=config.batch_size, steps=k, backend=jax.default_backend(),
        device_kind=jax.devices()[0].device_kind, plan=str(sampler.run.plan),
        train_replica_steps_per_s=round(train_rate, 1),
        sgld_replica_chain_steps_per_s=round(sgld_rate, 1),
        ratio=round(sgld_rate / train_rate, 3),
        noise_share=round(noise_step / (best_sgld / k), 3),
        first_call_s=dict(train=round(first[0], 2), sgld=round(first[1], 2)))), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
