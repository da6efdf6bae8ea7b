"""Section 5: minimum-norm kernel interpolation, K a = Y, on raw or engineered features.

For a positive definite kernel K on the training set, a = K^{-1} Y (one-hot Y) is
the interpolant of smallest RKHS norm, sqrt(trace(a^T K a)); for the linear kernel
it is the minimum-L2-norm weight matrix W = X^T a, the point SGD from zero
converges to. The paper reports that this needs no regularization to generalize,
and that the norm does not track test error.

Memory: one n x n float64 buffer. Its upper triangle is accumulated one feature
block at a time, in column slabs, and mirrored; Cholesky (dpotrf, clean=0)
writes the factor into the lower triangle only, so after the solve the upper
triangle plus the saved diagonal still hold K, which gives K a (dsymm) and the
norm without a second copy. Everything is float64.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import scipy.linalg.blas as blas  # dsymm: K a from one triangle
import scipy.linalg.lapack as lapack

from zhang.errors import UsageError
from zhang.experiment import data as data_lib
from zhang.probes.kernels import features as features_lib
from zhang.runtime import memory as memory_lib

KERNELS = ("rbf", "linear")
_GB = 1e9
# Fixed cost beyond the arrays we plan: interpreter, jax, dataset, jit caches.
_OVERHEAD_BYTES = int(1.5 * _GB)
_DEFAULT_MEMORY_FRACTION = 0.8
_ROW_BLOCK = 1024


class KernelMemoryError(UsageError):
  """The kernel matrix would not fit in the memory budget."""


class SingularKernelError(UsageError):
  """K (+ ridge) is not numerically positive definite; K a = Y has no stable solution."""


# --------------------------------------------------------------------------- memory

available_memory_bytes = memory_lib.available_host_bytes  # the kernels live on the host


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes the solve needs, against a budget; `max_n_train` is the largest n that fits."""
  n_train: int
  n_test: int
  kernel_bytes: int  # n x n train kernel
  test_bytes: int  # n_test x n cross kernel
  feature_bytes: int  # one feature block for all n + n_test images
  total_bytes: int
  budget_bytes: int
  max_n_train: int

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.budget_bytes

  def describe(self) -> str:
    return (f"kernel {self.n_train} x {self.n_train} float64 = {self.kernel_bytes / _GB:.2f} GB, "
            f"test {self.n_test} x {self.n_train} = {self.test_bytes / _GB:.2f} GB, "
            f"features {self.feature_bytes / _GB:.2f} GB; total with overhead "
            f"{self.total_bytes / _GB:.2f} GB of a {self.budget_bytes / _GB:.2f} GB budget")


def plan_memory(n_train: int, n_test: int, block_dim: int, num_classes: int,
                budget_bytes: int | None = None) -> MemoryPlan:
  """Plans the solve's memory; budget defaults to 80% of available memory."""
  if budget_bytes is None:
    budget_bytes = int(_DEFAULT_MEMORY_FRACTION * available_memory_bytes())

  def total(n):
    # K, the cross kernel, one float64 feature block for all rows, and the
    # (n, classes) right-hand sides, coefficients and fits.
    return (8 * n * n + 8 * n_test * n + 8 * (n + n_test) * block_dim
            + 8 * max(n, n_test) * _ROW_BLOCK + 4 * 8 * n * num_classes + _OVERHEAD_BYTES)

  # Largest n with total(n) <= budget: the positive root of a quadratic.
  lin = 8 * (n_test + block_dim + _ROW_BLOCK + 4 * num_classes)
  const = 8 * n_test * block_dim + _OVERHEAD_BYTES - budget_bytes
  max_n = 0 if const > 0 else int((-lin + math.sqrt(lin * lin - 32 * const)) / 16)
  while max_n > 0 and total(max_n) > budget_bytes:
    max_n -= 1
  while max_n > 0 and total(max_n + 1) <= budget_bytes:
    max_n += 1
  return MemoryPlan(n_train, n_test, 8 * n_train * n_train, 8 * n_test * n_train,
                    8 * (n_train + n_test) * block_dim, total(n_train), budget_bytes, max_n)


