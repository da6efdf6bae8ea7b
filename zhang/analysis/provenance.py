"""Which run a probe's JSON was computed from, checked against the runs a report reads.

``zhang llc``, ``zhang ntk`` and ``zhang kernel RUN`` write into the folder a report writes
to, and each records its run in ``settings``: ``run`` (the run directory) and
``config_hash`` (summary.json's, the hash of the run's config). A report embeds a probe's
numbers only where that hash is one of its runs': the same folder may hold the probe of
another run, which must not be read as these runs'.
"""

from __future__ import annotations

import json
import os

from etils import epath

from zhang.analysis.load import Run, Runs
from zhang.errors import UsageError
from zhang.rundir.metrics import is_local


def config_hash(run: Run) -> str | None:
  """The run's config hash, from its summary.json (None before it has one)."""
  return (run.summary or {}).get("config_hash")


def _same_path(a: str, b: str) -> bool:
  if is_local(a) and is_local(b):
    return os.path.realpath(a) == os.path.realpath(b)
  return a.rstrip("/") == b.rstrip("/")


def source(settings: dict, runs: Runs) -> Run | None:
  """The run among ``runs`` that ``settings`` (a probe's) were computed from: the one with
  its config hash; where either side has no hash, the one at its ``run`` path. None: from
  another run, or from no run that can be told."""
  want, path = settings.get("config_hash"), settings.get("run")
  for run in runs.runs:
    have = config_hash(run)
    if want is not None and have is not None:
      if want == have:
        return run
    elif path is not None and _same_path(str(path), run.path):
      return run
  return None


def describe(settings: dict) -> str:
  """Where a probe says it came from, in words: 'runs/digits (config hash 0123abcd...)'."""
  run = settings.get("run") or "an unrecorded run"
  h = settings.get("config_hash")
  return f"{run} (config hash {h})" if h else f"{run} (no config hash recorded)"


def skipped_line(path, settings: dict) -> str:
  """One line for a probe file that is not these runs': which run it is from, that it was
  skipped."""
  return (f"{path} was computed from {describe(settings)}, not from the runs reported here: "
          f"skipped")


def read(path, name: str, required, command: str) -> dict:
  """A probe's JSON (``name``, e.g. measures.json), from the file or the folder that holds
  it (local or gs://): ``{"settings", "replicas"}`` with the ``required`` fields in every
  replica; UsageError naming the ``command`` that writes one otherwise."""
  path = epath.Path(path)
  if path.is_dir():
    path = path / name
  try:
    result = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UsageError(f"{path} is not a readable {name} ({type(e).__name__}): write one with "
                     f"{command} RUN --out DIR") from None
  if (not isinstance(result, dict) or not {"settings", "replicas"} <= set(result)
      or not isinstance(result["replicas"], list)
      or any(not isinstance(r, dict) or k not in r for r in result["replicas"]
             for k in required)):
    raise UsageError(f"{path} is not a {name} of {command} (settings and replicas with "
                     f"{', '.join(required)})")
  return result
