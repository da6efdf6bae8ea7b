"""One replica's train step and evaluation; ``jax.vmap`` makes them a grid's.

Everything here is a pure function of (state, per-replica data, global step). The global
step is shared by all replicas (they train in lockstep), so the learning rate, the epoch and
the position in the epoch's batch order are functions of it alone, which makes a run
resumable to the same bits. Per-replica things (keys, labels, kind) live in a ``Replicas``
pytree whose leaves have the replica axis first, like the train state's.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from zhang import data as data_lib
from zhang import randomize


class TrainState(NamedTuple):
  """One replica's state (a leading replica axis when stacked)."""
  params: Any
  batch_stats: Any  # {} for models without batch norm
  momentum: Any  # optax state of the gradient transformation


class Replicas(NamedTuple):
  """Per-replica constants of the grid, each with a leading replica axis."""
  order_key: jax.Array  # batch order
  rand_key: jax.Array  # randomization
  labels: jax.Array  # int32 (N_train,), the replica's (possibly corrupted) training labels
  shared_perm: jax.Array  # int32 (H*W,), the shuffled-pixels permutation


class Data(NamedTuple):
  """Arrays shared by every replica; on the device once."""
  train_images: jax.Array  # uint8 (N, H, W, C), centre-cropped
  test_images: jax.Array
  test_labels: jax.Array  # int32, never corrupted
  gauss_mean: jax.Array  # float32 (C,)
  gauss_std: jax.Array


class Hyper(NamedTuple):
  """Static hyper-parameters of the step (hashable, so jit can close over them)."""
  batch_size: int
  learning_rate: float
  momentum: float
  lr_decay: float
  lr_decay_every: int
  weight_decay: float
  eval_batch_size: int
  segments: tuple[tuple[str, int, int], ...]  # (kind, start, stop): replicas grouped by kind
  strategy: str = "vmap"  # how a device runs its replicas: "vmap" (batched) or "map" (a loop)
  compute_dtype: str = "float32"  # "bfloat16": forward/backward in bf16, params and optimizer fp32


