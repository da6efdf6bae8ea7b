"""The kernel regime's training dynamics: how fast a network linearized at its initialization
fits its training set (Arora et al. 2019, "Fine-grained analysis of optimization and
generalization for overparameterized two-layer neural networks").

The linearized network is trained full batch, with the run's learning rate schedule and
momentum, on a quadratic loss, the mean over the n examples as the run's minibatch mean is
in expectation. For the run's softmax cross-entropy (``loss="cross_entropy"``) the quadratic
is its expansion at zero logits: the softmax's curvature there is (I - 11^T/C)/C, so the
logits' class-centred part moves towards the target C y - 1 with curvature 1/C.
``"squared"`` is 1/2 |f - y|^2 with one-hot y, Arora et al.'s setting. With the kernel's
eigenmodes (lambda_i, v_i) (``zhang.probes.ntk.empirical``: the class-averaged kernel, the
full one taken as K (x) I_C) each mode evolves alone under SGD momentum in TensorFlow's form
(v = m v + g, w -= lr v): with e_i the mode's residual (target minus output, the network's
initial outputs included) and z_i its velocity in function space (0 at the start),
z <- m z - a_i e, e <- e + lr_t z, where a_i = lambda_i / (n C) (cross-entropy) or
lambda_i / n (squared). Without momentum this is e(k) = prod_t (1 - lr_t a_i) e(0); for
modes slow against the momentum it is gradient descent at lr / (1 - m); here it is
computed exactly. The residual after k steps is ``sum_i psi_i(k)^2 |v_i^T E_0|^2``.

Not modelled: the kernel changing as the network trains (the kernel regime's premise is
that it does not), the minibatches' noise, weight decay, and the cross-entropy's curvature
falling as the softmax saturates.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import numpy as np

from zhang.probes.kernels import interpolation as kernels_lib

LOSSES = ("cross_entropy", "squared")


# Up to this n the eigendecomposition and the interpolation's Cholesky run on one BLAS
# thread: OpenBLAS's threads wait for each other, and on 2 cores shared with other work a
# 1,438 x 1,438 dsyevd took 1.0-15.5 s on two threads against 0.5-0.8 s on one; alone on the
# cores, two would save about 0.2 s.
SINGLE_THREAD_N = 4096


def _blas_threads(n: int):
  """One BLAS thread for an n x n factorization up to ``SINGLE_THREAD_N``, else as set."""
  if n <= SINGLE_THREAD_N:
    try:
      import threadpoolctl  # scikit-learn's dependency
      return threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    except ImportError:
      pass
  return contextlib.nullcontext()


def eigen(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Eigenvalues (ascending, float64) and eigenvectors of a symmetric kernel."""
  k = np.asarray(k, np.float64)
  with _blas_threads(len(k)):
    lam, vec = np.linalg.eigh(k)
  return lam, vec


def targets(labels: np.ndarray, num_classes: int, loss: str) -> np.ndarray:
  """The quadratic's target for integer labels: C y - 1 (cross-entropy at zero logits) or
  the one-hot y (squared), (n, C) float64."""
  y = np.eye(num_classes)[labels]
  return num_classes * y - 1.0 if loss == "cross_entropy" else y


def initial_residual(labels: np.ndarray, outputs: np.ndarray, num_classes: int,
                     loss: str) -> np.ndarray:
  """E_0 = target - the outputs the quadratic sees (cross-entropy: the logits' class-centred
  part; its class mean does not move the loss), (n, C) float64."""
  f = np.asarray(outputs, np.float64)
  if loss == "cross_entropy":
    f = f - f.mean(axis=1, keepdims=True)
  return targets(labels, num_classes, loss) - f


def curvature(lam: np.ndarray, n: int, num_classes: int, loss: str) -> np.ndarray:
  """Each mode's curvature a_i in function space per unit learning rate (module doc)."""
  return lam / (n * (num_classes if loss == "cross_entropy" else 1))


def mode_response(a: np.ndarray, learning_rate: Callable[[np.ndarray], np.ndarray],
                  momentum: float, record_steps: Sequence[int],
                  changes: Sequence[int] = ()) -> np.ndarray:
  """psi[s, i]: mode i's residual after ``record_steps[s]`` steps, per unit of its start.

  The recurrence z <- m z - a e, e <- e + lr_t z (module doc) from (e, z) = (1, 0), with the
  learning rate ``learning_rate(steps)`` constant between consecutive ``changes`` (steps at
  which it may change; a staircase schedule's boundaries) and record steps: each stretch is
  one 2x2 matrix power per mode. Float64.
  """
  a = np.asarray(a, np.float64)
  record = np.asarray(record_steps, np.int64)
  events = np.union1d(np.union1d(record, np.asarray(changes, np.int64)), [0])
  events = events[(events >= 0) & (events <= record.max())]
  out = np.empty((len(record), len(a)))
  state = np.zeros((len(a), 2))
  state[:, 0] = 1.0
  rates = np.asarray(learning_rate(events), np.float64)
  where = {int(s): i for i, s in enumerate(record)}
  powers, rate = {}, rates[0]  # powers of the current rate's step matrix, by length
  for step, next_rate, previous in zip(events, rates, np.concatenate([[0], events[:-1]])):
    length = int(step - previous)
    if length:  # the stretch from the previous event, at its rate
      if length not in powers:
        # [e', z'] = [[1 - lr a, lr m], [-a, m]] [e, z]
        mat = np.empty((len(a), 2, 2))
        mat[:, 0, 0] = 1.0 - rate * a
        mat[:, 0, 1] = rate * momentum
        mat[:, 1, 0] = -a
        mat[:, 1, 1] = momentum
        powers[length] = np.linalg.matrix_power(mat, length)
      state = np.einsum("ijk,ik->ij", powers[length], state)
    if int(step) in where:
      out[where[int(step)]] = state[:, 0]
    if next_rate != rate:
      powers, rate = {}, next_rate
  return out


