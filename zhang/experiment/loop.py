"""The training loop of one run (``run_loop``): compiled train calls of about ``CALL_SECONDS``
each (``CallSizer``), an evaluation of every replica every ``eval_every`` steps, checkpoints
with ``fit_times.npz``, and SIGTERM or Ctrl-C answered with a checkpoint at the end of the
call in flight (``_preemption_notice``). ``train.run`` builds what it works with (``Run``).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from zhang.experiment import evaluate as evaluate_lib
from zhang.experiment import feed as feed_lib
from zhang.experiment import program as program_lib
from zhang.experiment import resume as resume_lib
from zhang.experiment import step as step_lib
from zhang.rundir import checkpoint as checkpoint_lib
from zhang.rundir import metrics as metrics_lib
from zhang.rundir import progress as progress_lib


class Run(NamedTuple):
  """What the training loop works with and does not replace: the grid's program, data and
  constants, and the run's bookkeeping and files."""
  config: ml_collections.ConfigDict
  replicas: list
  workdir: Any
  program: program_lib.GridProgram
  d: step_lib.DeviceDataset
  reps: step_lib.ReplicaConstants
  noisy: np.ndarray  # whether the corruption changed each example's label (fit_times.npz)
  book: metrics_lib.Bookkeeping
  ckpt: checkpoint_lib.Checkpointer
  writer: metrics_lib.Writer
  show: progress_lib.Progress
  start: float  # time.time() when ``run`` was called
  feed: Any = None  # the streaming path's batches (``config.stream``), else None
  streamed: Any = None  # a host-streamed dataset, evaluated as streamed; None: on the device


def run_loop(run: Run, states, fit_since, step: int, saved_step: int | None) -> dict:
  """Alternates evaluations with train calls up to the next evaluation or checkpoint,
  until every replica has fitted (``stop_at_fit``), ``max_steps``, or a preemption notice
  (SIGTERM, answered within one call plus a save). Returns the final summary."""
  c, book = run.config, run.book
  # Each replica's minibatch losses since the last evaluation, summed on the device.
  loss_sum = jnp.asarray(book.losses.total)
  sizer = CallSizer()
  evaluate_now = saved_step is None
  # The step of the last evaluation (fit_times.npz's), which a resumed run does not repeat.
  last_eval = max((row["step"] for row in book.fits.last_rows), default=0)
  with _preemption_notice() as preempted:
    while True:
      if evaluate_now:
        fit_since = _evaluate(run, states, fit_since, step)
        loss_sum, last_eval = jnp.zeros_like(loss_sum), step
      done = (c.stop_at_fit and book.fits.all_fitted()) or step >= c.max_steps
      end = done or preempted()
      saved_step = _record(run, step, states, fit_since, last_eval, evaluate_now, end,
                           saved_step)
      if end:
        run.ckpt.wait()  # "complete" or "preempted" only once the checkpoint is on disk
        final = book.summary(step, "complete" if done else "preempted",
                             time.time() - run.start)
        run.writer.summary(final)
        if not done and jax.process_index() == 0:
          how = ("interrupted (Ctrl-C)" if getattr(preempted, "signals", [None])[0] == "SIGINT"
                 else "preempted (SIGTERM)")
          print(f"zhang: {how} at step {step}; the checkpoint is saved. Run the same command "
                f"to resume.", file=sys.stderr)
        return final
      states, loss_sum, n = _train_call(run, sizer, states, loss_sum, step)
      step += n
      evaluate_now = step % c.eval_every == 0 or step == c.max_steps


def _evaluate(run: Run, states, fit_since, step: int):
  """Evaluates every replica at ``step``: its rows written, its fits and the examples'
  fit steps updated (returned), the loss sums started again."""
  c, book = run.config, run.book
  t0 = time.perf_counter()
  if run.streamed is not None:
    ds = run.streamed
    ev, hits = feed_lib.evaluate(run.program, states, run.reps, run.d, ds.eval_source(),
                                 ds.test, c.eval_batch_size, run.reps.learning_rate.sharding.mesh,
                                 ds.eval_transform)
    fit_since = _track(fit_since, hits, jnp.asarray(step, jnp.int32))
  else:
    ev, fit_since = run.program.evaluate_and_track(states, run.reps, run.d, fit_since,
                                                   jnp.asarray(step, jnp.int32))
  ev = jax.device_get(ev)
  book.timing.time_call("eval", time.perf_counter() - t0)
  base_lr = np.asarray([r.learning_rate for r in run.replicas], np.float32)
  lr = np.asarray(step_lib.learning_rate_at(step, base_lr, c.lr_decay, c.lr_decay_every))
  run.writer.rows(book.fits.record(step, ev, lr, book.losses.mean))
  book.losses.reset()
  return fit_since


@functools.partial(jax.jit, donate_argnums=(0,))
def _track(fit_since, hits, step):
  return evaluate_lib.track_fits(fit_since, hits, step)


def _record(run: Run, step: int, states, fit_since, last_eval: int, evaluated: bool,
            end: bool, saved_step: int | None) -> int | None:
  """After an evaluation or at the run's ``end``: the summary, a checkpoint when one is
  due (every ``checkpoint_every`` steps and at the end), fit_times.npz with it, and the
  progress line. Returns the step of the last checkpoint."""
  c, book = run.config, run.book
  at_checkpoint = step % c.checkpoint_every == 0 and step > 0
  save = (at_checkpoint or end) and step != saved_step
  if evaluated or save:
    run.writer.summary(book.summary(step, "running", time.time() - run.start))
  if save:
    meta = book.meta(time.time() - run.start)
    if run.feed is not None:  # where the stream resumes (it is a function of the step)
      meta["stream"] = run.feed.state(step)
    run.ckpt.save(step, states, meta, fit_times=fit_since)
    saved_step = step
  if save or end:  # at the end, a file that does not agree with the state is rewritten
    write_fit_times(run.workdir, fit_since, run.noisy, len(run.replicas), last_eval,
                     only_if_changed=not save)
  if evaluated or end:
    run.show.update(step, book.fits, final=end)
  return saved_step


