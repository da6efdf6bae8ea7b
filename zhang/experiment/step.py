"""One replica's train step, and the grid's train chunks that run it for every replica.

Everything here is a pure function of (state, per-replica constants, global step). The
global step is shared by all replicas (they train in lockstep), so the schedule, the epoch
and the position in the epoch's batch order are functions of it alone, which makes a run
resumable to the same bits. Per-replica things (keys, labels, learning rate, weight decay,
augmentation, dropout rate) live in ``ReplicaConstants``, whose leaves have the replica
axis first like the train state's: they are traced arrays, so one compiled program trains
every combination of them.

Top-level pieces, in the order a step uses them: ``replica_inputs`` (one replica's
randomized, augmented, whitened inputs), ``apply_model``, ``train_step`` (one replica), and
``over_grid``, which runs a per-replica function over the grid (the plan's vmap or loop,
and the mesh's replica axis). The grid program's pieces: ``train_chunk`` (a chunk of steps,
``stream_chunk`` on streamed batches) here and ``evaluate.grid_metrics`` (the evaluation's
pass over both splits), traced with ``GridFunctions``; ``program.compile_grid``
jit-compiles them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zhang.experiment import augment, randomize
from zhang.experiment import data as data_lib
from zhang.experiment import dropout as dropout_lib
from zhang.runtime.plan import Plan


class TrainState(NamedTuple):
  """One replica's state (a leading replica axis when stacked)."""
  params: Any
  batch_stats: Any  # {} for models without batch norm
  opt_state: Any  # optax state of the gradient transformation (momentum)


class ReplicaConstants(NamedTuple):
  """What makes each replica of the grid itself, each with a leading replica axis."""
  order_key: jax.Array  # batch order
  rand_key: jax.Array  # randomization (and augmentation)
  labels: jax.Array  # int32 (N_train,), the replica's (possibly corrupted) training labels
  shared_perm: jax.Array  # int32 (H*W,), the shuffled-pixels permutation
  learning_rate: jax.Array  # float32 (), before the schedule
  weight_decay: jax.Array  # float32 ()
  augmentation: jax.Array  # int32 (), index into StepSettings.augmentations
  # float32 (): the replica trains alpha (f(w) - f(w_0)) (``StepSettings.center``) with its
  # rate divided by alpha^2 (SGD) or alpha (Adam): Chizat and Bach's lazy training.
  output_scale: jax.Array = None
  # float32 (): the rate of the model's dropout (``zhang.experiment.dropout``); None when no
  # replica has one (``StepSettings.dropout`` off).
  dropout: jax.Array = None
  initial_params: Any = None  # w_0, the replica's initial parameters (None: not kept)
  # float32 (): the label corruption p, from which the streaming path draws a batch's labels
  # (``stream_chunk``; None in memory, where ``labels`` holds them).
  corruption: jax.Array = None


