"""Orbax checkpoints of a whole grid: the stacked train state plus the run's bookkeeping.

``Checkpointer`` is used by the trainer: asynchronous saves (the step loop waits only for
the device-to-host copy), the last ``keep`` kept, called on every process (Orbax
coordinates multi-host writes), restored straight into the shardings of a target state.
A checkpoint that cannot be read (a write cut off, a file removed) is reported and the
previous one is tried. ``load`` reads any saved step for a notebook, on CPU, without the
training loop.

Layout: ``WORKDIR/checkpoints/<step>/{state,meta}``; ``meta`` is JSON (fit bookkeeping,
the last evaluation, the config's hash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zhang.errors import RunError, UsageError
from zhang.metrics import workdir_path

DIRNAME = "checkpoints"


def config_hash(config_dict: dict) -> str:
  return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:16]


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(f"zhang: {message}", file=sys.stderr, flush=True)


class Checkpointer:
  """Saves and restores ``(state, meta)`` under ``workdir/checkpoints``."""

  def __init__(self, workdir, keep: int = 3):
    self.directory = workdir_path(workdir) / DIRNAME
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    """Starts an asynchronous save; raises RunError if the previous one failed."""
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # noqa: BLE001 - Orbax surfaces async failures here
      raise self._error(step, e) from None

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._error(None, e) from None

  def _error(self, step, e: Exception) -> RunError:
    what = f"step {step} (or an earlier one still being written)" if step is not None else (
        "the last step")
    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    if "No space left" in str(e):
      reason = "no space left on device"
    good = self.steps()
    return RunError(f"could not write the checkpoint of {what} in {self.directory} "
                    f"({reason[:200]}); earlier checkpoints {good or 'none'} are intact: "
                    f"free space or fix the path, then rerun the same command to resume")

  def restore_latest(self, target) -> tuple[int, Any, dict] | None:
    """The newest readable checkpoint as (step, state, meta), or None if there is none.

    ``target`` is a pytree of arrays or ShapeDtypeStructs with shardings; the state is
    restored into those shardings. Raises UsageError when checkpoints exist but none can
    be read (rather than silently starting over).
    """
    steps = self.steps()
    if not steps:
      return None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    failures = []
    for step in reversed(steps):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        _check_finite_structure(restored.state, abstract)
        if failures:
          # The resumed run rewrites these steps, bit for bit, so nothing is lost.
          for bad in failures:
            self._manager.delete(bad)
          _say(f"removed unreadable checkpoint(s) {', '.join(map(str, failures))}; resuming "
               f"from the previous good checkpoint, step {step}")
        return step, restored.state, restored.meta
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        _say(f"checkpoint {self.directory / str(step)} is unreadable ({reason})")
        failures.append(step)
    raise UsageError(f"no readable checkpoint in {self.directory} (tried steps "
                     f"{', '.join(map(str, failures))}): pass --restart to start over")

  def close(self) -> None:
    self._manager.close()


def _check_finite_structure(state, abstract) -> None:
  got = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
  if got != want:
    raise ValueError("restored arrays do not match the state's shapes")


def load(workdir, step: int | None = None) -> dict:
  """Loads a saved step of a run (the latest if ``step`` is None) as numpy, on CPU.

  Returns ``{"step", "params", "batch_stats", "opt_state", "meta"}`` (``opt_state``: the
  optimizer's state, the momentum trace); every array has the replica axis first
  (``summary.json``'s ``replica`` indexes it).
  """
  directory = workdir_path(workdir) / DIRNAME
  if not directory.is_dir():
    raise UsageError(f"{workdir} has no checkpoints/ folder: is it a run's workdir?")
  logging.getLogger("absl").setLevel(logging.ERROR)
  with ocp.CheckpointManager(directory) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise UsageError(f"{directory} holds no complete checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise UsageError(f"no checkpoint of step {step} in {directory}: saved steps are "
                       f"{', '.join(map(str, steps))}")
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    # The tree's shapes from the PyTree handler: the manager's own metadata rebuilds the saved
    # shardings, which fails where the run had more devices than this process.
    shapes = ocp.PyTreeCheckpointer().metadata(directory / str(step) / "state")
    shapes = getattr(shapes, "item_metadata", shapes)
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), shapes,
        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state
  state = jax.tree.map(np.asarray, state)
  params, batch_stats, opt_state = (state[k] if isinstance(state, dict) else state[i]
                                    for i, k in enumerate(("params", "batch_stats",
                                                            "opt_state")))
  return dict(step=step, params=params, batch_stats=batch_stats, opt_state=opt_state,
              meta=meta)
