"""``gs://`` paths: checked before a run loads any data, each failure one line.

``check`` asks, in order: is gcsfs installed, are there Google Cloud credentials, does the
bucket exist, can the path be written (a probe file created and removed) or read (one
listing). Three clients touch a run's ``gs://`` paths, each with its own HTTP stack:
etils.epath through gcsfs (config.json, metrics.jsonl, summary.json, tfds's metadata),
TensorStore's GCS driver (Orbax's arrays) and array_record's (tfds's records). All three find
credentials the same way (``gcloud auth application-default login``, a service account's key
in ``GOOGLE_APPLICATION_CREDENTIALS``, or a Cloud VM's metadata server).

A local Cloud Storage API emulator (tests): ``STORAGE_EMULATOR_HOST`` set to its URL points
gcsfs at it; ``check`` then points the other two there as well (``emulator_env``) unless
their own variables are set, and asks for no credentials.
"""

from __future__ import annotations

import os
import re
import socket
import uuid

from zhang.errors import UsageError

EMULATOR = "STORAGE_EMULATOR_HOST"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_DENIED = re.compile(r"(\S+) does not have (storage\.[\w.]+) access")


def is_gcs(path) -> bool:
  return os.fspath(path).startswith("gs://")


def emulator_env(url: str) -> dict[str, str]:
  """The environment that points every client of a run at the emulator at ``url``
  (``http://HOST:PORT``), with no credentials and no look-up of a metadata server."""
  return {
      EMULATOR: url,                               # gcsfs
      "FSSPEC_GCS_TOKEN": "anon",                  # gcsfs: no credentials looked up
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no gRPC bucket-type probe
      "TENSORSTORE_GCS_HTTP_URL": url,             # TensorStore (Orbax's arrays)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore: a fixed bearer token
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,      # array_record (tfds): anonymous
      "GOOGLE_CLOUD_PROJECT": "zhang-emulator",
  }


def _use_emulator() -> bool:
  """With ``STORAGE_EMULATOR_HOST`` set: the rest of ``emulator_env`` where unset."""
  url = os.environ.get(EMULATOR, "")
  if url in ("", "default"):
    return False
  if "://" not in url:
    url = f"http://{url}"
  for key, value in emulator_env(url).items():
    os.environ.setdefault(key, value)
  import fsspec.config  # read the environment at import: the token may come after
  fsspec.config.conf.setdefault("gcs", {}).setdefault("token", "anon")
  return True


def check_path(path, what: str, write: bool, flag: str | None = None) -> None:
  """``check`` for a ``gs://`` path; a local path is left to the command that opens it."""
  if path and is_gcs(path):
    check(path, what, write, flag)


def check_out(path, flag: str = "--out") -> None:
  """One line unless ``path`` can be an output folder: not an existing file, and on
  ``gs://`` writable now (before any work whose result would have nowhere to go)."""
  text = os.fspath(path)
  if is_gcs(text):
    check(text, flag.lstrip("-"), write=True, flag=flag)
  elif os.path.exists(text) and not os.path.isdir(text):
    raise UsageError(f"{flag} {text} is a file, not a folder: give a folder (created if "
                     f"missing) for the outputs")


def check(path, what: str, write: bool, flag: str | None = None) -> None:
  """Raises UsageError unless ``path`` (``gs://BUCKET/...``, the run's ``what``: "workdir"
  or "data_dir") can be written (``write``) or read now. ``flag``: the command line's name
  for it in the fix (``--what`` by default)."""
  text = os.fspath(path).rstrip("/")
  bucket, _, prefix = text[len("gs://"):].partition("/")
  flag = flag or f"--{what}"
  if not _BUCKET.fullmatch(bucket) or ".." in bucket:
    raise UsageError(f"{what} {text}: {bucket!r} is not a bucket name (3-63 lowercase "
                     f"letters, digits, '-', '_', '.'): use {flag} gs://BUCKET/PATH")
  emulated = _use_emulator()
  try:
    import gcsfs
  except ImportError:
    raise UsageError(f"{what} {text} is on Google Cloud Storage, and gcsfs (the library "
                     f"that reads and writes gs:// paths) is not installed: pip install "
                     f"gcsfs") from None
  if not emulated:
    _check_credentials(text, what)
  fs = gcsfs.GCSFileSystem()
  try:
    if write:
      probe = (f"{bucket}/{prefix}/" if prefix else f"{bucket}/") + (
          f".zhang-write-test-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
      fs.pipe_file(probe, b"")
      fs.rm_file(probe)
    else:
      fs.call("GET", "b/{}/o", bucket, prefix=prefix, maxResults=1, json_out=True)
  except FileNotFoundError:
    raise UsageError(f"bucket gs://{bucket} (of {what} {text}) does not exist: create it "
                     f"(gcloud storage buckets create gs://{bucket}) or choose another "
                     f"{flag}") from None
  except Exception as e:  # noqa: BLE001 - gcsfs: OSError, HttpError, aiohttp's errors
    raise _error(e, text, what, bucket, write, flag) from None


def _check_credentials(text: str, what: str) -> None:
  """Finds credentials as the three clients do (none of them refreshes a token here)."""
  import warnings

  import google.auth
  import google.auth.exceptions
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "end user credentials without a quota project"
      google.auth.default()
  except google.auth.exceptions.DefaultCredentialsError as e:
    key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key:
      reason = " ".join(str(e).split())
      raise UsageError(f"GOOGLE_APPLICATION_CREDENTIALS={key} gives no credentials for "
                       f"{what} {text} ({reason[:120]}): point it at a service account's key "
                       f"file, or unset it and run gcloud auth application-default login"
                       ) from None
    raise UsageError(f"no Google Cloud credentials for {what} {text}: run gcloud auth "
                     f"application-default login (or point GOOGLE_APPLICATION_CREDENTIALS "
                     f"at a service account's key file)") from None


def _error(e: Exception, text: str, what: str, bucket: str, write: bool,
           flag: str) -> UsageError:
  message = " ".join(str(getattr(e, "message", "") or e).split())
  code = getattr(e, "code", None)
  if code == 401 or "Invalid Credentials" in message or "Anonymous caller" in message:
    return UsageError(f"Google Cloud refused the credentials for {what} {text} (401): run "
                      f"gcloud auth application-default login")
  action = "write in" if write else "read"
  if message.startswith("Forbidden") or code == 403:
    denied = _DENIED.search(message)
    if not denied:  # e.g. a retention policy or a hold: Cloud Storage's own words
      return UsageError(f"cannot {action} {what} {text} (403: {_short(message)}): fix the "
                        f"bucket's settings, or choose another {flag}")
    who, permission = denied.groups()
    member = (f"serviceAccount:{who}" if who.endswith(".gserviceaccount.com") else
              f"user:{who}" if "@" in who else "user:YOU")
    role = "roles/storage.objectAdmin" if write else "roles/storage.objectViewer"
    return UsageError(f"cannot {action} {what} {text}: {who} lacks {permission} on "
                      f"gs://{bucket}: gcloud storage buckets add-iam-policy-binding "
                      f"gs://{bucket} --member={member} --role={role}, or choose another "
                      f"{flag}")
  return UsageError(f"cannot reach {what} {text} ({type(e).__name__}: "
                    f"{_short(message) or 'no answer'}): check the network and the bucket's "
                    f"name, then rerun")


def _short(message: str, limit: int = 160) -> str:
  return message if len(message) <= limit else message[:limit - 3] + "..."