class DeviceDataset(NamedTuple):
  """Arrays shared by every replica; on the device once."""
  # uint8 (N, H, W, C): centre-cropped to the input's size, or uncropped when a replica
  # crops (``augment.crops``); the step then takes each example's window.
  train_images: jax.Array
  test_images: jax.Array  # uint8, centre-cropped: its (H, W) is the model's input's
  test_labels: jax.Array  # int32, never corrupted
  train_labels: jax.Array  # int32, the dataset's: where a replica's labels differ, noisy
  gauss_mean: jax.Array  # float32 (C,)
  gauss_std: jax.Array


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What every replica shares and the program is compiled for (static)."""
  batch_size: int
  momentum: float
  lr_decay: float
  lr_decay_every: int
  eval_batch_size: int
  segments: tuple[tuple[str, int, int], ...]  # (kind, start, stop): replicas grouped by kind
  augmentations: tuple[str, ...] = ("none",)  # the names the grid uses
  compute_dtype: str = "float32"  # "bfloat16": forward/backward in bf16, params fp32
  # Whether any replica has weight decay: without, the step skips the term (an extra pass
  # over the parameters, 1.6% of the digits grid's step).
  weight_decay: bool = True
  # Token inputs (modadd): the step passes the ids to the model, no scaling or whitening.
  tokens: bool = False
  optimizer: str = "sgd_momentum"  # or "adamw" (``optimizer``)
  adam_b1: float = 0.9
  adam_b2: float = 0.98
  # ``freeze_at_fit``: the train chunk takes a per-replica mask and keeps the state of the
  # replicas it marks (``train_chunk``). Off, the program is the one without the mask.
  freeze: bool = False
  # Some replica has an output scale other than 1: every replica trains and is evaluated as
  # alpha (f(w) - f(w_0)). Off, the model's own outputs (the program without w_0).
  center: bool = False
  # The top-level parameter names of the model's first and last layers (Dense or Conv, in
  # call order): the evaluation's relative weight change of each. () leaves them out.
  end_layers: tuple[str, ...] = ()
  # Some replica has a dropout rate above 0 (only models with dropout take one): the train
  # step draws each replica's masks and passes the model a ``dropout.Draw``. Off, the model
  # is applied without one (the program without the draws).
  dropout: bool = False
  num_classes: int = 0  # the dataset's (the streaming path draws random labels among them)

  @classmethod
  def from_config(cls, config, replicas) -> "StepSettings":
    return cls(config.batch_size, float(config.momentum), float(config.lr_decay),
               config.lr_decay_every, config.eval_batch_size,
               randomize.segments([r.kind for r in replicas]),
               augment.used([r.augmentation for r in replicas]), config.compute_dtype,
               any(r.weight_decay > 0 for r in replicas),
               data_lib.input_kind(config.dataset) == "tokens",
               config.get("optimizer", "sgd_momentum"), float(config.get("adam_b1", 0.9)),
               float(config.get("adam_b2", 0.98)),
               freeze=bool(config.get("freeze_at_fit", False)),
               center=any(r.output_scale != 1.0 for r in replicas),
               dropout=any(r.dropout > 0 for r in replicas))


def dropout_rates(s: StepSettings, replicas):
  """The replicas' dropout rates, float32 (R,), for ``ReplicaConstants.dropout``; None when
  ``s.dropout`` is off (the program never reads them)."""
  return np.asarray([r.dropout for r in replicas], np.float32) if s.dropout else None


def schedule(lr_decay: float, lr_decay_every: int) -> optax.Schedule:
  """The paper's staircase decay as a multiplier of a replica's own rate: its learning rate
  at step t is ``learning_rate * schedule(t)`` = lr x decay^(t // decay_every)."""
  return optax.exponential_decay(1.0, transition_steps=lr_decay_every, decay_rate=lr_decay,
                                 staircase=True)


def learning_rate_at(step, learning_rate, lr_decay: float, lr_decay_every: int):
  """A replica's learning rate at ``step`` (numbers or arrays)."""
  return learning_rate * schedule(lr_decay, lr_decay_every)(step)


def optimizer(weight_decay, momentum: float, kind: str = "sgd_momentum", b1: float = 0.9,
              b2: float = 0.98, lr_scales=None) -> optax.GradientTransformation:
  """The update before the learning rate, which the step applies from the global step.

  ``sgd_momentum``: TensorFlow's form (v = m v + g + wd w; the step is -lr v); its state holds
  no step counter. ``adamw``: Adam's direction (betas ``b1``, ``b2``, eps 1e-8) plus wd w, so
  the step -lr (adam + wd w) is AdamW's decoupled decay. ``weight_decay`` may be a traced
  per-replica value; None: no such term. ``lr_scales``: a parameterization's per-leaf rates
  (``zhang.experiment.parameterization``), applied to the gradient's part only (SGD: g -> c g;
  AdamW: adam -> c adam), so that weight decay shrinks every layer's weights by the same
  factor per step whatever its rate, as it does the standard parameterization's."""
  decay = [] if weight_decay is None else [optax.add_decayed_weights(weight_decay)]
  scale = [] if lr_scales is None else [optax.stateless(
      lambda updates, params: jax.tree.map(lambda u, c: c * u, updates, lr_scales))]
  if kind == "adamw":
    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=1e-8), *scale, *decay)
  return optax.chain(*scale, *decay, optax.trace(decay=momentum))


