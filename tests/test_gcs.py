"""gs:// for real: runs, resumes, tfds data and reports on a local Cloud Storage emulator.

The emulator: gcp-storage-emulator as ``serve`` runs it (``python tests/test_gcs.py --serve
PORT``: in memory, on 127.0.0.1, with the object generations TensorStore needs), at
``$ZHANG_TEST_GCS_EMULATOR`` where that is set (``.ci/run`` starts one), else started here on
a free port and stopped at the end. Runs are ``zhang`` subprocesses in
``zhang.rundir.storage.emulator_env``: gcsfs, TensorStore and array_record all talk to the emulator,
with no credentials; the metadata server's addresses lead to a closed port on 127.0.0.1, so
nothing waits for one. Each test has buckets of its own (two pytest workers may share an
emulator).
"""

import http.server
import json
import os
import pathlib
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest

pytest.importorskip("gcp_storage_emulator", reason="the Cloud Storage emulator is not "
                    "installed: pip install -e '.[dev]'")
pytest.importorskip("gcsfs", reason="gcsfs is not installed: pip install gcsfs")

from gcsfs.core import GCSFileSystem  # noqa: E402 - the plain client, no gRPC probes

from zhang.rundir import storage  # noqa: E402

ROOT = pathlib.Path(__file__).parent.parent
SMALL = ["--config", "configs/digits.py", "--set", "n_train=256", "--set", "n_test=128",
         "--set", "batch_size=32", "--set", "max_steps=60", "--set", "eval_every=20",
         "--set", "checkpoint_every=20", "--no_progress"]
