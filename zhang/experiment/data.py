"""Datasets by name, as uint8 images and int labels, and the paper's preprocessing.

Every loader returns the whole dataset as host numpy arrays; the trainer puts the training
set on the accelerator once. Sources:

- ``digits``: scikit-learn's 8x8 digits (ships inside scikit-learn, works offline), split
  80/20 by a fixed permutation.
- ``mnist``, ``fashion_mnist``: the standard IDX files from a local directory (``data_dir``,
  ``$ZHANG_DATA_DIR/<name>``, or Debian's ``/usr/share/datasets/<name>``), else tfds.
- ``cifar10``, ``cifar100``: ``tfds.data_source`` (array_record; no TensorFlow at load time).
  A ``gs://`` data_dir is checked first (``zhang.rundir.storage``: gcsfs, credentials, the bucket).
- ``synthetic_cifar10``: CIFAR-10's shapes and sizes (50,000 train / 10,000 test uint8
  32x32x3 images, 10 balanced classes) generated in about a second from a fixed seed, with no
  download: for benchmarks and accelerator checks where CIFAR-10 is not prepared. Each image
  is a quarter of its class's template plus three quarters of uniform noise of its own
  (``(t >> 2) + (3 n >> 2)``, 0..254); the templates are uniform random 8x8x3 images blown up
  to 32x32 (4x4 blocks, so they have spatial structure a conv net can use and the
  random-pixel test destroys). True labels are therefore learnable and generalize (an easy
  task: the training set's class means classify every test image right), random labels
  are not, and fitting them is memorizing noise, as with real data.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import os
import pathlib
import zlib
from typing import Callable

import numpy as np

from zhang.errors import UsageError
from zhang.rundir import storage


class DatasetUnavailableError(UsageError):
  """The dataset exists in the registry but is not on this machine."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A whole dataset in host memory. Images are uint8 (N, H, W, C); labels int32 (N,).

  ``inputs``: "images" (scaled, randomized, whitened by the step) or "tokens" (the uint8
  values are token ids the model embeds: ``modadd``'s (a, b) as a (1, 2, 1) "image")."""
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  inputs: str = "images"

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
    """The first ``n_train`` / ``n_test`` examples (None keeps all)."""
    for n, have, what in ((n_train, len(self.train_labels), "n_train"),
                          (n_test, len(self.test_labels), "n_test")):
      if n is not None and not 0 < n <= have:
        raise UsageError(f"{what}={n} is out of range for {self.name}: use 1..{have} "
                         f"(or 0 for the whole split)")
    return dataclasses.replace(
        self,
        train_images=self.train_images[:n_train], train_labels=self.train_labels[:n_train],
        test_images=self.test_images[:n_test], test_labels=self.test_labels[:n_test])


_LOADERS: dict[str, Callable[[str | None], Dataset]] = {}
_INPUTS: dict[str, str] = {}  # a registered dataset's inputs, "images" or "tokens"


def register(name: str, inputs: str = "images"):
  """Decorator: registers ``loader(data_dir) -> Dataset`` as dataset ``name``.

  ``data_dir`` is the config's (None when unset). Image datasets (uint8, (N, H, W, C)) get
  the paper's preprocessing in the train step: 32x32 images centre-cropped to 28x28, pixels
  scaled to [0, 1], randomized, augmented, then whitened per image (``whiten``); a "tokens"
  dataset's values are token ids, passed to the model as they are (label kinds only). Put it
  at the top level of a module and name the module in the config's ``imports``: the probes
  import it again. A built-in dataset's name is refused; registering a name again replaces it.
  """
  if inputs not in ("images", "tokens"):
    raise UsageError(f"inputs={inputs!r} must be 'images' or 'tokens'")

  def wrap(fn):
    old = _LOADERS.get(name)
    if old is not None and old.__module__ == __name__ and fn.__module__ != __name__:
      raise UsageError(f"dataset {name!r} is built in: register yours under another name")
    _LOADERS[name] = fn
    _INPUTS[name] = inputs
    return fn
  return wrap


def names() -> list[str]:
  return sorted(_LOADERS)


def check_name(name: str) -> None:
  if name not in _LOADERS:
    raise UsageError(f"unknown dataset {name!r}: choose one of {', '.join(names())}")


def load(name: str, data_dir: str | None = None, options: dict | None = None) -> Dataset:
  """Loads dataset ``name``; raises DatasetUnavailableError with how to get it.
  ``options``: a generated dataset's arguments (``modadd``: ``MODADD_OPTIONS``)."""
  check_name(name)
  if data_dir and storage.is_gcs(data_dir):  # refused in one line, never local files instead
    storage.check(data_dir, "data_dir", write=False)
  if name in TOKEN_DATASETS or name in STREAM_ONLY:
    return _LOADERS[name](data_dir or None, **(options or {}))
  return _LOADERS[name](data_dir or None)


TOKEN_DATASETS = ("modadd",)  # datasets of token ids rather than images
# Datasets that stay on the host, read through the streaming path (``stream=true``, set by
# ``config.resolve``): ``stream.StreamedDataset``s. Their option: the images' side.
STREAM_ONLY = ("imagenet2012",)
STREAM_OPTIONS = ("image_size",)


def binary(ds: Dataset) -> Dataset:
  """The dataset as a two-class task: label y becomes 0 if y < K // 2 else 1 (K =
  ``num_classes``: for K odd the first floor(K / 2) classes are 0), train and test alike.

  For PAC-Bayes bounds on a two-class 0-1 error (Dziugaite & Roy 2017's binary MNIST). The
  training loop applies it before label corruption, so random labels are uniform over the two
  classes. On the built-in datasets: ``mnist`` and ``digits``, digits 0-4 against 5-9 (as
  Dziugaite & Roy); ``fashion_mnist``, T-shirt/top, Trouser, Pullover, Dress, Coat against
  Sandal, Shirt, Sneaker, Bag, Ankle boot; ``cifar10``, airplane, automobile, bird, cat, deer
  against dog, frog, horse, ship, truck; ``synthetic_cifar10``, templates 0-4 against 5-9;
  ``cifar100``, fine labels 0-49 against 50-99. A token dataset (``modadd``: a sum mod a
  prime) has no such split and is refused.
  """
  if ds.inputs == "tokens":
    raise UsageError(f"binary=True is for image datasets, and {ds.name} has token inputs: "
                     f"set binary=False for {ds.name}")
  half = ds.num_classes // 2
  return dataclasses.replace(
      ds, train_labels=(ds.train_labels >= half).astype(np.int32),
      test_labels=(ds.test_labels >= half).astype(np.int32), num_classes=2)


def input_kind(name: str) -> str:
  """"tokens" for ``TOKEN_DATASETS``, else "images": what a model must take."""
  return "tokens" if name in TOKEN_DATASETS else _INPUTS.get(name, "images")


# --------------------------------------------------------------------------- modadd

# The config fields that choose modadd's examples (``config.base_config``).
MODADD_OPTIONS = ("modulus", "train_fraction", "split_seed")
MAX_MODULUS = 251  # residues are stored as uint8 token ids, and P is the "=" token


def is_prime(n: int) -> bool:
  return n >= 2 and all(n % k for k in range(2, math.isqrt(n) + 1))


def check_modadd(modulus, train_fraction) -> None:
  """One line for a modulus that is not a prime in [3, MAX_MODULUS] or a train fraction
  outside (0, 1)."""
  if (isinstance(modulus, bool) or not isinstance(modulus, int) or not is_prime(modulus)
      or not 3 <= modulus <= MAX_MODULUS):
    raise UsageError(f"modulus={modulus!r} must be a prime from 3 to {MAX_MODULUS} (residues "
                     f"are uint8 token ids), e.g. --config.modulus=113")
  if (isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float))
      or not 0 < train_fraction < 1):
    raise UsageError(f"train_fraction={train_fraction!r} must be in (0, 1), e.g. "
                     f"--config.train_fraction=0.3")