def residual_curve(psi: np.ndarray, energy: np.ndarray) -> np.ndarray:
  """|E(k)|^2 / |E_0|^2 at each recorded step, from ``mode_response`` and the per-mode
  energies |v_i^T E_0|^2."""
  return (psi ** 2) @ energy / energy.sum()


def first_step(values: np.ndarray, steps: Sequence[int], below: float) -> int | None:
  """The first recorded step whose value is at most ``below``; None if none is."""
  hit = np.flatnonzero(np.asarray(values) <= below)
  return int(np.asarray(steps)[hit[0]]) if len(hit) else None


def accuracy_fit_step(vec: np.ndarray, proj: np.ndarray, psi: np.ndarray, target: np.ndarray,
                      labels: np.ndarray, steps: Sequence[int], threshold: float,
                      coarse: int = 16) -> int | None:
  """The first recorded step at which the linearized network classifies at least
  ``threshold`` of its training examples by ``labels``: the run's fit criterion applied to
  the model's outputs, target - residual (their argmax; the class mean that the
  cross-entropy's target leaves out does not change it).

  Its train accuracy is taken to rise with the step (each mode's residual shrinks; with
  momentum not strictly): None when the last recorded step does not fit; else ``coarse``
  log-spaced recorded steps, then bisection between the last that fails and the first that
  fits. ``vec``, ``proj``: the kernel's eigenvectors and V^T E_0 (n, C).
  """
  steps = np.asarray(steps)
  n, num_classes = proj.shape
  tol = 1e-9

  def accuracy(indices) -> np.ndarray:
    coeff = psi[indices].T[:, :, None] * proj[:, None]  # (n, s, C)
    residual = (vec @ coeff.reshape(n, -1)).reshape(n, len(indices), num_classes)
    out = target[:, None] - residual
    return np.mean(out.argmax(-1) == labels[:, None], axis=0)

  last = len(steps) - 1
  if accuracy([last])[0] < threshold - tol:
    return None
  grid = np.union1d([0], np.round(np.geomspace(1, max(last, 1), coarse)).astype(int))
  grid = grid[grid <= last]
  acc = accuracy(grid)
  hit = np.flatnonzero(acc >= threshold - tol)
  hi = int(grid[hit[0]]) if len(hit) else last
  lo = int(grid[hit[0] - 1]) if len(hit) and hit[0] > 0 else (-1 if len(hit) else
                                                                int(grid[-1]))
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if accuracy([mid])[0] >= threshold - tol:
      hi = mid
    else:
      lo = mid
  return int(steps[hi])


def interpolate(k: np.ndarray, k_test: np.ndarray, labels: np.ndarray,
                num_classes: int) -> tuple[np.ndarray, float]:
  """Minimum-norm interpolation K a = Y for each column block of one-hot labels
  (``zhang.probes.kernels.interpolation.solve``, Cholesky in float64); ``labels`` (R, n) for
  R label sets. Returns the test predictions' argmax (R, m) and a lower bound on cond(K)."""
  y = np.concatenate([np.eye(num_classes)[lab] for lab in labels], axis=1)
  with _blas_threads(len(k)):
    sol = kernels_lib.solve(np.array(k, np.float64, order="F"), y)  # on a copy of k
  pred = (k_test @ sol.coef).reshape(len(k_test), len(labels), num_classes)
  return pred.argmax(-1).T, sol.cond_bound


def energy_top(energy: np.ndarray, top: int) -> float:
  """Share of the initial residual on the ``top`` largest-eigenvalue modes (energies in
  ascending eigenvalue order)."""
  return float(energy[-top:].sum() / energy.sum())


def stable(a: np.ndarray, peak_rate: float, momentum: float) -> bool:
  """Whether every mode converges at the learning rate ``peak_rate``: heavy ball on a
  quadratic needs lr a < 2 (1 + m)."""
  return bool(np.all(peak_rate * np.asarray(a) < 2 * (1 + momentum)))


def horizon_steps(max_steps: int, eval_every: int, factor: float = 10.0) -> int:
  """The default horizon of the prediction: ``factor`` times the run's max_steps, on its
  evaluation grid."""
  return int(math.ceil(factor * max_steps / eval_every) * eval_every)