# Longer, for a kill: checkpoints at 40, 80, ..., 200; the kill lands 120 steps (seconds)
# before the end, not in a race with it.
LONGER = [*SMALL, "--set", "max_steps=200", "--set", "checkpoint_every=40",
          "--set", "keep_checkpoints=10"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


CLOSED = f"127.0.0.1:{_free_port()}"  # nothing listens there
NO_METADATA = {"GCE_METADATA_HOST": CLOSED, "GCE_METADATA_IP": CLOSED,
               "GCE_METADATA_ROOT": CLOSED, "GCE_METADATA_DETECT_RETRIES": "1"}


def _base_env(tmp_path) -> dict:
  """This process's environment less any Google Cloud setting or credentials."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_", "STORAGE_EMULATOR", "FSSPEC_",
                              "GCSFS_", "TENSORSTORE_GCS", "CLOUD_STORAGE", "TFDS_"))}
  config = tmp_path / "gcloud-config"  # no application-default credentials there
  config.mkdir(exist_ok=True)
  return {**env, **NO_METADATA, "CLOUDSDK_CONFIG": str(config)}


def _wait_up(url: str, proc=None, timeout=60) -> None:
  deadline = time.time() + timeout
  while True:
    try:
      with urllib.request.urlopen(url + "/", timeout=2) as r:
        if r.status == 200:
          return
    except OSError:
      pass
    if proc is not None and proc.poll() is not None:
      pytest.fail(f"the Cloud Storage emulator exited ({proc.returncode}) on start")
    if time.time() > deadline:
      pytest.fail(f"no Cloud Storage emulator answers at {url}")
    time.sleep(0.1)


def serve(port: int) -> None:
  """Runs gcp-storage-emulator on 127.0.0.1:``port``, in memory, until killed, with two
  parts of the JSON API that it lacks and TensorStore relies on to resume an OCDBT checkpoint
  that a kill left behind: an object's generation in the ``x-goog-generation`` header of a
  download, and the ``ifGenerationMatch`` / ``ifGenerationNotMatch`` preconditions (412, 304)
  of uploads, downloads and deletes. (``.ci/run`` starts it so too.)"""
  import logging
  from http import HTTPStatus

  from gcp_storage_emulator import server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  def generation(storage, request, name):
    try:
      return int(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
    except (NotFound, KeyError, TypeError, ValueError):
      return None

  def query(request, key):
    value = request.query.get(key)
    return None if value is None else int(value[0])

  def mismatch(request, current) -> bool:  # ifGenerationMatch=0: the object must not exist
    want = query(request, "ifGenerationMatch")
    return want is not None and want != (current or 0)

  download, insert, delete = objects.download, objects.insert, objects.delete

  def download_(request, response, storage, *args, **kwargs):
    current = generation(storage, request, request.params["object_id"])
    if current is not None and mismatch(request, current):
      response.status = HTTPStatus.PRECONDITION_FAILED
    elif current is not None and query(request, "ifGenerationNotMatch") == current:
      response.status = HTTPStatus.NOT_MODIFIED
    else:
      download(request, response, storage)
      if current is not None:
        response["x-goog-generation"] = str(current)
        response["x-goog-metageneration"] = "1"

  def insert_(request, response, storage, *args, **kwargs):
    data = request.data  # the whole body, before any answer
    name = request.query.get("name", [None])[0]
    if name is None and isinstance(data, dict):
      name = (data.get("meta") or {}).get("name")
    if name is not None and mismatch(request, generation(storage, request, name)):
      response.status = HTTPStatus.PRECONDITION_FAILED
      return
    insert(request, response, storage)

  def delete_(request, response, storage, *args, **kwargs):
    current = generation(storage, request, request.params["object_id"])
    if current is not None and mismatch(request, current):
      response.status = HTTPStatus.PRECONDITION_FAILED
      return
    delete(request, response, storage)

  patched = {download: download_, insert: insert_, delete: delete_}
  objects.download = download_  # objects.get calls it for ?alt=media
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      handlers[method] = patched.get(handler, handler)
  logging.getLogger().setLevel(logging.CRITICAL)
  server.create_server("127.0.0.1", port, in_memory=True).run()


@pytest.fixture(scope="module")
def emulator():
  url = os.environ.get("ZHANG_TEST_GCS_EMULATOR")
  proc = None
  if not url:
    url = f"http://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", url.rsplit(":", 1)[1]],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_up(url, proc)
    yield url
  finally:
    if proc is not None:
      proc.terminate()
      try:
        proc.wait(10)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _fs(url: str) -> GCSFileSystem:
  return GCSFileSystem(endpoint_url=url, token="anon", project="zhang-emulator")


def _bucket(url: str) -> str:
  name = f"zhang-test-{uuid.uuid4().hex[:10]}"
  _fs(url).mkdir(name)
  return name


def _env(tmp_path, url: str) -> dict:
  return {**_base_env(tmp_path), **storage.emulator_env(url)}


def _zhang(args, env, timeout=600, **kw) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "zhang", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, **kw)


def _final(read_text, load_dir: str, env) -> tuple:
  """(summary less seconds, metrics rows, the last checkpoint as zhang.rundir.checkpoint.load
  reads it) of a run; ``read_text(name)`` reads one of its files."""
  summary = json.loads(read_text("summary.json"))
  summary.pop("wall_seconds")
  summary.pop("timing")  # seconds, and calls counted per process (first calls compile)
  rows = read_text("metrics.jsonl").splitlines()
  return summary, rows, _load(load_dir, env)


def _load(workdir: str, env) -> dict:
  """``zhang.rundir.checkpoint.load(workdir)`` in a child in ``env`` (a gs:// workdir needs the
  emulator's environment, which TensorStore reads once per process)."""
  code = ("import sys, pickle, jax; from zhang.rundir import checkpoint; "
          "d = checkpoint.load(sys.argv[1]); sys.stdout.buffer.write(pickle.dumps({"
          "'step': d['step'], 'params': jax.tree.leaves(d['params']), "
          "'opt_state': jax.tree.leaves(d['opt_state'])}))")
  proc = subprocess.run([sys.executable, "-c", code, workdir], cwd=ROOT, env=env,
                        capture_output=True, timeout=300)
  assert proc.returncode == 0, proc.stderr.decode()
  return pickle.loads(proc.stdout)


def _assert_same(a, b) -> None:
  (sa, ra, ca), (sb, rb, cb) = a, b
  assert sa == sb
  assert ra == rb  # every (step, replica) row once, in order, with the same values
  assert ca["step"] == cb["step"]
  assert len(ca["params"]) == len(cb["params"]) > 0
  for x, y in zip(ca["params"] + ca["opt_state"], cb["params"] + cb["opt_state"]):
    np.testing.assert_array_equal(x, y)  # bit-identical


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def trained(emulator, tmp_path_factory):
  """The small digits run, trained into gs://BUCKET/run: (bucket, completed process)."""
  tmp = tmp_path_factory.mktemp("gcs-run")
  bucket = _bucket(emulator)
  proc = _zhang(["train", *SMALL, "--workdir", f"gs://{bucket}/run"], _env(tmp, emulator))
  assert proc.returncode == 0, proc.stderr
  return bucket, proc


@pytest.mark.slow
def test_a_run_writes_its_files_and_checkpoints_to_the_bucket(emulator, trained):
  bucket, proc = trained
  fs = _fs(emulator)
  names = {p[len(f"{bucket}/run/"):] for p in fs.find(f"{bucket}/run")}
  assert {"config.json", "metrics.jsonl", "summary.json"} <= names
  assert not any(n.endswith(".tmp") or ".zhang-write-test-" in n for n in names)
  for step in (20, 40, 60):  # keep_checkpoints=3: every one, each committed, with its arrays
    assert f"checkpoints/{step}/commit_success.txt" in names
    assert f"checkpoints/{step}/meta/metadata" in names
    assert any(n.startswith(f"checkpoints/{step}/state/ocdbt.process_0/d/") for n in names)
  summary = json.loads(fs.cat(f"{bucket}/run/summary.json"))
  assert summary["status"] == "complete" and summary["steps_run"] == 60
  rows = [json.loads(line) for line in fs.cat(f"{bucket}/run/metrics.jsonl").splitlines()]
  assert {(r["step"], r["replica"]) for r in rows} == {
      (s, i) for s in (0, 20, 40, 60) for i in range(15)}
  assert json.loads(fs.cat(f"{bucket}/run/config.json"))["max_steps"] == 60


@pytest.mark.slow
def test_a_run_killed_on_the_bucket_resumes_from_it_bit_identical_to_a_local_run(
    emulator, tmp_path):
  env = _env(tmp_path, emulator)
  local = tmp_path / "local"
  proc = _zhang(["train", *LONGER, "--workdir", str(local)], env)
  assert proc.returncode == 0, proc.stderr
  want = _final(lambda name: (local / name).read_text(), str(local), env)

  fs, bucket = _fs(emulator), _bucket(emulator)
  workdir = f"gs://{bucket}/run"
  run = subprocess.Popen([sys.executable, "-m", "zhang", "train", *LONGER, "--workdir",
                          workdir], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
  # The kill lands once the checkpoint of step 80 has started (Orbax writes its metadata
  # first, straight into checkpoints/80/ on a bucket): 40 is whole, 80 most likely half
  # written, which the resumed run must write over.
  checkpoints = f"{bucket}/run/checkpoints"
  deadline = time.time() + 300
  while not fs.exists(f"{checkpoints}/80/_CHECKPOINT_METADATA"):
    assert run.poll() is None, f"the run ended before step 80: {run.stderr.read()}"
    assert time.time() < deadline
    time.sleep(0.02)
  run.kill()
  run.communicate()
  assert run.returncode == -signal.SIGKILL
  fs.invalidate_cache()
  assert fs.exists(f"{checkpoints}/40/commit_success.txt")
  killed = json.loads(fs.cat(f"{bucket}/run/summary.json"))
  assert killed["status"] == "running" and killed["steps_run"] < 200

  resumed = _zhang(["train", *LONGER, "--workdir", workdir], env)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming" in resumed.stderr
  fs.invalidate_cache()
  got = _final(lambda name: fs.cat(f"{bucket}/run/{name}").decode(), workdir, env)
  _assert_same(got, want)


def _tiny_cifar10(data_dir: pathlib.Path) -> None:
  """A real tfds cifar10 of 64 train and 32 test images (array_record files, tfds's own
  metadata), written by tfds's cifar10 builder from generated images: PIL encodes them, so
  no TensorFlow is needed."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from PIL import Image

  def examples(n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      yield i, {"id": f"{seed}_{i}", "image": Image.fromarray(image), "label": i % 10}

  builder = tfds.builder("cifar10", data_dir=str(data_dir), file_format="array_record")
  builder._split_generators = lambda dl_manager: {"train": examples(64, 0),
                                                  "test": examples(32, 1)}
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


@pytest.mark.slow
def test_a_run_reads_a_tfds_dataset_from_the_bucket(emulator, tmp_path):
  local = tmp_path / "tfds"
  _tiny_cifar10(local)
  assert list(local.glob("cifar10/*/cifar10-train.array_record-*"))
  fs, bucket = _fs(emulator), _bucket(emulator)
  fs.put(str(local / "cifar10"), f"{bucket}/tfds/cifar10", recursive=True)
  assert fs.find(f"{bucket}/tfds/cifar10")
  workdir = tmp_path / "run"
  proc = _zhang(["train", "--config", "configs/digits.py", "--set", "dataset=cifar10",
                 "--set", "batch_size=32", "--set", "max_steps=4", "--set", "eval_every=2",
                 "--set", "checkpoint_every=4", "--no_progress", "--data_dir",
                 f"gs://{bucket}/tfds", "--workdir", str(workdir)], _env(tmp_path, emulator))
  assert proc.returncode == 0, proc.stderr
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["dataset"] == "cifar10" and summary["status"] == "complete"
  assert (summary["n_train"], summary["n_test"]) == (64, 32)


@pytest.mark.slow
def test_report_reads_a_run_on_the_bucket(emulator, trained, tmp_path):
  bucket, _ = trained
  out = tmp_path / "report"
  proc = _zhang(["report", f"gs://{bucket}/run", "--out", str(out)], _env(tmp_path, emulator))
  assert proc.returncode == 0, proc.stderr
  text = (out / "report.md").read_text()
  assert "digits" in text or "mlp_1x512" in text


# --------------------------------------------------------------------------- bad input
# Each ends in one line naming what is missing and the command that fixes it, exit 2, before
# JAX starts (JAX_PLATFORMS names no backend, so a run that got that far would fail there).


def _refused(args, env) -> str:
  proc = _zhang(["train", "--config", "configs/digits.py", "--no_progress", *args],
                {**env, "JAX_PLATFORMS": "no_such_backend"}, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr
  assert len(lines) == 1 and lines[0].startswith("zhang train: error: "), proc.stderr
  return lines[0][len("zhang train: error: "):]


WITHOUT_GCSFS = ("import sys; sys.modules['gcsfs'] = None; sys.argv[0] = 'zhang'; "
                 "from zhang.cli import main; sys.exit(main())")


@pytest.mark.parametrize("flag", ["--workdir", "--data_dir"])
@pytest.mark.slow
def test_gs_paths_without_gcsfs_say_so(emulator, tmp_path, flag):
  path = f"gs://{_bucket(emulator)}/x"
  args = (["--workdir", path] if flag == "--workdir" else
          ["--set", "dataset=cifar10", "--data_dir", path, "--workdir", str(tmp_path / "w")])
  proc = subprocess.run([sys.executable, "-c", WITHOUT_GCSFS, "train", "--config",
                         "configs/digits.py", "--no_progress", *args], cwd=ROOT,
                        env={**_env(tmp_path, emulator), "JAX_PLATFORMS": "no_such_backend"},
                        capture_output=True, text=True, timeout=120)
  what = flag[2:]
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"zhang train: error: {what} {path} is on Google Cloud Storage, and gcsfs (the library "
      f"that reads and writes gs:// paths) is not installed: pip install gcsfs"]
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flag", ["--workdir", "--data_dir"])
@pytest.mark.slow
def test_a_bucket_that_does_not_exist(emulator, tmp_path, flag):
  path = f"gs://zhang-test-missing-{uuid.uuid4().hex[:8]}/x"
  bucket = path[5:].split("/")[0]
  args = (["--workdir", path] if flag == "--workdir" else
          ["--set", "dataset=cifar10", "--data_dir", path, "--workdir", str(tmp_path / "w")])
  what = flag[2:]
  assert _refused(args, _env(tmp_path, emulator)) == (
      f"bucket gs://{bucket} (of {what} {path}) does not exist: create it (gcloud storage "
      f"buckets create gs://{bucket}) or choose another {flag}")
  assert bucket not in {b.rstrip("/") for b in _fs(emulator).ls("")}


@pytest.mark.slow
def test_a_bucket_name_that_is_not_one(tmp_path):
  assert _refused(["--workdir", "gs://Not_A_Bucket/run"], _base_env(tmp_path)) == (
      "workdir gs://Not_A_Bucket/run: 'Not_A_Bucket' is not a bucket name (3-63 lowercase "
      "letters, digits, '-', '_', '.'): use --workdir gs://BUCKET/PATH")


@pytest.mark.parametrize("flag", ["--workdir", "--data_dir"])
@pytest.mark.slow
def test_no_credentials(tmp_path, flag):
  """No emulator, no GOOGLE_APPLICATION_CREDENTIALS, no gcloud credentials file, no metadata
  server: refused before any request to Cloud Storage."""
  path = "gs://zhang-test-bucket/x"
  args = (["--workdir", path] if flag == "--workdir" else
          ["--set", "dataset=cifar10", "--data_dir", path, "--workdir", str(tmp_path / "w")])
  assert _refused(args, _base_env(tmp_path)) == (
      f"no Google Cloud credentials for {flag[2:]} {path}: run gcloud auth application-default "
      f"login (or point GOOGLE_APPLICATION_CREDENTIALS at a service account's key file)")


NO_CREDENTIALS = ("no Google Cloud credentials for {what} {path}: run gcloud auth "
                  "application-default login (or point GOOGLE_APPLICATION_CREDENTIALS at a "
                  "service account's key file)")


@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist"])
@pytest.mark.slow
def test_no_credentials_for_an_idx_data_dir_is_refused_not_replaced_by_local_files(
    tmp_path, dataset):
  """The IDX datasets, which a machine may also hold locally: the bucket is checked, never
  silently swapped for the local copy."""
  path = "gs://zhang-test-bucket/data"
  assert _refused(["--set", f"dataset={dataset!r}", "--data_dir", path, "--workdir",
                   str(tmp_path / "w")], _base_env(tmp_path)) == NO_CREDENTIALS.format(
                       what="data_dir", path=path)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv,what", [
    (["report", "gs://zhang-test-bucket/run", "--out", "OUT"], "run"),
    (["report", "RUN", "--out", "gs://zhang-test-bucket/o"], "out"),
    (["llc", "gs://zhang-test-bucket/run", "--out", "OUT"], "run"),
    (["llc", "RUN", "--out", "gs://zhang-test-bucket/o"], "out"),
    (["llc", "RUN", "--out", "OUT", "--data_dir", "gs://zhang-test-bucket/d"], "data_dir"),
    (["ntk", "gs://zhang-test-bucket/run", "--out", "OUT"], "run"),
    (["ntk", "RUN", "--out", "gs://zhang-test-bucket/o"], "out"),
    (["kernel", "gs://zhang-test-bucket/run", "--out", "OUT"], "run"),
    (["kernel", "RUN", "--out", "gs://zhang-test-bucket/o"], "out"),
    (["kernel", "--dataset", "fashion_mnist", "--data_dir", "gs://zhang-test-bucket/d"],
     "data_dir"),
])
@pytest.mark.slow
def test_every_commands_gs_paths_without_credentials_are_one_line(tmp_path, argv, what):
  """Refused before any run is read or any JAX backend starts (it names none here)."""
  argv = [str(tmp_path / a) if a in ("RUN", "OUT") else a for a in argv]
  path = next(a for a in argv if a.startswith("gs://"))
  proc = _zhang(argv, {**_base_env(tmp_path), "JAX_PLATFORMS": "no_such_backend"},
                timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"zhang {argv[0]}: error: " + NO_CREDENTIALS.format(what=what, path=path)]
  assert not (tmp_path / "OUT").exists()


@pytest.mark.slow
def test_a_key_file_that_gives_no_credentials(tmp_path):
  key = tmp_path / "missing-key.json"
  line = _refused(["--workdir", "gs://zhang-test-bucket/x"],
                  {**_base_env(tmp_path), "GOOGLE_APPLICATION_CREDENTIALS": str(key)})
  assert line.startswith(f"GOOGLE_APPLICATION_CREDENTIALS={key} gives no credentials for "
                         f"workdir gs://zhang-test-bucket/x (")
  assert line.endswith("): point it at a service account's key file, or unset it and run "
                       "gcloud auth application-default login")


READER = "reader@zhang-test.iam.gserviceaccount.com"


class _ReadOnlyBucket(http.server.BaseHTTPRequestHandler):
  """Answers every request as Cloud Storage answers a caller who lacks the permission (403
  and its message): the emulator has no ACLs or IAM to deny anything with."""

  def _deny(self, permission):
    body = json.dumps({"error": {"code": 403, "message": (
        f"{READER} does not have {permission} access to the Google Cloud Storage object. "
        f"Permission '{permission}' denied on resource (or it may not exist)."),
        "errors": [{"reason": "forbidden", "domain": "global"}]}}).encode()
    self.send_response(403)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def do_GET(self):
    self._deny("storage.objects.list")

  def do_POST(self):
    length = int(self.headers.get("Content-Length") or 0)
    self.rfile.read(length)
    self._deny("storage.objects.create")

  def log_message(self, *args):
    pass


@pytest.fixture
def read_only():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ReadOnlyBucket)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()


@pytest.mark.slow
def test_a_bucket_that_cannot_be_written(read_only, tmp_path):
  path = "gs://zhang-test-read-only/run"
  assert _refused(["--workdir", path], _env(tmp_path, read_only)) == (
      f"cannot write in workdir {path}: {READER} lacks storage.objects.create on "
      f"gs://zhang-test-read-only: gcloud storage buckets add-iam-policy-binding "
      f"gs://zhang-test-read-only --member=serviceAccount:{READER} "
      f"--role=roles/storage.objectAdmin, or choose another --workdir")


@pytest.mark.slow
def test_a_data_dir_that_cannot_be_read(read_only, tmp_path):
  path = "gs://zhang-test-read-only/tfds"
  assert _refused(["--set", "dataset=cifar10", "--data_dir", path, "--workdir",
                   str(tmp_path / "w")], _env(tmp_path, read_only)) == (
      f"cannot read data_dir {path}: {READER} lacks storage.objects.list on "
      f"gs://zhang-test-read-only: gcloud storage buckets add-iam-policy-binding "
      f"gs://zhang-test-read-only --member=serviceAccount:{READER} "
      f"--role=roles/storage.objectViewer, or choose another --data_dir")


@pytest.mark.slow
def test_a_data_dir_on_a_bucket_without_the_dataset_says_build_locally_then_copy(
    emulator, tmp_path):
  path = f"gs://{_bucket(emulator)}/tfds"
  line = _refused(["--set", "dataset=cifar10", "--data_dir", path, "--workdir",
                   str(tmp_path / "w")], _env(tmp_path, emulator))
  assert line.startswith(f"dataset cifar10 is not prepared in {path} ")
  assert line.endswith(
      "tfds build cifar10 --file_format=array_record --data_dir ~/tensorflow_datasets && "
      f"gcloud storage cp -r ~/tensorflow_datasets/cifar10 {path}/")


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
  serve(int(sys.argv[2]))
