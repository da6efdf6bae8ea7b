"""CPU seconds of each start-up phase of README command 1 for a source tree: python compile_phases.py TREE."""
import sys, time, os
tree = sys.argv[1]; sys.path.insert(0, tree); os.chdir(tree)
t0 = time.process_time(); w0 = time.time()
import jax, jax.numpy as jnp
t_jax = time.process_time()
from zhang import config as C, train, data
t_imp = time.process_time()
c = C.load("configs/digits.py"); c = C.resolve(c); reps_ = C.expand_grid(c)
ds = data.load("digits")
t_data = time.process_time()
program, d, reps, states, _ = train.build(c, reps_, ds)
jax.block_until_ready(states)
t_build = time.process_time()
st, loss = program.train_chunk(states, reps, d, jnp.asarray(0, jnp.int32), jnp.asarray(1, jnp.int32))
jax.block_until_ready(loss)
t_chunk = time.process_time()
ev = jax.device_get(program.evaluate(st, reps, d))
t_eval = time.process_time()
print(f"{tree}: jax {t_jax-t0:.2f} zhang-import {t_imp-t_jax:.2f} data {t_data-t_imp:.2f} build {t_build-t_data:.2f} chunk {t_chunk-t_build:.2f} eval {t_eval-t_chunk:.2f} total {t_eval-t0:.2f}")