@register("modadd", inputs="tokens")
def _modadd(data_dir: str | None, modulus: int = 113, train_fraction: float = 0.3,
            split_seed: int = 0) -> Dataset:
  """Every pair (a, b) of residues mod ``modulus``, labelled (a + b) mod ``modulus``, split
  at random (a permutation from ``split_seed``) into the first ``train_fraction`` for
  training and the rest for test. Inputs are the token ids (a, b) as a (1, 2, 1) array; the
  models append the "=" token (id ``modulus``)."""
  del data_dir  # generated
  check_modadd(modulus, train_fraction)
  a, b = np.divmod(np.arange(modulus * modulus), modulus)
  pairs = np.stack([a, b], -1).astype(np.uint8).reshape(-1, 1, 2, 1)
  labels = ((a + b) % modulus).astype(np.int32)
  order = np.random.default_rng(split_seed).permutation(len(labels))
  n_train = int(round(train_fraction * len(labels)))
  if not 0 < n_train < len(labels):
    raise UsageError(f"train_fraction={train_fraction} leaves an empty split of the "
                     f"{len(labels)} pairs mod {modulus}: choose a fraction further from 0 "
                     f"and 1")
  train, test = order[:n_train], order[n_train:]
  return Dataset("modadd", pairs[train], labels[train], pairs[test], labels[test], modulus,
                 inputs="tokens")


