"""Orbax checkpoints of a whole grid: the stacked train state plus the run's bookkeeping.

``Checkpointer`` is used by the trainer: asynchronous saves (the step loop waits only for
the device-to-host copy), the last ``keep`` kept, called on every process (Orbax
coordinates multi-host writes), restored straight into the shardings of a target state.
A checkpoint that cannot be read (a write cut off, a file removed) is reported and the
previous one is tried. ``load`` reads any saved step for a notebook, on CPU, without the
training loop.

Layout: ``WORKDIR/checkpoints/<step>/{state,meta,fit_times}``; ``meta`` is JSON (fit
bookkeeping, the last evaluation, the config's hash: ``zhang.rundir.metrics.META_FIELDS``),
``fit_times`` the per-example fit steps. Every item is part of a whole checkpoint: one that
is missing is damage. ``meta`` also holds a checksum of every saved array (``CHECKSUMS``,
computed on the devices before the save): bytes changed on disk after a save read back as
well-formed arrays, and only the checksum tells them from the saved ones.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zhang.errors import RunError, UsageError
from zhang.rundir.metrics import is_local, workdir_path

DIRNAME = "checkpoints"


FIT_TIMES = "fit_times"  # the checkpoint item of the per-example fit steps
CHECKSUMS = "checksums"  # meta's field: {item: sorted checksums of its arrays}


def config_hash(config_dict: dict) -> str:
  return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:16]


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(f"zhang: {message}", file=sys.stderr, flush=True)


class Checkpointer:
  """Saves and restores ``(state, meta)`` under ``workdir/checkpoints``."""

  def __init__(self, workdir, keep: int = 3, create: bool = True):
    self.directory = workdir_path(workdir) / DIRNAME
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self.keep = keep
    self._pending = None  # the step of a save that may still be being written
    self._bytes = None

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, meta: dict, fit_times=None) -> None:
    """Starts an asynchronous save; raises RunError if the disk cannot hold it or if the
    previous save failed. ``fit_times``: the per-example fit steps (an item of its own, so
    ``state`` reads back alike with or without it)."""
    self._check_space(step, state if fit_times is None else (state, fit_times))
    sums = {"state": checksums(state)}
    if fit_times is not None:
      sums[FIT_TIMES] = checksums({"fit_step": fit_times})
    items = dict(state=ocp.args.StandardSave(state),
                 meta=ocp.args.JsonSave(dict(meta, **{CHECKSUMS: sums})))
    if fit_times is not None:
      items[FIT_TIMES] = ocp.args.StandardSave({"fit_step": fit_times})
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # noqa: BLE001 - Orbax surfaces async failures here
      raise self._error(self._pending if self._pending is not None else step, e) from None
    self._pending = step

  def poll(self) -> None:
    """Raises RunError, naming its step, if a save started earlier has failed (cheap:
    waits for nothing)."""
    try:
      self._manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._error(self._pending, e) from None

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._error(self._pending, e) from None
    self._pending = None

  def _check_space(self, step: int, state) -> None:
    """Before a save: is there room for one more checkpoint? (Orbax deletes the oldest of
    the ``keep`` only once the new one is written.)"""
    self._bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    if not is_local(self.directory) or jax.process_index() != 0:
      return
    free = shutil.disk_usage(os.fspath(self._existing_parent())).free
    if free < self._bytes * 1.02 + (256 << 10):
      raise self._error(step, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), free)

  def _existing_parent(self):
    path = self.directory
    while not path.exists():
      path = path.parent
    return path

  def _error(self, step, e: Exception, free: int | None = None) -> RunError:
    what = "the last step" if step is None else f"step {step}"
    if "No space left" in str(e) or getattr(e, "errno", None) == errno.ENOSPC:
      if free is None and is_local(self.directory):
        free = shutil.disk_usage(os.fspath(self._existing_parent())).free
      size = self._bytes or 0
      reason = (f"no space left on device: a checkpoint of this run takes {_mib(size)}, "
                f"{self.keep} are kept ({_mib(size * (self.keep + 1))} while a new one is "
                f"written)" + ("" if free is None else f", {_mib(free)} free"))
    else:
      reason = _reason(e)
    good = self.steps()
    kept = (f"earlier checkpoints {', '.join(map(str, good))} are intact" if good else
            "there is no earlier checkpoint")
    return RunError(f"could not write the checkpoint of {what} in {self.directory} ({reason}); "
                    f"{kept}: free space or fix the path, then rerun the same command to "
                    f"resume")

  def latest_meta(self, meta_fields: tuple[str, ...] = (),
                  fit_times: bool = False) -> tuple[int, dict, Any] | None:
    """(step, meta, fit steps) of the newest checkpoint once it reads back whole (on this
    process's CPU, without the run's program): its arrays, matching their checksums, the fit
    times item with ``fit_times`` (returned as numpy, else None), and every one of
    ``meta_fields``. None if there is none or it is damaged (``restore_latest`` then reports
    it)."""
    steps = self.steps()
    if not steps:
      return None
    items = ("state", FIT_TIMES) if fit_times else ("state",)
    fit = None
    try:
      meta = self._manager.restore(steps[-1], args=ocp.args.Composite(
          meta=ocp.args.JsonRestore())).meta
      for item in items:
        tree = _restore_on_cpu(self._manager, self.directory, steps[-1], item)
        _verify(tree, meta, item)
        if item == FIT_TIMES:
          fit = np.asarray(tree["fit_step"])
    except Exception:  # noqa: BLE001
      return None
    if any(k not in (meta or {}) for k in meta_fields):
      return None
    return steps[-1], meta, fit

  def restore_latest(self, target, fit_times=None,
                     meta_fields: tuple[str, ...] = ()) -> tuple[int, Any, dict] | None:
    """The newest readable checkpoint as (step, state, meta), or None if there is none.

    ``target`` is a pytree of arrays or ShapeDtypeStructs with shardings; the state is
    restored into those shardings. With ``fit_times`` (an array of the same kind), it
    returns (step, (state, fit times), meta). A checkpoint counts as readable only whole: its
    arrays of the target's shapes, the fit times item when asked for, every one of
    ``meta_fields`` in its meta; one that is not is reported, and the previous one is tried.
    Raises UsageError when checkpoints exist but none can be read (rather than silently
    starting over).
    """
    steps = self.steps()
    if not steps:
      return None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    fit_abstract = None if fit_times is None else {"fit_step": jax.ShapeDtypeStruct(
        fit_times.shape, fit_times.dtype, sharding=fit_times.sharding)}
    failures = []
    for step in reversed(steps):
      try:
        restored = self._restore_whole(step, abstract, fit_abstract, meta_fields)
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
        _say(f"checkpoint {self.directory / str(step)} is unreadable ({_reason(e)})")
        failures.append(step)
        continue
      if failures:
        # The resumed run rewrites these steps, bit for bit, so nothing is lost.
        for bad in failures:
          self._manager.delete(bad)
        _say(f"removed unreadable checkpoint(s) {', '.join(map(str, failures))}; resuming "
             f"from the previous good checkpoint, step {step}")
      if fit_abstract is not None:
        return step, (restored.state, restored[FIT_TIMES]["fit_step"]), restored.meta
      return step, restored.state, restored.meta
    raise UsageError(f"no readable checkpoint in {self.directory} (tried steps "
                     f"{', '.join(map(str, failures))}): start over with `restart`")

  def _restore_whole(self, step: int, abstract, fit_abstract, meta_fields):
    """Step ``step``'s items, checked whole (``restore_latest``); raises if one is missing
    or does not match: a missing item is damage, like a truncated file."""
    items = dict(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    if fit_abstract is not None:
      if not (self.directory / str(step) / FIT_TIMES).exists():
        raise ValueError(f"its {FIT_TIMES} item is missing")
      items[FIT_TIMES] = ocp.args.StandardRestore(fit_abstract)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    _check_finite_structure(restored.state, abstract)
    _verify(restored.state, restored.meta, "state")
    if fit_abstract is not None:
      _check_finite_structure(restored[FIT_TIMES], fit_abstract)
      _verify(restored[FIT_TIMES], restored.meta, FIT_TIMES)
    lacking = [k for k in meta_fields if k not in (restored.meta or {})]
    if lacking:
      raise ValueError(f"its meta lacks {', '.join(lacking)}")
    return restored

  def close(self) -> None:
    """Closes the manager; a save's failure was reported by ``save``/``wait``/``poll`` (or
    is in the library log), so none is raised here."""
    try:
      self._manager.close()
    except Exception:  # noqa: BLE001
      logging.getLogger("absl").exception("closing the checkpoint manager")


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f} MiB"


def _reason(e: BaseException) -> str:
  """A library exception as a short reason: the innermost cause's last meaningful line,
  without object reprs."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  text = lines[-1] if lines else type(e).__name__
  # TensorStore: 'CODE: Error reading "key" in OCDBT database at local file "...": ...: why'
  store = re.match(r'([A-Z_]+): Error (?:reading|opening) .*?"([^"]+)"', text)
  if store:
    text = f"{store.group(1)} reading {store.group(2)}: {text.rsplit(': ', 1)[-1]}"
  text = re.sub(r"\s*\[\w+(?:\[\d+\])?=.*$", "", text)  # a TensorStore spec dump
  text = re.sub(r"<[^<>]*(?:>|$)", "", text).strip(" :;,") or type(e).__name__
  if len(text) > 160:
    text = text[:157] + "..."
  return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


