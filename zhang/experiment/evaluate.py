"""The evaluation of every replica of a grid on its whole training set and the test set:
per-example sums of loss, accuracy, confidence and entropy, the noisy examples' accuracies,
the test set's calibration bins, which training examples each replica classifies as
labelled (their fit times: ``track_fits``), and how far the weights moved from
initialization. ``eval_batch`` is one batch of either split (one loop runs both);
``grid_metrics`` the whole pass; ``stream_eval_batch`` / ``stream_metrics`` the same on
streamed batches.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from zhang.experiment import randomize
from zhang.experiment.step import (
  DeviceDataset,
  GridFunctions,
  ReplicaConstants,
  StepSettings,
  centring,
  grid_inputs,
)

ECE_BINS = 15  # equal-width bins of max-softmax confidence for the calibration error


def calibration_bins(confidence, correct, weight, num_bins: int = ECE_BINS):
  """Per-bin sums (count, confidence, correct) over the last axis, (..., num_bins, 3):
  bin i holds confidences in (i/num_bins, (i+1)/num_bins] (0 in the first); ``weight``
  counts each example (0 for padding)."""
  bin_index = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  onehot = jax.nn.one_hot(bin_index, num_bins, dtype=jnp.float32) * weight[..., None]
  values = jnp.stack([jnp.ones_like(confidence), confidence, correct], -1)
  return jnp.einsum("...ek,...ev->...kv", onehot, values.astype(jnp.float32))


def expected_calibration_error(bins):
  """ECE from ``calibration_bins``' sums, (..., num_bins, 3) -> (...): the count-weighted
  mean over bins of |bin accuracy - bin mean confidence|."""
  count, conf, correct = bins[..., 0], bins[..., 1], bins[..., 2]
  return jnp.sum(jnp.abs(correct - conf), -1) / jnp.maximum(jnp.sum(count, -1), 1.0)


# Datasets of more classes than this get top-5 accuracies in every evaluation row (ImageNet's
# Table 2 reports both).
TOP5_FROM = 10


def eval_batch(grid_logits: Callable, s: StepSettings, states, reps: ReplicaConstants,
               d: DeviceDataset, b, train_batches: int, eb: int):
  """Batch ``b`` of the evaluation (the train split's batches, then the test split's):
  per replica the sums over its valid examples of loss, accuracy, max-softmax confidence,
  entropy, and of the train split's noisy examples (label changed by the corruption), their
  correct predictions and those correct against the true label, (7, R), then with more
  than ``TOP5_FROM`` classes the top-5 correct (fewer than 5 logits above the label's), (8,
  R); the
  confidence bins (``calibration_bins``, zero on train batches), (R, ECE_BINS, 3); and
  whether each example of the batch is classified as labelled, (R, eb). One loop
  runs both splits, so the model and each randomization are compiled once, not once per
  split."""
  n_train, n_test = d.train_images.shape[0], d.test_images.shape[0]
  is_test = b >= train_batches
  n = jnp.where(is_test, n_test, n_train)
  pos = (b - jnp.where(is_test, train_batches, 0)) * eb + jnp.arange(eb)
  valid = (pos < n).astype(jnp.float32)
  idx = jnp.minimum(pos, n - 1)
  # Both gathers are eb rows; the split's is kept (idx is in range for it).
  i_test, i_train = jnp.minimum(idx, n_test - 1), jnp.minimum(idx, n_train - 1)
  train_u8 = d.train_images[i_train]
  (h, w), (big_h, big_w) = d.test_images.shape[1:3], train_u8.shape[1:3]
  if (big_h, big_w) != (h, w):  # kept uncropped for the crop: evaluate the centre
    top, left = (big_h - h) // 2, (big_w - w) // 2
    train_u8 = train_u8[:, top:top + h, left:left + w]
  x_u8 = jnp.where(is_test, d.test_images[i_test], train_u8)
  y = jnp.where(is_test, d.test_labels[i_test][None], reps.labels[:, i_train])  # (R, eb)
  y_true = jnp.where(is_test, d.test_labels[i_test], d.train_labels[i_train])[None]
  return eval_examples(grid_logits, s, states, reps, d, x_u8, y, y_true, idx, valid, is_test)


def eval_examples(grid_logits: Callable, s: StepSettings, states, reps: ReplicaConstants,
                  d: DeviceDataset, x_u8, y, y_true, idx, valid, is_test):
  """``eval_batch``'s sums, bins and hits of the examples ``idx`` (eb,) of one split: their
  images ``x_u8``, each replica's labels ``y`` (R, eb), the true ones ``y_true`` (1, eb),
  which count (``valid``, float (eb,)), and whether the split is the test split."""
  split = jnp.where(is_test, randomize.TEST, randomize.TRAIN)
  logits = grid_logits(states, grid_inputs(s, reps, d, x_u8, idx, split), *centring(s, reps))
  logp = jax.nn.log_softmax(logits)
  prob = jnp.exp(logp)
  pred = jnp.argmax(logits, -1)
  correct = (pred == y).astype(jnp.float32)
  confidence = jnp.max(prob, -1)
  noisy = (y != y_true).astype(jnp.float32)  # never on test batches
  per_example = jnp.stack([
      -jnp.take_along_axis(logp, y[..., None], -1)[..., 0],
      correct,
      confidence,
      -jnp.sum(prob * logp, -1),
      noisy,
      noisy * correct,
      noisy * (pred == y_true).astype(jnp.float32),
  ] + ([(jnp.sum(logits > jnp.take_along_axis(logits, y[..., None], -1), -1) < 5)
        .astype(jnp.float32)] if s.num_classes > TOP5_FROM else []))  # (7 or 8, R, eb)
  bins = calibration_bins(confidence, correct, valid * is_test.astype(jnp.float32))
  return jnp.sum(per_example * valid, axis=-1), bins, pred == y


def grid_metrics(g: GridFunctions, states, reps: ReplicaConstants, d: DeviceDataset):
  """Mean loss, accuracy, max-softmax confidence and entropy of every replica on its
  training set and the test set; train accuracy on the noisy examples (against their
  corrupted and their true labels) and on the clean ones (NaN without such examples); the
  test set's calibration error and its bins (R, ECE_BINS, 3: mean confidence, accuracy,
  count). And whether each training example is classified as labelled, (R, n_train)."""
  n_train, n_test = d.train_images.shape[0], d.test_images.shape[0]
  eb = min(g.settings.eval_batch_size, max(n_train, n_test))
  train_batches = -(-n_train // eb)
  num_batches = train_batches + -(-n_test // eb)
  # (batches, 7, R), (batches, R, K, 3), (batches, R, eb)
  sums, bins, hits = jax.lax.map(
      functools.partial(_eval_batch_at, g, states, reps, d, train_batches, eb),
      jnp.arange(num_batches))
  hits = jnp.moveaxis(hits[:train_batches], 1, 0).reshape(hits.shape[1], -1)[:, :n_train]
  train_sums = jnp.sum(sums[:train_batches], axis=0)
  out = _split_means(train_sums / n_train, jnp.sum(sums[train_batches:], axis=0) / n_test,
                     train_sums, n_train)
  return _finish_metrics(g, states, reps, out, jnp.sum(bins, axis=0)), hits


def _finish_metrics(g: GridFunctions, states, reps: ReplicaConstants, out: dict, bins):
  """``out`` with the calibration error and bins of ``bins`` (R, K, 3: count, confidence
  sum, correct sum) and the weight changes."""
  out["test_ece"] = expected_calibration_error(bins)
  count = bins[..., 0]
  mean = lambda a: jnp.where(count > 0, a / jnp.maximum(count, 1.0), jnp.nan)
  out["test_reliability"] = jnp.stack([mean(bins[..., 1]), mean(bins[..., 2]), count], -1)
  if reps.initial_params is not None:
    out.update(weight_changes(states.params, reps.initial_params, g.settings.end_layers))
  return out


def stream_eval_batch(g: GridFunctions, states, reps: ReplicaConstants, d: DeviceDataset,
                      images, labels, indices, valid, is_test):
  """One batch of a streamed evaluation (``zhang.experiment.stream.eval_batches``): the
  sums, bins and hits of ``eval_batch`` for the examples ``indices`` of the test split
  (``is_test``, their true ``labels``) or of the training set (each replica's labels drawn
  from its key, as ``stream_chunk`` draws them). ``valid`` (eb,) bool marks the padding."""
  s = g.settings
  y_true = labels[None]
  y = jnp.where(is_test, y_true, jax.vmap(randomize.corrupt_labels_at, (0, None, None, 0, None))(
      reps.rand_key, labels, indices, reps.corruption, s.num_classes).astype(jnp.int32))
  return eval_examples(g.logits, s, states, reps, d, images, y, y_true, indices,
                       valid.astype(jnp.float32), is_test)


def stream_metrics(g: GridFunctions, states, reps: ReplicaConstants, train_sums, test_sums,
                   bins, n_train: int, n_test: int):
  """``grid_metrics``' metrics from a streamed evaluation's summed batches: the train and
  test splits' sums (7 or 8, R), their bins (R, K, 3), and the splits' sizes."""
  out = _split_means(train_sums / n_train, test_sums / n_test, train_sums, n_train)
  return _finish_metrics(g, states, reps, out, bins)


def relative_change(params, initial):
  """||w - w_0|| / ||w_0|| over every leaf, per replica (leading axis), in float32."""
  sq = lambda tree: sum(jnp.sum(jnp.square(a.astype(jnp.float32)).reshape(a.shape[0], -1), 1)
                        for a in jax.tree.leaves(tree))
  moved = jax.tree.map(lambda a, b: a - b, params, initial)
  return jnp.sqrt(sq(moved) / jnp.maximum(sq(initial), 1e-30))


def weight_changes(params, initial, end_layers: tuple[str, ...] = ()) -> dict:
  """How far each replica's weights moved from initialization (``relative_change``):
  ``weight_change`` over all parameters, and ``weight_change_first`` / ``_last`` over the
  first and last layers' (``end_layers``: their top-level parameter names)."""
  out = {"weight_change": relative_change(params, initial)}
  for name, layer in zip(("first", "last"), end_layers):
    out[f"weight_change_{name}"] = relative_change(params[layer], initial[layer])
  return out