# --------------------------------------------------------------------------- kernels

@dataclasses.dataclass
class Gram:
  """Inner products of features: train (n, n) F-ordered, symmetric; test (m, n)."""
  train: np.ndarray
  test: np.ndarray
  sq_train: np.ndarray
  sq_test: np.ndarray


def _fill_lower(k: np.ndarray) -> None:
  """Copies the upper triangle of k into its lower triangle, in row blocks."""
  n = len(k)
  for r0 in range(0, n, _ROW_BLOCK):
    r1 = min(n, r0 + _ROW_BLOCK)
    k[r0:r1, :r0] = k[:r0, r0:r1].T
    diag = k[r0:r1, r0:r1]
    diag[...] = np.triu(diag) + np.triu(diag, 1).T


def gram(fmap: features_lib.FeatureMap, train_images: np.ndarray, test_images: np.ndarray,
         log: Callable[[str], None] = lambda s: None) -> Gram:
  """Gram matrices of `fmap` features, accumulated one feature block at a time."""
  n, m = len(train_images), len(test_images)
  images = np.concatenate([train_images, test_images])
  k = np.zeros((n, n), order="F")
  kt = np.zeros((m, n), order="F")
  sq = np.zeros(n + m)
  for i, (_, block) in enumerate(fmap.blocks):
    x = block(images)  # (n + m, d_block) float64
    sq += np.einsum("ij,ij->i", x, x)
    # Column slabs of the upper triangle and of the cross kernel. (One big dsyrk
    # call segfaults in this OpenBLAS for n >= 16000; slabs also bound the temporaries.)
    for c0 in range(0, n, _ROW_BLOCK):
      c1 = min(n, c0 + _ROW_BLOCK)
      k[:c1, c0:c1] += x[:c1] @ x[c0:c1].T
      if m:
        kt[:, c0:c1] += x[n:] @ x[c0:c1].T
    log(f"features: block {i + 1}/{len(fmap.blocks)} ({x.shape[1]} dims) done")
    del x
  _fill_lower(k)
  return Gram(k, kt, sq[:n], sq[n:])


def median_gamma(g: Gram, seed: int = 0, sample: int = 1000) -> float:
  """1 / median squared distance between training points (a sample of them)."""
  n = len(g.sq_train)
  idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
  sub = g.train[np.ix_(idx, idx)]
  sq = g.sq_train[idx]
  d2 = sq[:, None] + sq[None, :] - 2 * sub
  med = float(np.median(d2[np.triu_indices(len(idx), 1)])) if len(idx) > 1 else 1.0
  return 1.0 / med if med > 0 else 1.0


def _rbf_inplace(k: np.ndarray, sq_rows: np.ndarray, sq_cols: np.ndarray, gamma: float):
  """k <- exp(-gamma * |x_i - x_j|^2) from k = <x_i, x_j>, without temporaries."""
  k *= -2.0
  k += sq_rows[:, None]
  k += sq_cols[None, :]
  np.maximum(k, 0.0, out=k)  # rounding can make tiny distances negative
  k *= -gamma
  np.exp(k, out=k)


def apply_kernel(g: Gram, kind: str, gamma: float | None = None) -> None:
  """Turns the Gram matrices into kernel matrices in place (linear: unchanged)."""
  if kind == "linear":
    return
  if kind != "rbf":
    raise UsageError(f"unknown kernel {kind!r}: choose one of {', '.join(KERNELS)}")
  _rbf_inplace(g.train, g.sq_train, g.sq_train, gamma)
  if g.test.size:
    _rbf_inplace(g.test, g.sq_test, g.sq_train, gamma)
  g.train[np.diag_indices(len(g.train))] = 1.0  # exact, whatever the rounding above