def commuted_in_train(ds: Dataset, n_train: int | None = None,
                      n_test: int | None = None) -> np.ndarray:
  """Per test pair (a, b) of a token dataset (modadd), whether its commuted pair (b, a) is
  among the first ``n_train`` training pairs: a predictor symmetric in a and b gets these
  right from commutativity alone, without adding."""
  train = ds.train_images[:n_train].reshape(-1, 2).astype(np.int64)
  test = ds.test_images[:n_test].reshape(-1, 2).astype(np.int64)
  k = ds.num_classes
  seen = set((train[:, 0] * k + train[:, 1]).tolist())
  return np.fromiter(((b * k + a) in seen for a, b in test), bool, len(test))


# --------------------------------------------------------------------------- digits

@register("digits")
def _digits(data_dir: str | None) -> Dataset:
  del data_dir  # ships with scikit-learn
  from sklearn.datasets import load_digits
  d = load_digits()
  # Pixel values are 0..16; put them on the usual 0..255 scale.
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  n_test = len(labels) // 5
  test, train = order[:n_test], order[n_test:]
  return Dataset("digits", images[train], labels[train], images[test], labels[test], 10)


# --------------------------------------------------------------------------- IDX files

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
_APT_PACKAGE = {"fashion_mnist": "dataset-fashion-mnist"}


def read_idx(path: pathlib.Path, dataset: str | None = None) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a numpy array. A damaged, short or
  unreadable file is a UsageError naming it and how to get a good copy of ``dataset``'s."""
  path = pathlib.Path(path)
  fix = _how_to_replace(dataset)
  try:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
      raw = f.read()
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a cut or corrupt gzip stream
    raise UsageError(f"{path} is damaged (gzip: {e}); {fix}") from None
  except OSError as e:  # a directory, no read permission, ...
    raise UsageError(f"{path} cannot be read ({e.strerror or e}): make it a readable file; "
                     f"{fix}") from None
  if len(raw) < 4 or raw[:3] != bytes([0, 0, 0x08]) or raw[3] == 0:
    what = "empty" if not raw else "not an unsigned-byte IDX file"
    raise UsageError(f"{path} is damaged ({what}); {fix}")
  ndim = raw[3]
  if len(raw) < 4 + 4 * ndim:
    raise UsageError(f"{path} is damaged (truncated: {len(raw)} bytes, less than its "
                     f"header); {fix}")
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if data.size != math.prod(dims):
    what = "truncated" if data.size < math.prod(dims) else "longer than its header says"
    raise UsageError(f"{path} is damaged ({what}: {data.size} of {math.prod(dims)} values); "
                     f"{fix}")
  return data.reshape(dims)


def _how_to_replace(dataset: str | None) -> str:
  if dataset in _APT_PACKAGE:
    package = _APT_PACKAGE[dataset]
    return (f"re-download it, or reinstall the Debian package {package} "
            f"(apt-get install --reinstall {package})")
  return "re-download it"


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  """The file, else something else of its name (``read_idx`` says it cannot be read)."""
  paths = [directory / stem, directory / (stem + ".gz")]
  found = [p for p in paths if p.is_file()] or [p for p in paths if p.exists()]
  return found[0] if found else None


def _idx_dirs(name: str, data_dir: str | None) -> list[pathlib.Path]:
  if data_dir and data_dir.startswith("gs://"):
    return []  # a bucket holds tfds's files; the local copies are not what was asked for
  if data_dir:
    return [pathlib.Path(data_dir), pathlib.Path(data_dir) / name]
  dirs = []
  if os.environ.get("ZHANG_DATA_DIR"):
    dirs.append(pathlib.Path(os.environ["ZHANG_DATA_DIR"]) / name)
  dirs.append(pathlib.Path("/usr/share/datasets") / name.replace("_", "-"))
  return dirs


