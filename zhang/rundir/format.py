"""The run-file format: its version, and the one place that reads config.json and summary.json.

Both files carry a top-level ``format``, the version of the layout they and the rest of the
run directory (metrics.jsonl, fit_times.npz, checkpoints/) were written in. A reader goes
through ``read_config`` / ``read_summary``, which return the current format's fields or
refuse in one line; no other code guesses an older layout from a missing field. A change to
the run files that an older reader would misread bumps ``FORMAT``; where the older files can
still be read, ``_migrate`` converts them, else they are refused there.

No jax here: ``zhang.analysis`` reads runs with it on a machine without an accelerator stack.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

from zhang.errors import UsageError

FORMAT = 1  # the run-file format this code writes and reads
FIELD = "format"  # config.json's and summary.json's top-level field that holds it

# The files of a run directory (beside checkpoints/).
CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
FIT_TIMES = "fit_times.npz"  # per-example fit steps (``zhang.rundir.metrics.write_fit_times``)
RUN_FILES = (CONFIG, METRICS, SUMMARY, FIT_TIMES)


def stamped(fields: dict) -> dict:
  """``fields`` as a run file of this format writes them: ``format`` first."""
  return {FIELD: FORMAT, **{k: v for k, v in fields.items() if k != FIELD}}


def read_config(workdir) -> dict:
  """A run's (or a study's) config.json as a dict of config fields, without ``format``.

  Raises UsageError (one line) when the file is missing, unreadable, or of another format.
  """
  return _read(workdir, CONFIG)


def read_summary(workdir) -> dict:
  """A run's (or a study's) summary.json as a dict, without ``format``; UsageError (one
  line) when it is missing, unreadable, or of another format."""
  return _read(workdir, SUMMARY)


def version(fields: dict) -> int:
  """The format a run file's fields were written in; 0: before files carried one."""
  found = fields.get(FIELD, 0)
  return found if isinstance(found, int) and not isinstance(found, bool) else -1


def _read(workdir, name: str) -> dict:
  path = epath.Path(os.fspath(workdir)) / name
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise UsageError(f"{path} is missing: pass the workdir of a run of `zhang train`") from None
  except OSError as e:
    raise UsageError(f"{path} is unreadable ({e.strerror or type(e).__name__})") from None
  try:
    fields = json.loads(text)
  except ValueError as e:
    raise UsageError(f"{path} is not valid JSON ({getattr(e, 'msg', e)}): the run's files "
                     f"are damaged; rerun `zhang train --restart` to write them again") from None
  if not isinstance(fields, dict):
    raise UsageError(f"{path} holds {type(fields).__name__}, not an object: it was not "
                     f"written by `zhang train`")
  return _migrate(path, fields)


def _migrate(path, fields: dict) -> dict[str, Any]:
  """A run file's fields in the current format, without ``format``, or UsageError naming
  the version found. Every run file of an older format that this code still reads is
  converted here and only here; today none is."""
  found = version(fields)
  if found != FORMAT:
    raise UsageError(f"{path} is in run-file format {_describe(found, fields)}, and this "
                     f"zhang reads format {FORMAT}: rerun `zhang train --restart` in that "
                     f"workdir to train it again, or read it with the version of zhang that "
                     f"wrote it")
  return {k: v for k, v in fields.items() if k != FIELD}


def _describe(found: int, fields: dict) -> str:
  if found == 0:
    return "0 (no format field: written before run files carried one)"
  if found < 0:
    return f"{fields.get(FIELD)!r} (not a version number)"
  return f"{found} (written by a newer zhang)" if found > FORMAT else str(found)
