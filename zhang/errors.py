"""Errors that mean "the user asked for something wrong", not "the code is broken"."""


class UsageError(ValueError):
  """Bad user input. ``str(err)`` is one line: what is wrong and how to fix it.

  The CLI prints it and exits with status 2, without a traceback.
  """


class RunError(RuntimeError):
  """A run cannot go on for a reason outside the config (a full disk, say).

  ``str(err)`` is one line saying what happened and what to do; the CLI exits 1.
  """