def _idx_or_tfds(name: str, data_dir: str | None) -> Dataset:
  for d in _idx_dirs(name, data_dir):
    paths = {k: _find_idx(d, stem) for k, stem in _IDX_FILES.items()}
    if all(paths.values()):
      arrays = {k: read_idx(p, name) for k, p in paths.items()}
      for split in ("train", "test"):
        _check_idx_pair(paths[f"{split}_images"], arrays[f"{split}_images"],
                        paths[f"{split}_labels"], arrays[f"{split}_labels"], name)
      return Dataset(name, arrays["train_images"][..., None],
                     arrays["train_labels"].astype(np.int32),
                     arrays["test_images"][..., None],
                     arrays["test_labels"].astype(np.int32), 10)
  if data_dir and not data_dir.startswith("gs://") and not _looks_like_tfds(data_dir):
    raise DatasetUnavailableError(
        f"no {name} IDX files ({', '.join(_IDX_FILES.values())}, optionally .gz) in "
        f"{data_dir}: point --data_dir at the folder that holds them")
  hint = (f" or install the Debian package {_APT_PACKAGE[name]} "
          f"(apt-get install {_APT_PACKAGE[name]})" if name in _APT_PACKAGE else "")
  return _tfds(name, data_dir, extra_hint=hint)


def _check_idx_pair(image_path, images: np.ndarray, label_path, labels: np.ndarray,
                    name: str, num_classes: int = 10) -> None:
  """One line for labels outside ``[0, num_classes)`` or a label count that is not the
  image count: either would index past a one-hot row or pair an image with another's label."""
  fix = _how_to_replace(name)
  if labels.ndim != 1 or images.ndim != 3 or len(labels) != len(images):
    raise UsageError(f"{label_path} holds {labels.shape} labels for the {images.shape} images "
                     f"of {image_path}: one label per 2-D image is needed; {fix}")
  if labels.size and int(labels.max()) >= num_classes:
    bad = int(np.argmax(labels >= num_classes))
    raise UsageError(f"{label_path} holds label {int(labels[bad])} at example {bad}, outside "
                     f"{name}'s {num_classes} classes (0-{num_classes - 1}); {fix}")


def _looks_like_tfds(data_dir: str) -> bool:
  return pathlib.Path(data_dir).is_dir() and any(
      p.is_dir() for p in pathlib.Path(data_dir).iterdir())


register("mnist")(lambda data_dir: _idx_or_tfds("mnist", data_dir))
register("fashion_mnist")(lambda data_dir: _idx_or_tfds("fashion_mnist", data_dir))


# --------------------------------------------------------------------------- tfds

_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
                "imagenet2012": 1000}
_EVAL_SPLIT = {"imagenet2012": "validation"}  # others evaluate on "test"
_MANUAL = {"imagenet2012": (
    "; ImageNet is a manual download: put ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar (image-net.org) in ~/tensorflow_datasets/downloads/manual/ "
    "first (docs/tpu.md, \"ImageNet\")")}


def _read_split(source) -> tuple[np.ndarray, np.ndarray]:
  n = len(source)
  images, labels = [], []
  for i in range(n):
    example = source[i]
    images.append(np.asarray(example["image"], np.uint8))
    labels.append(int(example["label"]))
  return np.stack(images), np.asarray(labels, np.int32)


def tfds_sources(name: str, data_dir: str | None = None, extra_hint: str = ""):
  """``tfds.data_source`` of ``name``'s training and evaluation splits (array_record, random
  access, nothing read yet; the streaming path reads them): (train, eval, num_classes). A
  dataset not prepared in ``data_dir`` (default ``$TFDS_DATA_DIR``, else tfds's) gets one
  line with the commands that prepare it; nothing is downloaded or created."""
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  if data_dir and storage.is_gcs(data_dir):
    storage.check(data_dir, "data_dir", write=False)  # gcsfs, credentials, the bucket
  how = (f"prepare it once on a machine with internet and TensorFlow: "
         f"{_build_hint(name, data_dir)}{_MANUAL.get(name, '')}{extra_hint}")
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:  # pragma: no cover - tfds is a dependency
    raise DatasetUnavailableError(f"{name} needs tensorflow-datasets ({e}); "
                                  f"pip install tensorflow-datasets") from None
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # tfds warns about missing metadata before failing
  try:
    return tuple(tfds.data_source(name, split=split, data_dir=data_dir, download=False)
                 for split in ("train", _EVAL_SPLIT.get(name, "test"))) + (_NUM_CLASSES[name],)
  except Exception as e:  # tfds raises several types for "not prepared"
    where_now = data_dir or "~/tensorflow_datasets"
    raise DatasetUnavailableError(f"dataset {name} is not prepared in {where_now} "
                                  f"(tfds: {type(e).__name__}); {how}") from None
  finally:
    absl_logger.setLevel(level)