def learning_rate(h: Hyper, step):
  """The paper's staircase schedule: lr x decay^(step // decay_every)."""
  return h.learning_rate * h.lr_decay ** (step // h.lr_decay_every).astype(jnp.float32)


def gradient_transform(h: Hyper) -> optax.GradientTransformation:
  """SGD momentum (TensorFlow's form: v = m v + g; w -= lr v) with optional L2 decay.

  The learning rate is applied outside, from the global step, so the optimizer state holds
  no step counter of its own.
  """
  parts = [optax.add_decayed_weights(h.weight_decay)] if h.weight_decay else []
  return optax.chain(*parts, optax.trace(decay=h.momentum))


class Functions(NamedTuple):
  hyper: Hyper
  init: Any  # (init_key, input_shape) -> TrainState
  train_chunk: Any  # (states, reps, data, step0, num_steps) -> (states, mean batch loss)
  evaluate: Any  # (states, reps, data) -> dict of (R,) metrics


def make_functions(module, h: Hyper, has_batch_norm: bool, mesh=None,
                   compiler_options: dict | None = None) -> Functions:
  """The jit-compiled functions of a grid, for a Flax module and hyper-parameters.

  With a ``mesh`` (axes ``replica``, ``data``), the state stays sharded on ``replica``, a
  batch is split on ``data`` too, and the small outputs (losses, metrics) come back
  replicated so every process can read them. ``compiler_options``: XLA options for the
  train chunk and the evaluation (``zhang.train.compiler_options``).
  """
  tx = gradient_transform(h)
  jit = functools.partial(jax.jit, compiler_options=compiler_options or None)
  if mesh is not None:
    by_replica = NamedSharding(mesh, P("replica"))
    everywhere = NamedSharding(mesh, P())
    split_batch = mesh.shape["data"] > 1
    chunk_jit = functools.partial(jit, donate_argnums=(0,),
                                  out_shardings=(by_replica, everywhere))
    eval_jit = functools.partial(jit, out_shardings=everywhere)
  else:
    split_batch = False
    chunk_jit = functools.partial(jit, donate_argnums=(0,))
    eval_jit = jit

  def constrain(x):
    """Splits each replica's batch over the ``data`` axis (when it has several devices)."""
    if not split_batch:
      return x
    spec = P("replica", "data", *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  def init_one(init_key, sample):
    variables = module.init(init_key, sample, train=False)
    params = variables["params"]
    return TrainState(params, variables.get("batch_stats", {}), tx.init(params))

  def inputs_one(kind, rep: Replicas, d: Data, x_u8, indices, split):
    """One replica's scaled, randomized, whitened inputs: ``x_u8`` holds the examples
    ``indices`` of ``split``."""
    x = randomize.randomize_inputs(kind, rep.rand_key, data_lib.scale(x_u8), indices, split,
                                   rep.shared_perm, d.gauss_mean, d.gauss_std)
    return data_lib.whiten(x)

  def inputs(reps: Replicas, d: Data, x_u8, indices, split):
    """Every replica's inputs (R, B, H, W, C); each kind's group computes only its own.

    ``x_u8`` (R, B, H, W, C) and ``indices`` (R, B) are each replica's examples, or both
    come without the replica axis when every replica sees the same examples (evaluation).
    """
    shared = indices.ndim == 1
    axes = (0, None) + ((None, None) if shared else (0, 0)) + (None,)
    own = (lambda a, lo, hi: a) if shared else (lambda a, lo, hi: a[lo:hi])
    parts = [jax.vmap(functools.partial(inputs_one, kind), axes)(
        jax.tree.map(lambda a: a[lo:hi], reps), d, own(x_u8, lo, hi), own(indices, lo, hi),
        split) for kind, lo, hi in h.segments]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

  low_precision = h.compute_dtype != "float32"

  def apply(state: TrainState, x, train: bool):
    if low_precision:  # master weights stay fp32; the gradient flows back through the cast
      dtype = jnp.dtype(h.compute_dtype)
      state = state._replace(params=jax.tree.map(lambda p: p.astype(dtype), state.params))
      x = x.astype(dtype)
    logits, batch_stats = _apply(state, x, train)
    return logits.astype(jnp.float32), batch_stats

  def _apply(state: TrainState, x, train: bool):
    variables = {"params": state.params}
    if has_batch_norm:
      variables["batch_stats"] = state.batch_stats
      if train:
        logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]
    return module.apply(variables, x, train=train), state.batch_stats

  def step_one(state: TrainState, x, y, lr):
    def loss_fn(params):
      logits, batch_stats = apply(state._replace(params=params), x, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, momentum = tx.update(grads, state.momentum, state.params)
    params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
    return TrainState(params, batch_stats, momentum), loss

  def over_replicas(fn, *args):
    """fn applied to each replica's slice of ``args``: batched (vmap) or in a loop (map).

    A vmapped convolution becomes one grouped convolution, which some backends run slowly;
    a loop runs ordinary convolutions one replica after another.
    """
    if h.strategy == "map":
      return jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn)(*args)

  def grid_step(states, x, y, lr):
    return over_replicas(lambda s, x, y: step_one(s, x, y, lr), states, x, y)

  def grid_logits(states, x):
    return over_replicas(lambda s, x: apply(s, x, train=False)[0], states, x)

  if mesh is not None:
    # Each device runs the model on its own replicas. Left to the automatic partitioner, a
    # vmapped convolution becomes one grouped convolution that XLA does not split by group:
    # it gathers every replica's weights and runs the whole grid on every device.
    # shard_map makes the replica axis manual; the data axis stays automatic.
    manual = functools.partial(jax.shard_map, mesh=mesh, axis_names={"replica"},
                               check_vma=False)
    grid_step = manual(grid_step, in_specs=(P("replica"), P("replica"), P("replica"), P()),
                       out_specs=(P("replica"), P("replica")))
    grid_logits = manual(grid_logits, in_specs=(P("replica"), P("replica")),
                         out_specs=P("replica"))

  def epoch_orders(reps: Replicas, epoch, n):
    return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n))(
        reps.order_key)

  @chunk_jit
  def train_chunk(states, reps: Replicas, d: Data, step0, num_steps):
    n = d.train_images.shape[0]
    per_epoch = n // h.batch_size  # the last partial batch of an epoch is dropped

    def body(i, carry):
      states, orders, loss_sum = carry
      step = step0 + i
      pos = step % per_epoch
      # A new epoch's order when one starts (the step is shared: this stays a real branch).
      orders = jax.lax.cond(pos == 0, lambda: epoch_orders(reps, step // per_epoch, n),
                            lambda: orders)
      indices = jax.lax.dynamic_slice_in_dim(orders, pos * h.batch_size, h.batch_size, 1)
      x = constrain(inputs(reps, d, jnp.take(d.train_images, indices, axis=0), indices,
                           randomize.TRAIN))
      y = constrain(jnp.take_along_axis(reps.labels, indices, axis=1))
      states, loss = grid_step(states, x, y, learning_rate(h, step))
      return states, orders, loss_sum + loss

    orders = epoch_orders(reps, step0 // per_epoch, n)
    zeros = jnp.zeros(reps.labels.shape[:1], jnp.float32)
    states, _, loss_sum = jax.lax.fori_loop(0, num_steps, body, (states, orders, zeros))
    return states, loss_sum / num_steps

  @eval_jit
  def evaluate(states, reps: Replicas, d: Data):
    """Mean loss, accuracy, max-softmax confidence and entropy of every replica on the train
    and test splits. One loop runs the batches of both splits (train, then test): the
    model's forward pass and each randomization are compiled once, not once per split."""
    n_train, n_test = d.train_images.shape[0], d.test_images.shape[0]
    eb = min(h.eval_batch_size, max(n_train, n_test))
    train_batches = -(-n_train // eb)
    num_batches = train_batches + -(-n_test // eb)

    def batch(b):
      is_test = b >= train_batches
      n = jnp.where(is_test, n_test, n_train)
      pos = (b - jnp.where(is_test, train_batches, 0)) * eb + jnp.arange(eb)
      valid = (pos < n).astype(jnp.float32)
      idx = jnp.minimum(pos, n - 1)
      # Both gathers are eb rows; the split's is kept (idx is in range for it).
      i_test, i_train = jnp.minimum(idx, n_test - 1), jnp.minimum(idx, n_train - 1)
      x_u8 = jnp.where(is_test, d.test_images[i_test], d.train_images[i_train])
      y = jnp.where(is_test, d.test_labels[i_test][None], reps.labels[:, i_train])  # (R, eb)
      split = jnp.where(is_test, randomize.TEST, randomize.TRAIN)
      logits = grid_logits(states, inputs(reps, d, x_u8, idx, split))
      logp = jax.nn.log_softmax(logits)
      prob = jnp.exp(logp)
      per_example = jnp.stack([
          -jnp.take_along_axis(logp, y[..., None], -1)[..., 0],
          (jnp.argmax(logits, -1) == y).astype(jnp.float32),
          jnp.max(prob, -1),
          -jnp.sum(prob * logp, -1),
      ])  # (4, R, eb)
      return jnp.sum(per_example * valid, axis=-1)

    sums = jax.lax.map(batch, jnp.arange(num_batches))  # (batches, 4, R)
    train = jnp.sum(sums[:train_batches], axis=0) / n_train
    test = jnp.sum(sums[train_batches:], axis=0) / n_test
    out = {"train_loss": train[0], "train_acc": train[1]}
    out.update({f"test_{k}": v for k, v in zip(("loss", "acc", "confidence", "entropy"), test)})
    return out

  return Functions(h, init_one, train_chunk, evaluate)