def _check_finite_structure(state, abstract) -> None:
  got = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
  if got != want:
    raise ValueError("restored arrays do not match the state's shapes")


def checksums(tree) -> list[str]:
  """A checksum of each array of ``tree``, sorted (so trees restored as another container
  type compare alike), computed where the arrays are: each array's 32-bit words summed with
  two sets of odd position weights, modulo 2**32 (any change of one word changes both sums)."""
  leaves = jax.tree.leaves(tree)
  sums = jax.device_get(_checksum_program(leaves))
  return sorted(f"{int(a):08x}{int(b):08x}" for a, b in sums)


@jax.jit
def _checksum_program(leaves):
  return [_array_checksum(x) for x in leaves]


def _array_checksum(x):
  x = jax.numpy.asarray(x)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == bool:
    x = x.astype(np.uint8)
  if x.dtype.itemsize < 4:
    words = jax.lax.bitcast_convert_type(x, np.dtype(f"uint{8 * x.dtype.itemsize}"))
    words = words.astype(np.uint32)
  else:  # 8-byte words become pairs of 32-bit words
    words = jax.lax.bitcast_convert_type(x, np.uint32)
  words = words.reshape(-1)
  i = jax.lax.iota(np.uint32, words.size)
  first = jax.numpy.sum(words * (i * np.uint32(2654435761) | np.uint32(1)), dtype=np.uint32)
  second = jax.numpy.sum((words ^ (i * np.uint32(40503))) * (i * np.uint32(2246822519)
                                                            + np.uint32(1) | np.uint32(1)),
                         dtype=np.uint32)
  return jax.numpy.stack([first, second])