def _train_call(run: Run, sizer: "CallSizer", states, loss_sum, step: int):
  """One compiled call of the train chunk, toward the next evaluation or checkpoint, about
  ``CALL_SECONDS`` long; returns (states, loss sum, steps taken)."""
  c = run.config
  stop = min(_next_multiple(step, c.eval_every), _next_multiple(step, c.checkpoint_every),
             c.max_steps)
  n = sizer.steps(stop - step)
  if jax.process_count() > 1:  # every process must run the same calls: process 0's pace
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(n, np.int32)))
  frozen = ()
  if run.program.settings.freeze:
    frozen = (jnp.asarray(frozen_replicas(run.book.fits, run.reps.labels.shape[0])),)
  t0 = time.perf_counter()
  if run.feed is not None:
    n = min(n, run.feed.capacity)
    states, loss_sum = run.program.stream_chunk(
        states, run.reps, run.d, run.feed.next(n), jnp.asarray(step, jnp.int32),
        jnp.asarray(n, jnp.int32), loss_sum, *frozen)
    run.feed.prepare()  # the next call's batches, while this one runs
  else:
    states, loss_sum = run.program.train_chunk(states, run.reps, run.d,
                                               jnp.asarray(step, jnp.int32),
                                               jnp.asarray(n, jnp.int32), loss_sum, *frozen)
  run.book.losses.add(loss_sum, n)  # waits for the call
  seconds = time.perf_counter() - t0
  run.book.timing.time_call("train", seconds, n)
  sizer.timed(n, seconds)
  run.ckpt.poll()  # a save that failed in the background, reported as soon as known
  return states, loss_sum, n


def frozen_replicas(fits: metrics_lib.Fits, padded: int) -> np.ndarray:
  """``freeze_at_fit``'s mask, (padded,) bool: the replicas that have fitted (``fits``'
  ``fit_step``), not the mesh's padding. It is derived, not saved: a checkpoint's meta holds
  the fit steps, so a resumed run freezes the same replicas from its first step."""
  mask = np.zeros(padded, bool)
  mask[:len(fits.fit_step)] = [f is not None for f in fits.fit_step]
  return mask


def to_host(x) -> np.ndarray:
  """A per-replica array on the host, whole (every process takes part in gathering it when
  the replicas are spread over several)."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def write_fit_times(workdir, fit_since, noisy, num_replicas: int, step: int,
                     only_if_changed: bool = False) -> None:
  """``fit_times.npz`` from the devices' per-example fit steps (process 0 writes);
  ``only_if_changed``: not when the file already holds them."""
  fit = to_host(fit_since)
  if only_if_changed and resume_lib.fit_times_agree(workdir, fit[:num_replicas], step):
    return
  if jax.process_index() == 0:
    metrics_lib.write_fit_times(workdir, fit[:num_replicas], noisy[:num_replicas], step)


CALL_SECONDS = 2.0  # the longest a train call should take: the answer time to a SIGTERM


class CallSizer:
  """How many steps the next train call runs: one (it compiles), one (to time a step: a
  conv-net grid on a CPU takes tens of seconds per step), then as many as take about
  ``CALL_SECONDS`` by the last call's pace. Results do not depend on it (the losses are
  summed across calls in the same order)."""

  def __init__(self):
    self.calls, self.seconds_per_step = 0, None

  def steps(self, remaining: int) -> int:
    if self.seconds_per_step is None:
      want = 1
    else:
      want = max(1, int(CALL_SECONDS / max(self.seconds_per_step, 1e-9)))
    return max(1, min(remaining, want))

  def timed(self, steps: int, seconds: float) -> None:
    if self.calls > 0:  # the first call compiles
      self.seconds_per_step = seconds / steps
    self.calls += 1


def _next_multiple(step: int, every: int) -> int:
  return (step // every + 1) * every


def sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def _preemption_notice():
  """Turns SIGTERM (Cloud TPU VMs' preemption notice) and a first SIGINT (Ctrl-C) into a
  flag the loop polls; a second SIGINT raises KeyboardInterrupt at once (the run then
  resumes from its last checkpoint).

  With several processes the flag is OR-ed over all of them, so every process stops at the
  same chunk boundary even when the notices arrive at different moments.
  """
  flag = []  # the signals received, in order

  def preempted() -> bool:
    if jax.process_count() == 1:
      return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))

  def interrupted(*_):
    if flag and flag[-1] == "SIGINT":
      raise KeyboardInterrupt
    flag.append("SIGINT")
    if jax.process_index() == 0:
      print("zhang: interrupted (Ctrl-C): saving a checkpoint at the end of the train call in "
            "flight; Ctrl-C again stops at once", file=sys.stderr, flush=True)

  if threading.current_thread() is not threading.main_thread():
    yield preempted
    return
  preempted.signals = flag
  previous = (signal.signal(signal.SIGTERM, lambda *_: flag.append("SIGTERM")),
              signal.signal(signal.SIGINT, interrupted))
  try:
    yield preempted
  finally:
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])
