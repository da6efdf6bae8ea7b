"""A/B in one process: per-replica traced learning rate and weight decay vs static ones."""
import functools, sys, time
import jax, jax.numpy as jnp, numpy as np
from zhang import config as C, data, step, train
R = int(sys.argv[1]); shape = tuple(int(v) for v in sys.argv[2].split(","))
c = C.base_config(); c.model = "mlp_1x512"; c.dataset = "digits"; c.learning_rate = 0.01
c.grid = [dict(kinds=["labels"], corruptions=[0.0], seeds=list(range(R)))]
c = C.resolve(c)
rng = np.random.default_rng(0); n = 1024
ds = data.Dataset("x", rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32),
                  rng.integers(0, 256, (128, *shape), dtype=np.uint8), rng.integers(0, 10, 128).astype(np.int32), 10)
traced = step.train_step
def static(apply, s, state, x, y, learning_rate, weight_decay, factor):
  # The hyper-parameters as compile-time constants (what the step had before).
  return traced(apply, s, state, x, y, 0.01, 0.0, factor)
built = {}
for name, fn in (("per_replica", traced), ("static", static)):
  step.train_step = fn
  p, d, reps, st = train.build(c, C.expand_grid(c), ds)[:4]
  st, l = p.train_chunk(st, reps, d, jnp.asarray(0), jnp.asarray(5)); l.block_until_ready()
  built[name] = [p, d, reps, st]
step.train_step = traced
times = {k: [] for k in built}
for r in range(int(sys.argv[3]) if len(sys.argv) > 3 else 10):
  for name, b in built.items():
    p, d, reps, st = b
    t = time.perf_counter()
    st, l = p.train_chunk(st, reps, d, jnp.asarray(0), jnp.asarray(50)); l.block_until_ready()
    times[name].append((time.perf_counter() - t) / 50 * 1e3)
    b[3] = st
med = {k: float(np.median(v)) for k, v in times.items()}
ratios = np.array(times["per_replica"]) / np.array(times["static"])
print(f"R={R} input={shape} median ms/step {med}; per-replica/static ratio median {np.median(ratios):.3f} "
      f"[{ratios.min():.3f}, {ratios.max():.3f}]")