def _verify(tree, meta: dict | None, item: str) -> None:
  """Raises if ``tree``'s arrays do not have the checksums saved with them in ``meta`` (a
  meta without them is damaged too: every checkpoint is saved with them)."""
  saved = ((meta or {}).get(CHECKSUMS) or {}).get(item)
  if saved is None:
    raise ValueError(f"its meta has no checksums of its {item} arrays: it is damaged")
  if checksums(tree) != list(saved):
    raise ValueError(f"its {item} arrays do not match the checksums saved with them: the "
                     f"files were changed after the save")


def _restore_on_cpu(manager, directory, step: int, item: str = "state"):
  """A saved item (the state) as arrays on this process's CPU, whatever devices wrote it."""
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  # The tree's shapes from the PyTree handler: the manager's own metadata rebuilds the saved
  # shardings, which fails where the run had more devices than this process.
  shapes = ocp.PyTreeCheckpointer().metadata(directory / str(step) / item)
  shapes = getattr(shapes, "item_metadata", shapes)
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), shapes,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  return getattr(manager.restore(step, args=ocp.args.Composite(
      **{item: ocp.args.StandardRestore(abstract)})), item)


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
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    state = _restore_on_cpu(manager, directory, step)
  state = jax.tree.map(np.asarray, state)
  params, batch_stats, opt_state = (state[k] if isinstance(state, dict) else state[i]
                                    for i, k in enumerate(("params", "batch_stats",
                                                            "opt_state")))
  return dict(step=step, params=params, batch_stats=batch_stats, opt_state=opt_state,
              meta=meta)
