"""Theorem 1: the 2n + d weight ReLU network fits any targets on any n distinct points."""

import numpy as np
import pytest
import scipy.linalg

from zhang.errors import UsageError
from zhang.probes import expressivity


@pytest.mark.parametrize("n,d", [(1, 1), (2, 1), (10, 3), (200, 10), (2000, 50)])
def test_fits_random_targets_exactly_with_2n_plus_d_weights(n, d):
  rng = np.random.default_rng(n + d)
  x = rng.standard_normal((n, d))
  y = rng.standard_normal(n)
  params = expressivity.construct(x, y)
  assert expressivity.num_params(params) == 2 * n + d
  assert params.a.shape == (d,) and params.b.shape == (n,) and params.w.shape == (n,)
  out = expressivity.apply(params, x)
  assert np.abs(out - y).max() < 1e-7
  # Evaluating in other batch sizes (other rounding in x @ a) changes nothing.
  np.testing.assert_allclose(expressivity.apply(params, x, batch_size=7), out, atol=1e-7)


def test_construction_is_the_papers_triangular_system():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((50, 4))
  y = rng.standard_normal(50)
  a, b, w = expressivity.construct(x, y)
  proj = x @ a
  order = np.argsort(proj)
  xs = proj[order]
  # b_1 < x_1 < b_2 < x_2 < ... < b_n < x_n
  interleaved = np.stack([b, xs], axis=1).reshape(-1)
  assert np.all(np.diff(interleaved) > 0)
  big_a = np.maximum(xs[:, None] - b[None, :], 0.0)
  assert np.allclose(big_a, np.tril(big_a)) and np.all(np.diag(big_a) > 0)
  w_direct = scipy.linalg.solve_triangular(big_a, y[order], lower=True)
  np.testing.assert_allclose(w, w_direct, rtol=1e-8, atol=1e-8)


def test_several_outputs():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((300, 6))
  y = rng.standard_normal((300, 3))
  params = expressivity.construct(x, y)
  assert expressivity.num_params(params) == 300 + 300 * 3 + 6
  assert np.abs(expressivity.apply(params, x) - y).max() < 1e-8


def test_one_hot_labels_of_images_are_fit():
  # Many points share coordinates (pixels of 8x8 digits); projections must still separate.
  from sklearn.datasets import load_digits
  d = load_digits()
  x, labels = d.data[:1000], d.target[:1000]
  _, keep = np.unique(x, axis=0, return_index=True)
  x, labels = x[np.sort(keep)], labels[np.sort(keep)]
  y = np.eye(10)[labels]
  params = expressivity.construct(x, y)
  assert np.array_equal(expressivity.apply(params, x).argmax(1), labels)
  assert np.abs(expressivity.apply(params, x) - y).max() < 1e-6


def test_duplicate_points():
  x = np.array([[0.0, 1.0], [2.0, 3.0], [0.0, 1.0]])
  with pytest.raises(expressivity.DuplicatePointsError, match="points 0 and 2"):
    expressivity.construct(x, np.array([1.0, 2.0, 3.0]))
  assert issubclass(expressivity.DuplicatePointsError, UsageError)
  # Repeats with equal targets are one point: 2 * 2 + 2 parameters.
  params = expressivity.construct(x, np.array([1.0, 2.0, 1.0]))
  assert expressivity.num_params(params) == 6
  np.testing.assert_allclose(expressivity.apply(params, x), [1.0, 2.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("depth", [2, 3, 5, 12])
def test_deep_variant_fits_with_width_n_over_k(depth):
  rng = np.random.default_rng(depth)
  n, d = 400, 8
  x = rng.standard_normal((n, d))
  y = rng.standard_normal(n)
  layers = expressivity.construct_deep(x, y, depth=depth)
  assert len(layers) == depth + 1  # depth ReLU layers and a linear read-out
  width = max(layer["w"].shape[1] for layer in layers[:-1])
  assert width <= -(-n // (depth - 1)) + 3
  assert expressivity.num_nonzero(layers) <= 5 * n + d + 10 * depth
  assert np.abs(expressivity.apply_deep(layers, x) - y).max() < 1e-8


def test_deep_variant_more_layers_than_points_and_several_outputs():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((3, 2))
  y = rng.standard_normal((3, 2))
  layers = expressivity.construct_deep(x, y, depth=6)
  np.testing.assert_allclose(expressivity.apply_deep(layers, x), y, atol=1e-12)
  with pytest.raises(UsageError, match="depth"):
    expressivity.construct_deep(x, y, depth=1)