def _tfds(name: str, data_dir: str | None, extra_hint: str = "") -> Dataset:
  train, test, num_classes = tfds_sources(name, data_dir, extra_hint)
  train_images, train_labels = _read_split(train)
  test_images, test_labels = _read_split(test)
  return Dataset(name, train_images, train_labels, test_images, test_labels, num_classes)


def _build_hint(name: str, data_dir: str | None) -> str:
  """How to prepare ``name`` in ``data_dir``: on a bucket, built locally and copied there
  (tfds's array_record writer writes local files only)."""
  if data_dir and "://" in data_dir:
    return (f"tfds build {name} --file_format=array_record --data_dir ~/tensorflow_datasets "
            f"&& gcloud storage cp -r ~/tensorflow_datasets/{name} {data_dir.rstrip('/')}/")
  where = f" --data_dir={data_dir}" if data_dir else ""
  return f"tfds build {name} --file_format=array_record{where}"


register("cifar10")(lambda data_dir: _tfds("cifar10", data_dir))
register("imagenet2012")(lambda data_dir, image_size=0: _imagenet(data_dir, image_size))


def _imagenet(data_dir: str | None, image_size: int):
  from zhang.experiment import imagenet  # Pillow and grain: only when asked for
  return imagenet.load(data_dir, image_size)
register("cifar100")(lambda data_dir: _tfds("cifar100", data_dir))


# --------------------------------------------------------------------------- synthetic

SYNTHETIC_SEED = 20170101


def synthetic_templates_and_noise(n_train: int = 50_000, n_test: int = 10_000,
                                  num_classes: int = 10, size: int = 32, block: int = 4,
                                  seed: int = SYNTHETIC_SEED) -> Dataset:
  """Class templates plus per-image noise, uint8 (see the module docstring)."""
  rng = np.random.default_rng(seed)
  cells = size // block
  templates = rng.integers(0, 256, (num_classes, cells, cells, 3), dtype=np.uint8)
  templates = templates.repeat(block, axis=1).repeat(block, axis=2) >> 2

  def split(n):
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    images = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, 10_000):  # bounds the uint16 temporary to ~60 MB
      stop = min(start + 10_000, n)
      noise = np.frombuffer(rng.bytes((stop - start) * size * size * 3), np.uint8)
      noise = (noise.astype(np.uint16) * 3 >> 2).astype(np.uint8)
      images[start:stop] = templates[labels[start:stop]] + noise.reshape(-1, size, size, 3)
    return images, labels

  train_images, train_labels = split(n_train)
  test_images, test_labels = split(n_test)
  return Dataset(f"synthetic_cifar{num_classes}", train_images, train_labels, test_images,
                 test_labels, num_classes)


@register("synthetic_cifar10")
def _synthetic_cifar10(data_dir: str | None) -> Dataset:
  del data_dir  # generated
  return synthetic_templates_and_noise()


# --------------------------------------------------------------------------- preprocessing

def center_crop(images: np.ndarray, size: int) -> np.ndarray:
  """Centre crop (N, H, W, C) to (N, size, size, C)."""
  h, w = images.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  return images[:, top:top + size, left:left + size]


def paper_crop(images: np.ndarray) -> np.ndarray:
  """The paper's centre crop: 32x32 inputs become 28x28; other sizes are kept."""
  return center_crop(images, 28) if images.shape[1:3] == (32, 32) else images


def scale(images):
  """uint8 -> float32 in [0, 1]; works on numpy and jax arrays."""
  return images.astype("float32") / 255.0


def whiten(x):
  """Per-image whitening: (x - mean) / max(std, 1/sqrt(num_elements)), over H, W, C.

  The statistics are taken over the flattened image, one contiguous row per image. Reducing
  over (H, W, C) directly, with C = 3 the innermost axis, compiled to a slower reduction on
  XLA CPU: the MLP's train step at 32 replicas of batch 128 ran 1.09x faster this way
  (benchmarks/RESULTS.md, "Inside the step").
  """
  import jax.numpy as jnp
  shape = x.shape
  x = jnp.reshape(x, shape[:-3] + (-1,))
  mean = jnp.mean(x, axis=-1, keepdims=True)
  std = jnp.std(x, axis=-1, keepdims=True)
  return jnp.reshape((x - mean) / jnp.maximum(std, 1.0 / np.sqrt(x.shape[-1])), shape)