def _optimizer(s: StepSettings, weight_decay, lr_scales=None) -> optax.GradientTransformation:
  return optimizer(weight_decay if s.weight_decay else None, s.momentum, s.optimizer,
                   s.adam_b1, s.adam_b2, lr_scales)


def init_state(module, s: StepSettings, key, sample, lr_scales=None) -> TrainState:
  """One replica's initial state from its init key (``lr_scales``: as the step's)."""
  variables = module.init(key, sample, train=False)
  params = variables["params"]
  return TrainState(params, variables.get("batch_stats", {}),
                    _optimizer(s, 0.0, lr_scales).init(params))


def replica_inputs(kind: str, s: StepSettings, rep: ReplicaConstants, d: DeviceDataset,
                   x_u8, indices, split, step=None):
  """One replica's scaled, randomized, augmented (training only: ``step`` given), whitened
  inputs; ``x_u8`` holds the examples ``indices`` of ``split`` (training: possibly larger
  than the input, see ``augment.window``; evaluation: of the input's size). Token inputs
  (``s.tokens``: label kinds, no augmentation) are the ids themselves."""
  if s.tokens:
    return x_u8.astype(jnp.int32)
  windowed = False
  if step is not None:
    size = d.test_images.shape[1:3]
    windowed = x_u8.shape[1:3] != size
    x_u8 = augment.window(s.augmentations, rep.augmentation, rep.rand_key, step, indices,
                          x_u8, size)
  x = randomize.randomize_inputs(kind, rep.rand_key, data_lib.scale(x_u8), indices, split,
                                 rep.shared_perm, d.gauss_mean, d.gauss_std)
  if step is not None:
    x = augment.apply(s.augmentations, rep.augmentation, rep.rand_key, step, indices, x,
                      windowed)
  return data_lib.whiten(x)


def grid_inputs(s: StepSettings, reps: ReplicaConstants, d: DeviceDataset, x_u8, indices,
                split, step=None):
  """Every replica's inputs (R, B, H, W, C); each kind's group computes only its own.

  ``x_u8`` (R, B, H, W, C) and ``indices`` (R, B) are each replica's examples, or both
  come without the replica axis when every replica sees the same examples (evaluation).
  """
  shared = indices.ndim == 1
  axes = (0, None) + ((None, None) if shared else (0, 0))
  own = (lambda a, lo, hi: a) if shared else (lambda a, lo, hi: a[lo:hi])
  parts = [jax.vmap(lambda r, dd, x, i, k=kind: replica_inputs(k, s, r, dd, x, i, split, step),
                    axes)(jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], reps), d,
                          own(x_u8, lo, hi), own(indices, lo, hi))
           for kind, lo, hi in s.segments]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def apply_model(module, plan: Plan, s: StepSettings, has_batch_norm: bool,
                state: TrainState, x, train: bool, dropout: dropout_lib.Draw | None = None):
  """Logits (float32) and the new batch statistics of one replica, traced under the plan;
  ``dropout`` (training only) is passed to a model with dropout."""
  params = state.params
  if s.compute_dtype != "float32":  # master weights stay fp32; the gradient flows back
    dtype = jnp.dtype(s.compute_dtype)
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    if not s.tokens:  # token ids stay integers
      x = x.astype(dtype)
  variables = {"params": params}
  kwargs = {} if dropout is None or not train else {"dropout": dropout}
  with plan.model_context():
    if has_batch_norm:
      variables["batch_stats"] = state.batch_stats
      if train:
        logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"],
                                       **kwargs)
        return logits.astype(jnp.float32), updates["batch_stats"]
    logits = module.apply(variables, x, train=train, **kwargs)
  return logits.astype(jnp.float32), state.batch_stats


