"""A/B: randomize.example_normal (words) vs jax.random.normal, gaussian replicas, in turns."""
import sys, time
import jax, jax.numpy as jnp, numpy as np
from zhang import config as C, data, randomize, train
shape = tuple(int(v) for v in sys.argv[1].split(","))
R = int(sys.argv[2])
c = C.base_config(); c.model = "mlp_1x512"; c.dataset = "digits"; c.learning_rate = 0.01
c.batch_size = 128
c.grid = [dict(kinds=["gaussian"], corruptions=[0.0], seeds=list(range(R)))]
c = C.resolve(c)
rng = np.random.default_rng(0)
n = 1024
ds = data.Dataset("x", rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32),
                  rng.integers(0, 256, (128, *shape), dtype=np.uint8), rng.integers(0, 10, 128).astype(np.int32), 10)
own = randomize.example_normal
variants = {"words": own, "jax_normal": lambda key, shape: jax.random.normal(key, shape)}
built = {}
for name, fn in variants.items():
  randomize.example_normal = fn
  built[name] = train.build(c, C.expand_grid(c), ds)[:4]
  p, d, reps, st = built[name]
  st, l = p.train_chunk(st, reps, d, jnp.asarray(0), jnp.asarray(5)); l.block_until_ready()
  built[name] = (p, d, reps, st)
times = {k: [] for k in variants}
for r in range(6):
  for name in variants:
    p, d, reps, st = built[name]
    t = time.perf_counter()
    st, l = p.train_chunk(st, reps, d, jnp.asarray(0), jnp.asarray(20)); l.block_until_ready()
    times[name].append((time.perf_counter() - t) / 20 * 1e3)
    built[name] = (p, d, reps, st)
print(shape, R, {k: round(float(np.median(v)), 2) for k, v in times.items()})
