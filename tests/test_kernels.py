"""Minimum-norm kernel interpolation (Section 5), its memory plan and the `kernel` CLI."""

import argparse
import json

import numpy as np
import pytest

from zhang.cli import kernel as kernel_cli
from zhang.errors import UsageError
from zhang.experiment import data
from zhang.probes.kernels import features
from zhang.probes.kernels import interpolation as kernels


def _one_hot(labels, k):
  return np.eye(k)[labels]


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def test_linear_interpolant_is_the_min_norm_least_squares_solution():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((30, 80))  # d > n: many interpolants, we want the smallest
  y = _one_hot(rng.integers(0, 5, 30), 5)
  k = np.asfortranarray(x @ x.T)
  sol = kernels.solve(k.copy(order="F"), y)
  np.testing.assert_allclose(sol.fitted, y, atol=1e-10)
  w = x.T @ sol.coef
  w_pinv = np.linalg.pinv(x) @ y
  np.testing.assert_allclose(w, w_pinv, atol=1e-10)
  assert sol.rkhs_norm == pytest.approx(np.linalg.norm(w_pinv), rel=1e-10)


def test_rbf_interpolant_matches_pseudo_inverse_and_keeps_k():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((40, 5))
  y = _one_hot(rng.integers(0, 3, 40), 3)
  k = kernels.kernel_matrix("rbf", x, x, gamma=0.3)
  d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.testing.assert_allclose(k, np.exp(-0.3 * d2), atol=1e-14)
  work = np.asfortranarray(k)
  sol = kernels.solve(work, y)
  np.testing.assert_allclose(sol.coef, np.linalg.pinv(k) @ y, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(k @ sol.coef, y, atol=1e-10)
  assert sol.rkhs_norm ** 2 == pytest.approx(np.trace(sol.coef.T @ k @ sol.coef), rel=1e-10)
  # The factor went into the lower triangle; the upper triangle and diagonal are K.
  np.testing.assert_array_equal(np.triu(work), np.triu(k))
  assert not np.allclose(np.tril(work, -1), np.tril(k, -1))


def test_ridge_tends_to_the_interpolant():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((50, 10))
  y = _one_hot(rng.integers(0, 4, 50), 4)
  k = kernels.kernel_matrix("rbf", x, x, gamma=0.1)
  exact = kernels.solve(np.asfortranarray(k), y).coef
  gaps = [np.abs(kernels.solve(np.asfortranarray(k), y, ridge=r).coef - exact).max()
          for r in (1e-2, 1e-4, 1e-6, 1e-8)]
  assert all(a > b for a, b in zip(gaps, gaps[1:]))
  assert gaps[-1] < 1e-5 * np.abs(exact).max()
  assert gaps[0] > 1e-3 * np.abs(exact).max()  # ridge 1e-2 visibly changes it


def test_singular_kernel_messages(digits):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((20, 5))  # d < n: X X^T has rank 5
  with pytest.raises(kernels.SingularKernelError, match="`ridge`"):
    kernels.solve(np.asfortranarray(x @ x.T), np.ones((20, 1)))
  assert issubclass(kernels.SingularKernelError, UsageError)
  # With a ridge the same system solves.
  sol = kernels.solve(np.asfortranarray(x @ x.T), np.ones((20, 1)), ridge=1e-3)
  assert np.isfinite(sol.coef).all()
  with pytest.raises(kernels.SingularKernelError, match=r"rank <= 64 < n = 100.*`ridge`"):
    kernels.evaluate(digits, 100, 10, kernel="linear", features="raw")


def test_duplicate_training_images_refused(digits):
  images = digits.train_images[:50].copy()
  images[40] = images[7]
  ds = data.Dataset("dup", images, digits.train_labels[:50], digits.test_images[:10],
                    digits.test_labels[:10], 10)
  with pytest.raises(kernels.SingularKernelError, match="images 7 and 40 are identical"):
    kernels.evaluate(ds, 50, 10)
  result = kernels.evaluate(ds, 50, 10, ridge=1e-6)  # the ridge makes it solvable
  assert result["ridge"] == 1e-6 and np.isfinite(result["norm"])


def test_memory_plan_and_refusal(digits):
  budget = int(2e9)
  plan = kernels.plan_memory(1000, 200, 64, 10, budget)
  assert plan.fits and plan.kernel_bytes == 8 * 1000 * 1000
  n_max = plan.max_n_train
  assert kernels.plan_memory(n_max, 200, 64, 10, budget).fits
  assert not kernels.plan_memory(n_max + 1, 200, 64, 10, budget).fits
  # A budget just above the overhead leaves room for a few hundred points only.
  tight = kernels.plan_memory(1, 359, 64, 10, int(1.5e9) + 5_000_000).max_n_train
  assert 0 < tight < 1000
  with pytest.raises(kernels.KernelMemoryError, match=rf"use `n_train` {tight} or less"):
    kernels.evaluate(digits, 1000, 359, memory_budget_bytes=int(1.5e9) + 5_000_000)


def test_gram_in_blocks_equals_dense_products(digits):
  raw = features.raw(digits.image_shape)
  whole = raw.blocks[0][1]
  halves = [(32, lambda im: whole(im)[:, :32]), (32, lambda im: whole(im)[:, 32:])]
  fmap = features.FeatureMap("split", 64, halves)
  tr, te = digits.train_images[:300], digits.test_images[:50]
  g = kernels.gram(fmap, tr, te)
  xtr, xte = whole(tr), whole(te)
  assert g.train.flags.f_contiguous
  np.testing.assert_allclose(g.train, xtr @ xtr.T, rtol=1e-12)
  np.testing.assert_allclose(g.test, xte @ xtr.T, rtol=1e-12)
  np.testing.assert_allclose(g.sq_test, (xte ** 2).sum(1), rtol=1e-12)


@pytest.mark.parametrize("name,dim", [("raw", 64), ("gabor", 272), ("random_conv", 4 * 300)])
def test_feature_maps(digits, name, dim):
  fmap = features.get(name, digits.image_shape, num_filters=300, seed=0)
  x = np.concatenate([fn(digits.train_images[:20]) for _, fn in fmap.blocks], axis=1)
  assert fmap.dim == dim and x.shape == (20, dim) and x.dtype == np.float64
  assert np.isfinite(x).all() and x.std() > 0
  if name == "random_conv":
    other = features.get(name, digits.image_shape, num_filters=300, seed=1)
    y = np.concatenate([fn(digits.train_images[:20]) for _, fn in other.blocks], axis=1)
    assert not np.allclose(x, y)
    assert (x >= 0).all()  # pooled ReLUs


def test_gabor_filters_are_zero_mean_and_oriented():
  psi, low = features.gabor_filters(32, [1.0, 2.0], 4)
  assert psi.shape == (8, 32, 32)
  np.testing.assert_allclose(psi.sum(axis=(1, 2)), 0, atol=1e-12)
  assert low.sum() == pytest.approx(1.0)
  # A vertical grating excites the theta = 0 filter (waves along x) most.
  grating = np.cos(3 * np.pi / 4 * np.arange(32))[None, :].repeat(32, 0)
  response = np.abs(np.fft.ifft2(np.fft.fft2(grating) * np.fft.fft2(psi[:4]))).mean((1, 2))
  assert response.argmax() == 0


def test_evaluate_digits_interpolates_and_generalizes(digits):
  r = kernels.evaluate(digits, 600, 359, kernel="rbf", features="raw")
  assert r["train_error"] == 0.0 and r["max_fit_residual"] < 1e-8
  assert r["test_error"] < 0.05  # 1-NN-like accuracy on 8x8 digits
  assert r["norm"] == r["rkhs_norm"] > 0 and r["weight_norm"] is None
  lin = kernels.evaluate(digits, 40, 359, kernel="linear", features="raw")
  assert lin["train_error"] == 0.0
  assert lin["weight_norm"] == pytest.approx(lin["norm"], rel=1e-8)


def _cli(argv):
  parser = argparse.ArgumentParser(prog="zhang")
  kernel_cli.register(parser.add_subparsers(dest="command", required=True))
  args = parser.parse_args(argv)
  return args.func(args)


def test_cli_json(digits, capsys):
  code = _cli(["kernel", "--dataset", "digits", "--n", "300", "--n_test", "100",
               "--features", "gabor", "--json"])
  assert code == 0
  result = json.loads(capsys.readouterr().out)
  for key in ("dataset", "n_train", "n_test", "kernel", "features", "test_error", "norm",
              "train_error", "seconds"):
    assert key in result
  assert (result["dataset"], result["n_train"], result["n_test"]) == ("digits", 300, 100)
  assert result["features"] == "gabor" and result["train_error"] == 0.0
  assert 0 <= result["test_error"] < 0.1


@pytest.mark.parametrize("argv,needle", [
    (["--n", "5000"], "out of range"),
    (["--kernel", "linear"], "--ridge"),
    (["--ridge", "-1"], "--ridge"),
    (["--memory_gb", "0.001"], "--memory_gb"),
    (["--memory_gb", "0"], "--memory_gb must be > 0"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, argv, needle):
  assert _cli(["kernel", "--dataset", "digits", *argv]) == 2
  err = [ln for ln in capsys.readouterr().err.splitlines()
         if not ln.startswith("[zhang kernel]")]
  assert len(err) == 1 and err[0].startswith("zhang kernel: error:") and needle in err[0]


@pytest.mark.parametrize("argv,needle", [
    ([], "give --dataset NAME (one kernel on a dataset) or a run directory RUN --out OUT"),
    (["RUN"], "with RUN, --out is required"),
    (["RUN", "--out", "o", "--dataset", "digits"], "--dataset is for the --dataset form"),
    (["RUN", "--out", "o", "--kernel", "ntk"], "--kernel is for the --dataset form"),
    (["RUN", "--out", "o", "--max_tflop", "0"], "--max_tflop must be > 0"),
    (["--dataset", "digits", "--out", "o"], "--out is for RUN"),
    (["NOT_A_DIR", "--out", "o"], "is not a directory"),
])
def test_cli_run_form_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
  """`zhang kernel RUN --out OUT` (a run's kernel baseline) against `--dataset`: each
  form's flags, one line for a mix-up."""
  (tmp_path / "RUN").mkdir()
  argv = [str(tmp_path / a) if a in ("RUN", "NOT_A_DIR") else a for a in argv]
  assert _cli(["kernel", *argv]) == 2
  err = [ln for ln in capsys.readouterr().err.splitlines()
         if not ln.startswith("[zhang kernel]")]
  assert len(err) == 1 and err[0].startswith("zhang kernel: error:") and needle in err[0], err


def test_cli_run_form_refuses_a_run_on_images(monkeypatch, capsys, tmp_path):
  """The kernel baseline is of token runs; a run on images is pointed at the other
  commands."""
  from zhang.probes import run as run_lib
  fake = type("Run", (), dict(config=type("C", (), dict(dataset="digits"))()))()
  monkeypatch.setattr(run_lib, "open", lambda workdir, data_dir=None: fake)
  assert _cli(["kernel", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "trained on digits: the kernel baseline is for token datasets" in err
  assert "zhang kernel --dataset digits or zhang ntk RUN --out OUT" in err
  assert not (tmp_path / "o").exists()