def centered(apply: Callable, s: StepSettings, state: TrainState, x, train: bool, scale,
             initial, dropout=None):
  """``apply``'s logits and batch statistics, as alpha (f(w) - f(w_0)) when ``s.center``
  (both under the same ``dropout`` masks, when given)."""
  drop = {} if dropout is None else {"dropout": dropout}
  logits, batch_stats = apply(state, x, train=train, **drop)
  if not s.center:
    return logits, batch_stats
  start = apply(state._replace(params=initial), x, train=train, **drop)[0]
  return scale * (logits - jax.lax.stop_gradient(start)), batch_stats


def train_step(apply: Callable, s: StepSettings, lr_scales, state: TrainState, x, y,
               learning_rate, weight_decay, scale, initial, schedule_factor, dropout=None):
  """One replica's step on a batch; returns (new state, batch loss). ``lr_scales``: the
  parameterization's per-leaf rates (None: every leaf at the replica's rate); ``scale`` and
  ``initial``: its output scale and initial parameters (used when ``s.center``);
  ``dropout``: its ``dropout.Draw`` (None: the model is applied without)."""
  def loss_fn(params):
    logits, batch_stats = centered(apply, s, state._replace(params=params), x, True, scale,
                                   initial, dropout)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, batch_stats

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = _optimizer(s, weight_decay, lr_scales).update(grads, state.opt_state,
                                                                     state.params)
  lr = learning_rate * schedule_factor
  if s.center:  # the function moves at the same rate whatever alpha (Chizat and Bach)
    lr = lr / (scale if s.optimizer == "adamw" else scale * scale)
  params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, updates))
  return TrainState(params, batch_stats, opt_state), loss


def over_grid(plan: Plan, mesh, fn: Callable, replicated: tuple = ()) -> Callable:
  """``fn(*per_replica_args, *replicated)`` for one replica -> the grid's function of
  stacked arguments: the plan's vmap or loop on each device, and with a ``mesh`` each device
  running only its own replicas (the replica axis manual; the data axis left automatic)."""
  def grid(*args):
    split = len(args) - len(replicated)
    per, rest = args[:split], args[split:]
    return plan.over_replicas(lambda *a: fn(*a, *rest), *per)

  if mesh is None:
    return grid
  # Left to the automatic partitioner, a vmapped convolution becomes one grouped convolution
  # that XLA does not split by group: it gathers every replica's weights to every device.
  return lambda *args: jax.shard_map(
      grid, mesh=mesh, axis_names={"replica"}, check_vma=False,
      in_specs=(P("replica"),) * (len(args) - len(replicated)) + (P(),) * len(replicated),
      out_specs=P("replica"))(*args)


class GridFunctions(NamedTuple):
  """What the grid program's pieces (``train_chunk``, ``evaluate.grid_metrics``) are traced with:
  one replica's step and logits mapped over the grid (``over_grid``), and the mesh whose
  ``data`` axis splits each replica's batch (None: not split)."""
  settings: StepSettings
  # (states, x, y, learning rates, weight decays, output scales, initial params, dropout
  # draws, schedule factor) -> (states, losses)
  step: Callable
  logits: Callable  # (states, x, output scales, initial params) -> logits (R, B, classes)
  mesh: Any


def grid_functions(module, s: StepSettings, has_batch_norm: bool, plan: Plan,
                   mesh=None, lr_scales=None) -> GridFunctions:
  """The grid's functions of ``module`` under the plan, on the mesh (``GridFunctions``);
  ``lr_scales``: the parameterization's per-leaf rates (``ModelSpec.lr_scales``)."""
  apply = functools.partial(apply_model, module, plan, s, has_batch_norm)
  step = over_grid(plan, mesh, functools.partial(_replica_step, apply, s, lr_scales),
                   replicated=(1,))
  logits = over_grid(plan, mesh, functools.partial(_eval_logits, apply, s))
  split = mesh if mesh is not None and mesh.shape["data"] > 1 else None
  return GridFunctions(s, step, logits, split)