def _eval_batch_at(g: GridFunctions, states, reps, d, train_batches: int, eb: int, b):
  return eval_batch(g.logits, g.settings, states, reps, d, b, train_batches, eb)


def _split_means(train, test, train_sums, n_train: int) -> dict:
  """The per-split means of ``eval_batch``'s sums (7, R) as metrics; the noisy and clean
  examples' train accuracies from the train split's sums."""
  out = {"train_loss": train[0], "train_acc": train[1]}
  n_noisy, correct_noisy, true_noisy = train_sums[4], train_sums[5], train_sums[6]
  n_clean = n_train - n_noisy
  ratio = lambda a, n: jnp.where(n > 0, a / jnp.maximum(n, 1.0), jnp.nan)
  out["train_acc_clean"] = ratio(train_sums[1] - correct_noisy, n_clean)
  out["train_acc_noisy"] = ratio(correct_noisy, n_noisy)
  out["train_acc_noisy_vs_true"] = ratio(true_noisy, n_noisy)
  out.update({f"test_{k}": v for k, v in zip(("loss", "acc", "confidence", "entropy"), test)})
  if train.shape[0] > 7:  # top-5 accuracies (``TOP5_FROM``)
    out["train_top5"], out["test_top5"] = train[7], test[7]
  return out


def evaluate(g: GridFunctions, states, reps: ReplicaConstants, d: DeviceDataset):
  """The evaluation's metrics (``grid_metrics``), a dict of per-replica arrays."""
  return grid_metrics(g, states, reps, d)[0]


def track_fits(fit_since, hits, step):
  """``fit_since`` (R, n_train) after an evaluation at ``step`` whose ``hits`` say which
  training examples each replica classifies as labelled (``evaluate_and_track``)."""
  return jnp.where(hits, jnp.where(fit_since < 0, step, fit_since), -1)


def evaluate_and_track(g: GridFunctions, states, reps: ReplicaConstants, d: DeviceDataset,
                       fit_since, step):
  """``evaluate``'s metrics, and ``fit_since`` (R, n_train) updated by this evaluation at
  ``step``: the first evaluation step from which each training example has been classified
  as labelled at every evaluation since, -1 for one that is not now. The same pass over
  the data: no second evaluation."""
  out, hits = grid_metrics(g, states, reps, d)
  return out, track_fits(fit_since, hits, step)
