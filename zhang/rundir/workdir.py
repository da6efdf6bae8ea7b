"""A run's workdir as a resource: can it be written, who holds it, where libraries' logs go.

- ``check_writable``: before any data is loaded, the workdir (or the folder that will hold
  it) must take a new file; the check creates and removes one probe file, nothing else (on
  ``gs://`` too, after gcsfs, credentials and the bucket: ``zhang.rundir.storage``).
- ``Lock``: one ``zhang train`` per workdir. Process 0 holds an ``flock`` on
  ``WORKDIR/lock`` for the run's lifetime and writes who it is into the file. The kernel drops
  the lock when the process dies, so a killed run leaves a file that blocks nothing. Covered:
  processes on one machine, and machines sharing the workdir over NFS (Linux maps ``flock`` to
  NFS byte-range locks). Not covered: object stores (``gs://``) and file systems without
  locks (some FUSE mounts); there two launches on one workdir are the user's to avoid.
- ``library_log``: Orbax, absl, asyncio and TensorStore report a failed write with pages of
  tracebacks from background threads and callbacks; the run's own message says what
  happened in one line. While training, those libraries' log records, their warnings (such
  as asyncio's "coroutine was never awaited" from an abandoned read) and uncaught thread
  exceptions go to ``WORKDIR/library.log`` instead of the terminal.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import socket
import sys
import tempfile
import threading
import traceback
import warnings

from etils import epath

from zhang.errors import UsageError
from zhang.rundir import storage
from zhang.rundir.metrics import is_local

LOCK, LIBRARY_LOG = "lock", "library.log"
# Loggers of the libraries a run uses; their records go to library.log during a run.
LIBRARY_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore", "etils", "jax._src.distributed")


def check_writable(workdir: epath.Path) -> None:
  """Raises UsageError unless ``workdir`` (or its nearest existing parent, where it will be
  created) can take a new file. A ``gs://`` workdir: ``zhang.rundir.storage.check`` (gcsfs,
  credentials, the bucket, a probe file written and removed)."""
  if not is_local(workdir):
    if storage.is_gcs(workdir):
      storage.check(workdir, "workdir", write=True)
    return
  path = os.fspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UsageError(f"{existing} is not a directory, so workdir {path} cannot be made in "
                     f"it: choose another `workdir`")
  try:
    fd, probe = tempfile.mkstemp(prefix=".zhang-write-test-", dir=existing)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    reason = (os.strerror(e.errno) if e.errno else str(e)).lower()
    what = (f"cannot write in workdir {path}" if existing == path else
            f"cannot create workdir {path}: {existing} cannot be written")
    raise UsageError(f"{what} ({reason}): choose a `workdir` you can write to, or fix its "
                     f"permissions") from None


class Lock:
  """Process 0's hold on a workdir (module docstring). ``acquire`` raises UsageError naming
  the holder when another live process has it."""

  def __init__(self, workdir: epath.Path):
    self.workdir = workdir
    self._file = None

  def acquire(self) -> None:
    if not is_local(self.workdir):
      return
    os.makedirs(os.fspath(self.workdir), exist_ok=True)
    path = os.path.join(os.fspath(self.workdir), LOCK)
    f = open(path, "a+")  # noqa: SIM115 - held open for the run's lifetime
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        f.close()
        return  # a file system without locks: not covered (module docstring)
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise UsageError(f"workdir {self.workdir} is in use by {holder}: wait for that run to "
                       f"end (or stop it), or use another `workdir`") from None
    f.seek(0)
    f.truncate()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    f.write(f"zhang train, process {os.getpid()} on {socket.gethostname()}, started "
            f"{started}\n")
    f.flush()
    self._file = f

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def is_locked(workdir: epath.Path) -> bool | None:
  """Whether a live process holds the workdir's lock (``Lock``): True, False (a summary that
  says "running" then belongs to a run that was killed), or None where it cannot be told
  (no lock file, an object store, a file system without locks). Takes nothing."""
  if not is_local(workdir):
    return None
  path = os.path.join(os.fspath(workdir), LOCK)
  try:
    f = open(path)  # noqa: SIM115 - closed below
  except OSError:
    return None
  try:
    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError as e:
    return True if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) else None
  else:
    fcntl.flock(f, fcntl.LOCK_UN)
    return False
  finally:
    f.close()


@contextlib.contextmanager
def library_log(workdir: epath.Path, process_index: int = 0):
  """Sends the libraries' log records and uncaught thread exceptions to the workdir's
  ``library.log`` (``library.process_N.log`` on process N > 0; a temporary file for a
  ``gs://`` workdir) for the duration; yields the log's path."""
  name = LIBRARY_LOG if process_index == 0 else f"library.process_{process_index}.log"
  if is_local(workdir):
    path = os.path.join(os.fspath(workdir), name)
  else:
    path = os.path.join(tempfile.gettempdir(), f"zhang-{os.getpid()}-{name}")
  handler = logging.FileHandler(path, delay=True)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  saved = []
  for logger_name in LIBRARY_LOGGERS:
    logger = logging.getLogger(logger_name)
    saved.append((logger, logger.propagate, list(logger.handlers)))
    logger.handlers = [handler]
    logger.propagate = False
  log = logging.getLogger("absl")
  previous_hook = threading.excepthook

  def thread_exception(args):
    log.error("uncaught exception in thread %s:\n%s", getattr(args.thread, "name", "?"),
              "".join(traceback.format_exception(args.exc_type, args.exc_value,
                                                 args.exc_traceback)))

  def unraisable(args):  # e.g. TensorStore's callbacks into a closed asyncio loop
    log.error("%s %r:\n%s", args.err_msg or "exception ignored in", args.object,
              "".join(traceback.format_exception(args.exc_type, args.exc_value,
                                                 args.exc_traceback)))

  previous_showwarning = warnings.showwarning

  def showwarning(message, category, filename, lineno, file=None, line=None):
    if _is_ours(filename):
      previous_showwarning(message, category, filename, lineno, file, line)
    else:  # straight to the file: a logger's level (absl's is raised elsewhere) would drop it
      handler.handle(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, "%s",
                                       (warnings.formatwarning(message, category, filename,
                                                               lineno, line),), None))

  previous_unraisable = sys.unraisablehook
  threading.excepthook, sys.unraisablehook = thread_exception, unraisable
  warnings.showwarning = showwarning
  try:
    yield path
  finally:
    threading.excepthook, sys.unraisablehook = previous_hook, previous_unraisable
    warnings.showwarning = previous_showwarning
    for logger, propagate, handlers in saved:
      logger.handlers = handlers
      logger.propagate = propagate
    handler.close()


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_ours(filename: str) -> bool:
  """Whether a warning was raised in this package's code or a user's (a config file),
  rather than in an installed library's."""
  path = os.path.abspath(filename)
  parts = path.split(os.sep)
  return (path.startswith(_PACKAGE + os.sep)
          or not ({"site-packages", "dist-packages"} & set(parts)))