def _replica_step(apply: Callable, s: StepSettings, lr_scales, state, x, y, learning_rate,
                  weight_decay, scale, initial, dropout, schedule_factor):
  """``train_step`` with every per-replica argument before the shared schedule factor
  (``over_grid``'s order)."""
  return train_step(apply, s, lr_scales, state, x, y, learning_rate, weight_decay, scale,
                    initial, schedule_factor, dropout)


def _eval_logits(apply: Callable, s: StepSettings, state: TrainState, x, scale, initial):
  return centered(apply, s, state, x, False, scale, initial)[0]


def _split_batch(mesh, x):
  """Splits each replica's batch over the mesh's ``data`` axis (None: left as it is)."""
  if mesh is None:
    return x
  spec = P("replica", "data", *([None] * (x.ndim - 2)))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def epoch_orders(reps: ReplicaConstants, epoch, n: int, batch_size: int):
  """Every replica's order of the ``n`` training examples in epoch ``epoch``, (R, n). In
  full-batch training (``batch_size`` = n) an order would only permute the terms of each
  step's sum: there it is the identity, which spares the sorts of a permutation (a tenth of
  modadd's step)."""
  if batch_size == n:
    return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (reps.order_key.shape[0], n))
  return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n))(
      reps.order_key)


def train_chunk(g: GridFunctions, states, reps: ReplicaConstants, d: DeviceDataset, step0,
                num_steps, loss_sum=None, frozen=None):
  """``num_steps`` steps from ``step0``; returns (states, ``loss_sum`` + each replica's
  minibatch losses, summed step by step in float32: a run cut into calls of any lengths
  sums in the same order, so its mean loss has the same bits).

  ``frozen`` (R,) bool, given exactly when ``settings.freeze``: the replicas whose state
  (parameters, batch statistics, optimizer state) the chunk leaves as it is. They are a
  traced mask, not a smaller grid, so the program does not change as replicas fit: their
  batches are still computed (and their losses summed), and each step's new state is kept
  only where the mask is off.
  """
  if g.settings.freeze != (frozen is not None):
    raise ValueError(f"train_chunk: settings.freeze={g.settings.freeze} needs frozen "
                     f"{'given' if g.settings.freeze else 'None'}")
  n = d.train_images.shape[0]
  per_epoch = n // g.settings.batch_size  # the last partial batch of an epoch is dropped
  orders = epoch_orders(reps, step0 // per_epoch, n, g.settings.batch_size)
  if loss_sum is None:
    loss_sum = jnp.zeros(reps.labels.shape[:1], jnp.float32)
  body = functools.partial(_chunk_step, g, reps, d, step0, per_epoch, frozen)
  states, _, loss_sum = jax.lax.fori_loop(0, num_steps, body, (states, orders, loss_sum))
  return states, loss_sum


def centring(s: StepSettings, reps: ReplicaConstants) -> tuple:
  """The per-replica output scales and initial parameters the step and logits take: zeros
  in their place when the grid does not centre (the program then never reads them)."""
  if s.center:
    return reps.output_scale, reps.initial_params
  zeros = jnp.zeros(reps.labels.shape[:1], jnp.float32)
  return zeros, zeros


def dropout_draws(g: GridFunctions, reps: ReplicaConstants, step, indices):
  """Every replica's ``dropout.Draw`` for the batch of examples ``indices`` (R, B) at
  ``step``: its rate and one key per example from its randomization key. None (no operand,
  no draw) when ``settings.dropout`` is off."""
  if not g.settings.dropout:
    return None
  keys = jax.vmap(dropout_lib.example_keys, (0, None, 0))(reps.rand_key, step, indices)
  return dropout_lib.Draw(reps.dropout, _split_batch(g.mesh, keys))


def keep_frozen(frozen, old, new):
  """``new`` with each leaf's rows of the ``frozen`` (R,) replicas taken from ``old``."""
  return jax.tree.map(
      lambda a, b: jnp.where(frozen.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), old, new)


def _chunk_step(g: GridFunctions, reps: ReplicaConstants, d: DeviceDataset, step0,
                per_epoch: int, frozen, i, carry):
  """Step ``step0 + i`` of a train chunk, every replica: carry is (states, this epoch's
  orders, loss sum); ``frozen``: see ``train_chunk``."""
  s = g.settings
  states, orders, loss_sum = carry
  step = step0 + i
  pos = step % per_epoch
  # A new epoch's order when one starts (the step is shared: this stays a real branch).
  orders = jax.lax.cond(pos == 0,
                        lambda: epoch_orders(reps, step // per_epoch, d.train_images.shape[0],
                                             s.batch_size),
                        lambda: orders)
  indices = jax.lax.dynamic_slice_in_dim(orders, pos * s.batch_size, s.batch_size, 1)
  x = _split_batch(g.mesh, grid_inputs(s, reps, d, jnp.take(d.train_images, indices, axis=0),
                                       indices, randomize.TRAIN, step))
  y = _split_batch(g.mesh, jnp.take_along_axis(reps.labels, indices, axis=1))
  new, loss = _grid_step(g, reps, states, x, y, indices, step, frozen)
  return new, orders, loss_sum + loss


def _grid_step(g: GridFunctions, reps: ReplicaConstants, states, x, y, indices, step, frozen):
  """Every replica's step on its inputs ``x`` and labels ``y`` of the examples ``indices``
  (R, B): (new states, losses)."""
  s = g.settings
  new, loss = g.step(states, x, y, reps.learning_rate, reps.weight_decay,
                     *centring(s, reps), dropout_draws(g, reps, step, indices),
                     schedule(s.lr_decay, s.lr_decay_every)(step))
  if s.freeze:
    new = keep_frozen(frozen, states, new)
  return new, loss


class StreamBatches(NamedTuple):
  """K steps' batches of the streaming path, every replica the same examples."""
  images: jax.Array  # uint8 (K, B, H, W, C), as ``DeviceDataset.train_images`` holds them
  labels: jax.Array  # int32 (K, B): the dataset's true labels
  indices: jax.Array  # int32 (K, B): the examples' indices in the training set
  # uint8 (K, B, H, W, C): the host's augmented view (``augment.HOST``), for the replicas
  # whose augmentation takes it; None without such replicas
  augmented: jax.Array = None


def stream_chunk(g: GridFunctions, states, reps: ReplicaConstants, d: DeviceDataset,
                 batches: StreamBatches, step0, num_steps, loss_sum, frozen=None):
  """``train_chunk`` on given batches (``zhang.experiment.stream``): ``num_steps`` <= K
  steps from ``step0``, step ``step0 + i`` on ``batches``' i-th. Each replica's labels are
  drawn from its key and the examples' indices (``randomize.corrupt_labels_at``): the
  labels ``train_chunk`` reads from ``reps.labels``, so both paths train a grid of shared
  batch order (``batch_order="shared"``) on the same batches with the same labels. ``d``
  gives the Gaussian kind's channel statistics; its images are not read."""
  s = g.settings
  num_replicas = reps.learning_rate.shape[0]

  def body(i, carry):
    states, loss_sum = carry
    step = step0 + i
    idx, true = batches.indices[i], batches.labels[i]
    images, both = batches.images[i], jnp.broadcast_to(idx, (num_replicas, idx.shape[0]))
    if batches.augmented is None:
      x = grid_inputs(s, reps, d, images, idx, randomize.TRAIN, step)
    else:  # each replica its view: (R, B, H, W, C)
      host = jnp.asarray(augment.on_host(s.augmentations))[reps.augmentation]
      views = jnp.where(host.reshape(-1, 1, 1, 1, 1), batches.augmented[i][None],
                        images[None])
      x = grid_inputs(s, reps, d, views, both, randomize.TRAIN, step)
    x = _split_batch(g.mesh, x)
    y = jax.vmap(randomize.corrupt_labels_at, (0, None, None, 0, None))(
        reps.rand_key, true, idx, reps.corruption, s.num_classes).astype(jnp.int32)
    new, loss = _grid_step(g, reps, states, x, _split_batch(g.mesh, y), both, step, frozen)
    return new, loss_sum + loss

  return jax.lax.fori_loop(0, num_steps, body, (states, loss_sum))


