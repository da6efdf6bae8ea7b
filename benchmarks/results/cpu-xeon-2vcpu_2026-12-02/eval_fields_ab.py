"""The evaluation (program.evaluate) of a config's grid, median seconds over N calls after two
compiling ones; run from a worktree of each commit (PYTHONPATH=that worktree) to A/B them.

  python eval_fields_ab.py configs/digits.py 15
"""
import sys, time, statistics, jax
from zhang import config as C, train, data
c = C.resolve(C.load(sys.argv[1]))
reps = C.expand_grid(c)
ds = data.load(c.dataset).subset(c.n_train or None, c.n_test or None)
prog, d, r, st, _ = train.build(c, reps, ds)
f = lambda: jax.block_until_ready(prog.evaluate(st, r, d))
f(); f()
ts = []
for _ in range(int(sys.argv[2])):
  t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
print(statistics.median(ts))
