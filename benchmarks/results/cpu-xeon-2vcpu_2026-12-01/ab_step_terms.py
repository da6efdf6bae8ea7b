"""A/B in one process on the digits grid: the step as is, without the weight-decay term, and
with static learning rate and weight decay."""
import sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from zhang import config as C, data, step, train
c = C.resolve(C.load("configs/digits.py"))
ds = data.load("digits")
reps_ = C.expand_grid(c)
orig_opt, orig_step = step.optimizer, step.train_step
def no_wd(weight_decay, momentum):
  return optax.chain(optax.trace(decay=momentum))
def static(apply, s, state, x, y, lr, wd, f):
  return orig_step(apply, s, state, x, y, 0.01, 0.0, f)
variants = {"as_is": (orig_opt, orig_step), "no_wd_term": (no_wd, orig_step),
            "static_lr_wd": (orig_opt, static)}
built = {}
for name, (opt, st_fn) in variants.items():
  step.optimizer, step.train_step = opt, st_fn
  p, d, reps, st = train.build(c, reps_, ds)[:4]
  st, l = p.train_chunk(st, reps, d, jnp.asarray(0), jnp.asarray(100)); l.block_until_ready()
  built[name] = [p, d, reps, st]
times = {k: [] for k in built}
for r in range(int(sys.argv[1])):
  for name, b in built.items():
    p, d, reps, st = b
    t = time.perf_counter()
    st, l = p.train_chunk(st, reps, d, jnp.asarray(100), jnp.asarray(100)); l.block_until_ready()
    times[name].append((time.perf_counter() - t) * 10)
    b[3] = st
base = np.array(times["as_is"])
for k, v in times.items():
  print(k, f"median {np.median(v):.3f} ms/step", f"ratio to as_is {np.median(np.array(v) / base):.3f}")