def kernel_matrix(kind: str, x1: np.ndarray, x2: np.ndarray, gamma: float = 1.0) -> np.ndarray:
  """Small dense kernel matrix k(x1_i, x2_j) (for tests and small problems)."""
  x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
  k = x1 @ x2.T
  if kind == "rbf":
    _rbf_inplace(k, (x1 * x1).sum(1), (x2 * x2).sum(1), gamma)
  elif kind != "linear":
    raise UsageError(f"unknown kernel {kind!r}: choose one of {', '.join(KERNELS)}")
  return k


# --------------------------------------------------------------------------- solve

@dataclasses.dataclass(frozen=True)
class Solution:
  coef: np.ndarray  # a, (n, classes)
  fitted: np.ndarray  # K a (without the ridge), (n, classes)
  rkhs_norm: float  # sqrt(trace(a^T K a))
  cond_bound: float  # (max L_ii / min L_ii)^2 <= cond(K + ridge I), from the factor


def solve(k: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> Solution:
  """Solves (K + ridge I) a = Y by Cholesky, overwriting k's lower triangle.

  k must be symmetric; pass it F-ordered to avoid a copy. Afterwards k's upper
  triangle and diagonal still hold K. Raises SingularKernelError when K + ridge I
  is not numerically positive definite.
  """
  if not k.flags.f_contiguous:
    k = np.asfortranarray(k, dtype=np.float64)
  n = len(k)
  y = np.asfortranarray(y, dtype=np.float64).reshape(n, -1)
  diag = np.diagonal(k).copy()
  if ridge:
    k[np.diag_indices(n)] += ridge
  _, info = lapack.dpotrf(k, lower=1, clean=0, overwrite_a=1)
  hint = ("add a small ridge (e.g. `ridge` 1e-8 times the kernel's scale), use the rbf "
          "kernel, or use fewer training points than feature dimensions")
  if info > 0:
    k[np.diag_indices(n)] = diag
    raise SingularKernelError(
        f"the {n} x {n} kernel matrix is singular or not positive definite (Cholesky "
        f"failed at pivot {info}); the minimum-norm interpolant is ill-posed: {hint}")
  if info < 0:
    raise RuntimeError(f"dpotrf: illegal argument {-info}")
  # cond(K) >= (max L_ii / min L_ii)^2; LAPACK's dpocon is far too slow at this size.
  pivots = np.diagonal(k)
  cond_bound = float((pivots.max() / pivots.min()) ** 2)
  if cond_bound * n * np.finfo(np.float64).eps > 1:
    k[np.diag_indices(n)] = diag
    raise SingularKernelError(
        f"the {n} x {n} kernel matrix is numerically singular (condition number at least "
        f"{cond_bound:.1e}); the interpolant would be rounding noise: {hint}")
  coef, info = lapack.dpotrs(k, y, lower=1)
  if info:
    raise RuntimeError(f"dpotrs failed: info={info}")
  k[np.diag_indices(n)] = diag  # restore K (upper triangle was never written)
  fitted = blas.dsymm(1.0, k, coef, side=0, lower=0)
  return Solution(coef, fitted, math.sqrt(max(float(np.sum(coef * fitted)), 0.0)), cond_bound)


# --------------------------------------------------------------------------- experiment

def _check_duplicates(images: np.ndarray) -> None:
  flat = np.ascontiguousarray(images.reshape(len(images), -1))
  _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
  if len(first) < len(flat):
    inverse = inverse.reshape(-1)
    i = int(np.flatnonzero(first[inverse] != np.arange(len(flat)))[0])
    raise SingularKernelError(
        f"training images {int(first[inverse[i]])} and {i} are identical, so every kernel "
        f"matrix on them is singular ({len(flat) - len(first)} repeats in all): "
        f"add `ridge` (e.g. 1e-8) or use another `n_train`")


def commuted_errors(ds, predicted: np.ndarray, n_train: int) -> dict:
  """For a token dataset: the test error on the pairs whose commuted pair (b, a) trains and
  on the rest, and the share of the former (``zhang.experiment.data.commuted_in_train``); empty for
  images."""
  if getattr(ds, "inputs", "images") != "tokens" or not len(predicted):
    return {}
  seen = data_lib.commuted_in_train(ds, n_train, len(predicted))
  wrong = predicted != ds.test_labels[:len(predicted)]
  return {"commuted_in_train": float(seen.mean()),
          "test_error_commuted_in_train": float(wrong[seen].mean()) if seen.any() else None,
          "test_error_commuted_not_in_train": (float(wrong[~seen].mean()) if (~seen).any()
                                               else None)}


def evaluate(ds, n_train: int, n_test: int, kernel: str = "rbf", features: str = "raw",
             num_filters: int = 256, ridge: float = 0.0, gamma: float | None = None,
             seed: int = 0, memory_budget_bytes: int | None = None,
             log: Callable[[str], None] = lambda s: None) -> dict:
  """Fits the minimum-norm interpolant on the first n_train examples of `ds`.

  Args:
    ds: a zhang.experiment.data.Dataset.
    n_train, n_test: how many training / test examples (the first ones).
    kernel: "rbf" (Gaussian; gamma defaults to 1 / median squared distance) or
      "linear".
    features: "raw", "gabor" or "random_conv" (num_filters random filters).
    ridge: added to K's diagonal; 0 gives the interpolant.
    memory_budget_bytes: default 80% of available memory.
  Returns:
    A JSON-able dict: test_error, train_error, norm (= rkhs_norm,
    sqrt(trace(a^T K a))), weight_norm (linear kernel: ||X^T a||_F), timings,
    the memory plan and a lower bound on the condition number of K + ridge I.
  """
  start = time.perf_counter()
  _validate(ds, n_train, n_test, kernel, features, ridge, gamma)
  fmap = features_lib.get(features, ds.train_images.shape[1:], num_filters, seed,
                          vocab=ds.num_classes if _tokens(ds) else None)
  mem = _plan(ds, n_train, n_test, kernel, features, fmap, ridge, memory_budget_bytes, log)
  train_images, test_images = ds.train_images[:n_train], ds.test_images[:n_test]
  if ridge == 0:
    _check_duplicates(train_images)
  y = np.zeros((n_train, ds.num_classes), order="F")
  y[np.arange(n_train), ds.train_labels[:n_train]] = 1.0

  t0 = time.perf_counter()
  g = gram(fmap, train_images, test_images, log)
  if kernel == "rbf" and gamma is None:
    gamma = median_gamma(g, seed)
  apply_kernel(g, kernel, gamma)
  t_kernel = time.perf_counter() - t0
  log(f"kernel: {kernel} on {features} ({fmap.dim} dims) built in {t_kernel:.1f}s; solving")
  t0 = time.perf_counter()
  sol = solve(g.train, y, ridge)
  t_solve = time.perf_counter() - t0
  pred_test = g.test @ sol.coef if n_test else np.zeros((0, ds.num_classes))
  del g
  return {
      "dataset": ds.name, "n_train": n_train, "n_test": n_test, "kernel": kernel,
      "features": features, "feature_dim": fmap.dim,
      "num_filters": num_filters if features == "random_conv" else None,
      "ridge": ridge, "gamma": gamma if kernel == "rbf" else None, "seed": seed,
      **_errors(ds, sol, pred_test, n_train, n_test),
      "norm": sol.rkhs_norm, "rkhs_norm": sol.rkhs_norm,
      "weight_norm": _weight_norm(fmap, train_images, sol) if kernel == "linear" else None,
      "coef_norm": float(np.linalg.norm(sol.coef)),
      "max_fit_residual": float(np.abs(sol.fitted + ridge * sol.coef - y).max()),
      "condition_lower_bound": sol.cond_bound,
      "memory_bytes": mem.total_bytes, "memory_budget_bytes": mem.budget_bytes,
      "max_n_train": mem.max_n_train,
      "seconds_kernel": t_kernel, "seconds_solve": t_solve,
      "seconds": time.perf_counter() - start,
      **commuted_errors(ds, pred_test.argmax(1), n_train),
  }


def _tokens(ds) -> bool:
  return getattr(ds, "inputs", "images") == "tokens"


def _validate(ds, n_train: int, n_test: int, kernel: str, features: str, ridge: float,
              gamma: float | None) -> None:
  """The settings against each other and against the dataset; UsageError naming the
  setting (in backticks: ``zhang.errors.on_command_line`` makes it a flag)."""
  if kernel not in KERNELS:
    raise UsageError(f"unknown kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
  if ridge < 0 or not math.isfinite(ridge):
    raise UsageError(f"`ridge` must be a finite number >= 0; got {ridge}")
  if gamma is not None and not gamma > 0:
    raise UsageError(f"`gamma` must be > 0; got {gamma}")
  have_train, have_test = len(ds.train_labels), len(ds.test_labels)
  if not 1 <= n_train <= have_train:
    raise UsageError(f"`n_train` {n_train} is out of range for {ds.name}: use "
                     f"1..{have_train}")
  if not 0 <= n_test <= have_test:
    raise UsageError(f"`n_test` {n_test} is out of range for {ds.name}: use 0..{have_test}")
  if _tokens(ds) != (features == "onehot"):
    raise UsageError(f"{ds.name} has {'token' if _tokens(ds) else 'image'} inputs: use "
                     f"`features` " + ("onehot" if _tokens(ds) else "raw, gabor or random_conv"))


def _plan(ds, n_train: int, n_test: int, kernel: str, features: str, fmap, ridge: float,
          memory_budget_bytes: int | None, log: Callable[[str], None]) -> MemoryPlan:
  """The memory plan, refused before any kernel entry is computed when it cannot fit or
  when the kernel would be singular by its rank."""
  mem = plan_memory(n_train, n_test, fmap.max_block_dim, ds.num_classes, memory_budget_bytes)
  log(f"memory: {mem.describe()}")
  if not mem.fits and mem.max_n_train == 0:
    raise KernelMemoryError(
        f"the memory budget of {mem.budget_bytes / _GB:.2f} GB is below the fixed "
        f"{_OVERHEAD_BYTES / _GB:.1f} GB overhead plus the test kernel: raise `memory_gb` "
        f"or lower `n_test`")
  if not mem.fits:
    raise KernelMemoryError(
        f"`n_train` {n_train} needs {mem.total_bytes / _GB:.1f} GB (the kernel alone "
        f"{mem.kernel_bytes / _GB:.1f} GB) but the memory budget is "
        f"{mem.budget_bytes / _GB:.1f} GB: use `n_train` {mem.max_n_train} or less (the "
        f"largest that fits), lower `n_test`, or raise the budget with `memory_gb`")
  if kernel == "linear" and fmap.dim < n_train and ridge == 0:
    raise SingularKernelError(
        f"the linear kernel on {features} features has rank <= {fmap.dim} < n = {n_train}, "
        f"so K is singular and no exact interpolant is unique: use `n_train` <= {fmap.dim}, "
        f"the rbf kernel, or add `ridge`")
  return mem


def _errors(ds, sol: Solution, pred_test: np.ndarray, n_train: int, n_test: int) -> dict:
  train = float(np.mean(sol.fitted.argmax(1) != ds.train_labels[:n_train]))
  test = float(np.mean(pred_test.argmax(1) != ds.test_labels[:n_test])) if n_test else None
  return {"test_error": test, "train_error": train}


def _weight_norm(fmap, train_images: np.ndarray, sol: Solution) -> float:
  """||X^T a||_F of the linear kernel, from the features, independently of K."""
  sq = 0.0
  for _, block in fmap.blocks:
    sq += float(np.sum((block(train_images).T @ sol.coef) ** 2))
  return math.sqrt(sq)
