import gzip
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from zhang.errors import UsageError
from zhang.experiment import data


def test_digits_is_a_fixed_split_of_uint8_images():
  a, b = data.load("digits"), data.load("digits")
  assert a.train_images.dtype == np.uint8 and a.train_images.shape == (1438, 8, 8, 1)
  assert a.test_images.shape == (359, 8, 8, 1) and a.num_classes == 10
  np.testing.assert_array_equal(a.train_labels, b.train_labels)
  np.testing.assert_array_equal(a.test_images, b.test_images)
  assert a.train_images.max() == 255 and a.train_images.min() == 0
  # Train and test do not share an image.
  train = {x.tobytes() for x in a.train_images}
  assert not any(x.tobytes() in train for x in a.test_images)


def _write_idx(path: pathlib.Path, array: np.ndarray, compress: bool):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      d.to_bytes(4, "big") for d in array.shape)
  raw = header + array.astype(np.uint8).tobytes()
  if compress:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(raw))
  else:
    path.write_bytes(raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path, compress):
  rng = np.random.default_rng(0)
  arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
            "train-labels-idx1-ubyte": rng.integers(0, 10, 20),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28)),
            "t10k-labels-idx1-ubyte": rng.integers(0, 10, 7)}
  for name, array in arrays.items():
    _write_idx(tmp_path / name, array, compress)
  d = data.load("fashion_mnist", str(tmp_path))
  assert d.train_images.shape == (20, 28, 28, 1) and d.test_labels.shape == (7,)
  np.testing.assert_array_equal(d.train_images[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(d.test_labels, arrays["t10k-labels-idx1-ubyte"])


def test_truncated_idx_file_is_a_clear_error(tmp_path):
  path = tmp_path / "x"
  path.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
  with pytest.raises(UsageError, match="truncated"):
    data.read_idx(path)


def test_empty_data_dir_says_what_is_missing(tmp_path):
  with pytest.raises(data.DatasetUnavailableError, match="no fashion_mnist IDX files"):
    data.load("fashion_mnist", str(tmp_path))


def test_tfds_path_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=13):
    d = data.load("cifar10")
  assert d.train_images.shape == (13, 32, 32, 3) and d.train_images.dtype == np.uint8
  assert d.num_classes == 10 and d.train_labels.dtype == np.int32
  assert data.paper_crop(d.train_images).shape == (13, 28, 28, 3)


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(data.DatasetUnavailableError, match="tfds build cifar10"):
    data.load("cifar10", str(tmp_path))
  assert not any(tmp_path.iterdir())  # nothing downloaded or created


def test_unknown_dataset():
  with pytest.raises(UsageError, match="unknown dataset 'svhn'"):
    data.load("svhn")


def test_preprocessing():
  x = np.arange(2 * 32 * 32 * 3).reshape(2, 32, 32, 3) % 251
  crop = data.paper_crop(x.astype(np.uint8))
  np.testing.assert_array_equal(crop, x[:, 2:30, 2:30].astype(np.uint8))
  assert data.paper_crop(np.zeros((1, 28, 28, 1), np.uint8)).shape == (1, 28, 28, 1)
  s = np.asarray(data.scale(crop))
  assert s.dtype == np.float32 and s.max() <= 1.0
  w = np.asarray(data.whiten(jnp.asarray(s)))
  np.testing.assert_allclose(w.reshape(2, -1).mean(1), 0, atol=1e-5)
  np.testing.assert_allclose(w.reshape(2, -1).std(1), 1, atol=1e-4)
  # A constant image: std is floored at 1/sqrt(num_elements), no division by zero.
  flat = np.asarray(data.whiten(jnp.full((1, 4, 4, 1), 0.3)))
  np.testing.assert_allclose(flat, 0.0, atol=1e-6)


def test_subset_bounds():
  d = data.load("digits")
  assert len(d.subset(100, 50).train_labels) == 100
  with pytest.raises(UsageError, match="n_train=5000 is out of range"):
    d.subset(5000)


@pytest.mark.slow
def test_synthetic_cifar10_is_cifar_sized_deterministic_and_learnable():
  a, b = data.load("synthetic_cifar10"), data.load("synthetic_cifar10")
  assert a.train_images.shape == (50_000, 32, 32, 3) and a.train_images.dtype == np.uint8
  assert a.test_images.shape == (10_000, 32, 32, 3) and a.test_images.dtype == np.uint8
  assert a.train_labels.dtype == np.int32 and a.num_classes == 10
  np.testing.assert_array_equal(np.bincount(a.train_labels), np.full(10, 5000))
  np.testing.assert_array_equal(np.bincount(a.test_labels), np.full(10, 1000))
  for x, y in ((a.train_images, b.train_images), (a.test_images, b.test_images),
               (a.train_labels, b.train_labels)):
    np.testing.assert_array_equal(x, y)
  assert a.train_images.max() <= 254 and 0.4 < a.train_images.mean() / 255 < 0.6
  assert data.paper_crop(a.test_images[:2]).shape == (2, 28, 28, 3)
  # The labels carry a signal: class means of 5,000 training images classify the test set.
  x = a.train_images[:5000].reshape(5000, -1).astype(np.float32)
  means = np.stack([x[a.train_labels[:5000] == k].mean(0) for k in range(10)])
  t = a.test_images[:1000].reshape(1000, -1).astype(np.float32)
  pred = np.argmin((means ** 2).sum(1) - 2 * t @ means.T, axis=1)
  assert (pred == a.test_labels[:1000]).mean() > 0.95


def _fashion_mnist_dir(directory: pathlib.Path, compress: bool) -> dict[str, pathlib.Path]:
  """A small valid set of the four IDX files; returns their paths by stem."""
  rng = np.random.default_rng(1)
  shapes = {"train-images-idx3-ubyte": (20, 28, 28), "train-labels-idx1-ubyte": (20,),
            "t10k-images-idx3-ubyte": (7, 28, 28), "t10k-labels-idx1-ubyte": (7,)}
  for stem, shape in shapes.items():
    _write_idx(directory / stem, rng.integers(0, 10, shape), compress)
  return {stem: directory / (stem + (".gz" if compress else "")) for stem in shapes}


def _damage(path: pathlib.Path, how: str) -> None:
  blob = path.read_bytes()
  if how == "cut in half":
    path.write_bytes(blob[:len(blob) // 2])
  elif how == "corrupt body":  # flips the compressed bytes after the gzip header
    path.write_bytes(blob[:10] + bytes(b ^ 0x5A for b in blob[10:-8]) + blob[-8:])
  elif how == "bad checksum":
    path.write_bytes(blob[:-8] + bytes(8))
  elif how == "empty":
    path.write_bytes(b"")
  elif how == "header only":
    raw = gzip.decompress(blob) if path.suffix == ".gz" else blob
    raw = raw[:6]
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
  elif how == "a directory":
    path.unlink()
    path.mkdir()
  else:
    raise AssertionError(how)


DAMAGE = [(False, "cut in half"), (False, "empty"), (False, "header only"),
          (False, "a directory"), (True, "cut in half"), (True, "corrupt body"),
          (True, "bad checksum"), (True, "empty"), (True, "header only"),
          (True, "a directory")]


@pytest.mark.parametrize("compress,how", DAMAGE)
def test_damaged_idx_file_is_one_line_naming_it(tmp_path, compress, how):
  path = _fashion_mnist_dir(tmp_path, compress)["train-images-idx3-ubyte"]
  _damage(path, how)
  with pytest.raises(UsageError) as info:
    data.read_idx(path, "fashion_mnist")
  message = str(info.value)
  assert message.startswith(f"{path} ") and len(message.splitlines()) == 1
  assert "re-download it" in message and "dataset-fashion-mnist" in message


@pytest.mark.parametrize("compress,how", [(False, "cut in half"), (True, "cut in half"),
                                          (True, "empty"), (True, "a directory")])
def test_damaged_file_in_data_dir_is_one_line_from_the_loader(tmp_path, compress, how):
  path = _fashion_mnist_dir(tmp_path, compress)["t10k-labels-idx1-ubyte"]
  _damage(path, how)
  with pytest.raises(UsageError) as info:
    data.load("fashion_mnist", str(tmp_path))
  message = str(info.value)
  assert message.startswith(f"{path} ") and len(message.splitlines()) == 1
  assert "apt-get install --reinstall dataset-fashion-mnist" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_idx_file_is_one_line(tmp_path):
  path = _fashion_mnist_dir(tmp_path, True)["train-labels-idx1-ubyte"]
  path.chmod(0)
  with pytest.raises(UsageError, match=f"^{path} cannot be read \\(Permission denied\\)"):
    data.read_idx(path)


def test_idx_file_read_error_is_one_line(tmp_path, monkeypatch):
  path = _fashion_mnist_dir(tmp_path, False)["train-labels-idx1-ubyte"]

  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied", str(path))

  monkeypatch.setattr(data, "open", refuse, raising=False)  # shadows the builtin
  with pytest.raises(UsageError) as info:
    data.read_idx(path)
  assert str(info.value) == (f"{path} cannot be read (Permission denied): make it a readable "
                             f"file; re-download it")


def test_labels_outside_the_classes_are_one_line_naming_file_and_example(tmp_path):
  paths = _fashion_mnist_dir(tmp_path, False)
  labels = np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
  labels[4] = 12
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, False)
  with pytest.raises(UsageError) as info:
    data.load("fashion_mnist", str(tmp_path))
  assert str(info.value).startswith(
      f"{paths['t10k-labels-idx1-ubyte']} holds label 12 at example 4, outside fashion_mnist's "
      f"10 classes (0-9); re-download it")


def test_a_label_count_that_is_not_the_image_count_is_one_line(tmp_path):
  paths = _fashion_mnist_dir(tmp_path, True)
  _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, np.uint8), True)
  with pytest.raises(UsageError) as info:
    data.load("fashion_mnist", str(tmp_path))
  assert str(info.value).startswith(
      f"{paths['train-labels-idx1-ubyte']} holds (19,) labels for the (20, 28, 28) images of "
      f"{paths['train-images-idx3-ubyte']}")


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10", "digits"])
def test_a_gs_data_dir_is_checked_and_never_replaced_by_local_files(tmp_path, monkeypatch,
                                                                    name):
  """Local IDX files where the loader looks by default (``ZHANG_DATA_DIR``) must not stand in
  for a bucket that cannot be read: the bucket's check comes first, whatever the dataset."""
  (tmp_path / name).mkdir()
  _fashion_mnist_dir(tmp_path / name, False)
  monkeypatch.setenv("ZHANG_DATA_DIR", str(tmp_path))
  asked = []

  def refuse(path, what, write, flag=None):
    asked.append((path, what, write))
    raise UsageError(f"no Google Cloud credentials for {what} {path}")

  monkeypatch.setattr(data.storage, "check", refuse)
  with pytest.raises(UsageError, match="no Google Cloud credentials for data_dir gs://b/x"):
    data.load(name, "gs://b/x")
  assert asked == [("gs://b/x", "data_dir", False)]
  # The local copy is what the loader reads without a data_dir: the test's files are good.
  if name in ("fashion_mnist", "mnist"):
    assert len(data.load(name).train_labels) == 20


def test_unprepared_imagenet_says_how_to_download_and_prepare_it(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as e:
    data.tfds_sources("imagenet2012", str(tmp_path))
  text = str(e.value)
  assert "\n" not in text and "tfds build imagenet2012 --file_format=array_record" in text
  assert "ILSVRC2012_img_train.tar" in text and "downloads/manual" in text
  assert not any(tmp_path.iterdir())


def test_imagenet_sources_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    train, evaluation, classes = data.tfds_sources("imagenet2012")
    assert (len(train), len(evaluation), classes) == (6, 6, 1000)
    example = train[2]
    assert example["image"].ndim == 3 and example["image"].shape[-1] == 3
    assert 0 <= example["label"] < 1000
