"""Errors that mean "the user asked for something wrong", not "the code is broken"."""

from __future__ import annotations

import re
from typing import Iterable


class UsageError(ValueError):
  """Bad user input. ``str(err)`` is one line: what is wrong and how to fix it.

  The CLI prints it and exits with status 2, without a traceback.
  """


class RunError(RuntimeError):
  """A run cannot go on for a reason outside the config (a full disk, say).

  ``str(err)`` is one line saying what happened and what to do; the CLI exits 1.
  """


def on_command_line(error: Exception, flags: Iterable[str] | None = None, **aliases: str) -> str:
  """``str(error)`` with each setting named in backticks that is one of the command's
  ``flags`` written as that flag (```step_size``` as ``--step_size``); ``aliases`` map a setting
  to a flag of another name (``n_train="--n"``). Other backticked text (```zhang train```, a
  grid entry's key) stays; without ``flags``, every backticked lower-case identifier is a
  flag. Library errors name settings; the command line speaks of flags."""
  known = None if flags is None else set(flags)
  parts = str(error).split("`")
  for i in range(1, len(parts) - 1, 2):  # the odd parts are the text between backticks
    flag = aliases.get(parts[i], f"--{parts[i]}")
    if parts[i] in aliases or (flag in known if known is not None
                               else re.fullmatch(r"[a-z_][a-z0-9_]*", parts[i])):
      parts[i] = flag
    else:
      parts[i] = f"`{parts[i]}`"
  return "".join(parts)
