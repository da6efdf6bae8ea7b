"""What a run's workdir already holds: a complete run whose files agree with its final
checkpoint (``finished_summary``: nothing to train), files of a complete run that do not
(``damaged_files``: restored from the checkpoint), and the checkpoint a run resumes from
(``resume``), with the rows of metrics.jsonl it must find (``check_rows``).
"""

from __future__ import annotations

import io
import json
import sys

import jax
import numpy as np

from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.rundir import checkpoint as checkpoint_lib
from zhang.rundir import format as format_lib
from zhang.rundir import metrics as metrics_lib


def finished_summary(config, workdir) -> dict | None:
  """The summary of a run that is complete in ``workdir`` (its summary says so and its last
  checkpoint, read back whole, is the summary's step), else None. Compiles nothing. One
  process only: a multi-host run resumes its finished state through the training loop."""
  if jax.process_count() > 1 or not (workdir / metrics_lib.SUMMARY).exists():
    return None
  try:
    summary = format_lib.read_summary(workdir)
  except UsageError:
    return None  # damaged: the run resumes from its checkpoint and writes it again
  if (summary.get("status") != "complete"
      or not (workdir / checkpoint_lib.DIRNAME).is_dir()):
    return None
  latest = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, create=False)
  try:
    found = latest.latest_meta(metrics_lib.META_FIELDS, fit_times=True)
  finally:
    latest.close()
  config_hash = checkpoint_lib.config_hash(config_lib.identity(config))
  if (found is None or found[0] != summary.get("steps_run")
      or found[1].get("config_hash") != config_hash
      or summary.get("config_hash") != config_hash):
    return None
  damaged = damaged_files(workdir, config, *found)
  if damaged:
    # The training loop resumes from the final checkpoint, trains nothing, and rewrites
    # what the checkpoint holds (``check_rows``, ``_record``).
    print(f"zhang: the run in {workdir} is complete but its {' and '.join(damaged)} "
          f"{'is' if len(damaged) == 1 else 'are'} damaged or missing; restoring from the "
          f"checkpoint of step {found[0]}", file=sys.stderr)
    return None
  if jax.process_index() == 0:
    fitted = sum(r.get("fit_step") is not None for r in summary.get("replicas", []))
    print(f"zhang: the run in {workdir} is complete ({fitted}/{len(summary['replicas'])} "
          f"replicas fitted, {found[0]} steps); nothing to do (--restart trains it again)",
          file=sys.stderr)
  return dict(summary, already_complete=True)


def damaged_files(workdir, config, step: int, meta: dict, fit) -> list[str]:
  """Which of a complete run's files do not agree with its final checkpoint (of ``step``,
  with its ``meta`` and fit steps ``fit``): metrics.jsonl with a line that does not read or
  without a row of an evaluation, fit_times.npz unreadable or other than the checkpoint's."""
  damaged = []
  num_replicas = len(config_lib.expand_grid(config))
  try:
    keys = set()
    for line in (workdir / metrics_lib.METRICS).read_text().splitlines():
      row = json.loads(line)
      keys.add((row["step"], row["replica"]))
    if any((s, r) not in keys for s in evaluation_steps(config, step)
           for r in range(num_replicas)):
      raise ValueError("a row is missing")
  except (OSError, ValueError, KeyError, TypeError):
    damaged.append(metrics_lib.METRICS)
  last_eval = max((row["step"] for row in meta["last_rows"]), default=0)
  if not fit_times_agree(workdir, fit[:num_replicas], last_eval):
    damaged.append(metrics_lib.FIT_TIMES)
  return damaged


def fit_times_agree(workdir, fit_step, step: int) -> bool:
  """Whether fit_times.npz reads back with these fit steps of the evaluation ``step``."""
  try:
    with np.load(io.BytesIO((workdir / metrics_lib.FIT_TIMES).read_bytes())) as f:
      return (np.array_equal(f["fit_step"], fit_step) and f["noisy"].shape == fit_step.shape
              and int(f["step"]) == step)
  except Exception:  # noqa: BLE001 - any file that does not read back is damaged
    return False


def resume(ckpt, book, states, fit_since, workdir, config):
  """(step, state, fit times) of the latest readable checkpoint, its bookkeeping taken up
  into ``book``; None without a checkpoint. Refuses one of another config, or a streaming
  run's whose stream state is not its step's."""
  restored = ckpt.restore_latest(states, fit_since, metrics_lib.META_FIELDS)
  if not restored:
    return None
  step, (states, fit_since), meta = restored
  if meta["config_hash"] != book.header["config_hash"]:
    raise UsageError(f"the checkpoint of step {step} in {ckpt.directory} was written by "
                     f"another config: start over with `restart`")
  if config.get("stream", False):
    saved = meta.get("stream") or {}
    if saved.get("next_step") != step:
      raise UsageError(f"the checkpoint of step {step} in {ckpt.directory} has no stream "
                       f"state of that step ({saved or 'none'}): it is damaged; start over "
                       f"with `restart`")
  book.load(meta)
  if jax.process_index() == 0:
    print(f"zhang: resuming {workdir} from the checkpoint of step {step}"
          f"{_stopped_note(workdir)}", file=sys.stderr)
  return step, states, fit_since


def _stopped_note(workdir) -> str:
  """Said when resuming a run whose summary still says "running": its lock was free (this
  process holds it now), so the process that trained it ended without stopping cleanly."""
  try:
    summary = format_lib.read_summary(workdir)
  except (UsageError, OSError):
    return ""
  if summary.get("status") != "running":
    return ""
  return (f" (its summary said running at step {summary.get('steps_run')}, but no process "
          f"held its lock: the run was killed or its machine stopped)")


def evaluation_steps(config, last: int) -> list[int]:
  """The steps at which a run evaluates, up to ``last``: 0, every ``eval_every``, and
  ``max_steps`` (the loop above)."""
  steps = set(range(0, last + 1, config.eval_every))
  if last >= config.max_steps:
    steps.add(config.max_steps)
  return sorted(s for s in steps if s <= last)


def check_rows(writer, fits, config, replicas, saved_step: int) -> None:
  """On resume: every replica's row at every evaluation up to the checkpoint must be in
  metrics.jsonl. The last evaluation's rows are in the checkpoint and are rewritten; rows
  of earlier evaluations cannot be recomputed, so a missing one is named."""
  have = writer.keys()
  missing = [(s, r.index) for s in evaluation_steps(config, saved_step)
             for r in replicas if (s, r.index) not in have]
  if not missing:
    return
  restorable = {(row["step"], row["replica"]): row for row in fits.last_rows}
  writer.rows([restorable[key] for key in missing if key in restorable])
  lost = [key for key in missing if key not in restorable]
  if lost:
    steps = sorted({s for s, _ in lost})
    shown = ", ".join(map(str, steps[:10])) + (", ..." if len(steps) > 10 else "")
    print(f"zhang: metrics.jsonl lacks {len(lost)} row(s) at step(s) {shown} that the "
          f"checkpoint cannot restore; the run goes on without them (--restart regenerates "
          f"every row)", file=sys.stderr)
  else:
    print(f"zhang: restored {len(missing)} damaged or missing row(s) of metrics.jsonl from "
          f"the checkpoint of step {saved_step}", file=sys.stderr)
