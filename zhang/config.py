"""Experiment configs: loading ``configs/NAME.py[:ARGS]``, overrides, validation, the grid.

A config file defines ``get_config(arg=None)`` returning an ``ml_collections.ConfigDict``;
``arg`` is the string after the colon (``configs/fig1.py:model=mlp_1x512,quick``), which
``parse_arg`` turns into typed values. Every check a user's mistake can fail is in
``validate`` and runs before any data is put on a device or anything is compiled.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import pathlib

import ml_collections

from zhang import data, models, randomize
from zhang.errors import UsageError


def base_config() -> ml_collections.ConfigDict:
  """Every field a training config has, with the paper's defaults (CIFAR-10 schedule)."""
  c = ml_collections.ConfigDict()
  c.model = "inception_small"
  c.dataset = "cifar10"
  c.data_dir = ""  # IDX folder or tfds data_dir (a gs:// path on TPU VMs); "" = defaults
  c.n_train = 0  # use the first n training examples; 0 = all
  c.n_test = 0  # 0 = all
  c.batch_size = 128
  # The paper's rate for the model when left at None (0.1 Inception, 0.01 AlexNet and MLPs).
  c.learning_rate = ml_collections.config_dict.placeholder(float)
  c.momentum = 0.9
  # x0.95 every 390 steps: one CIFAR-10 epoch of batch 128, the paper's schedule. It is in
  # steps, not epochs, on purpose: decayed per epoch of a small dataset, it starves training.
  c.lr_decay = 0.95
  c.lr_decay_every = 390
  c.weight_decay = 0.0
  c.max_steps = 30_000
  c.eval_every = 500  # steps between evaluations on the whole train and test sets
  c.eval_batch_size = 1000
  c.fit_threshold = 1.0  # train accuracy at which a replica counts as having fitted
  c.checkpoint_every = 2000  # steps between checkpoints (and one at the end)
  c.keep_checkpoints = 3
  # Device mesh (replica, data): -1 takes the remaining devices. The grid is padded with
  # inert replicas to a multiple of the replica axis (they never appear in outputs).
  c.mesh_shape = (-1, 1)
  # How each device runs its replicas: "vmap" (one batched program), "map" (a loop over
  # replicas), or "auto" (the measured faster one for the model and backend, see
  # zhang/train.py:STRATEGY). Results agree to float tolerance.
  c.replica_strategy = "auto"
  # "bfloat16": opt-in low-precision compute for accelerators (params, optimizer, metrics
  # and the loss stay float32).
  c.compute_dtype = "float32"
  # How the conv nets' layers (convolution, max pool, local response norm) and every model's
  # narrow Dense layers (the logits') are differentiated: "jax" (JAX's own rules), "explicit"
  # (zhang/layers.py: the same gradients in forms that XLA CPU runs 30-40x faster inside the
  # step loop for the conv nets, 1.4x for the digits MLP grid), or "auto"
  # (zhang/train.py:CONV_GRADIENT). Results agree to float tolerance; the parameters and the
  # forward pass are the same.
  c.conv_gradient = "auto"
  # Which kernels XLA CPU runs the convolutions and matrix products with (ignored on
  # accelerators): "default" (XLA's own choice: YNNPACK's in jax 0.10), "eigen" (Eigen's,
  # which use every core on one convolution; YNNPACK keeps the reductions), or "auto"
  # (zhang/train.py:cpu_kernels: eigen for the conv nets, and for the MLPs from 8 replicas
  # per device on). Results agree to float tolerance.
  c.cpu_kernels = "auto"
  # Replicas: the union of these products of kinds x corruptions x seeds.
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0])]
  return c


# --------------------------------------------------------------------------- loading

def parse_arg(arg: str | None, **defaults):
  """Parses ``"a=1,b=x,flag"`` against typed defaults; a bare name sets a bool to True."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, raw = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise UsageError(f"unknown config argument {key!r}: known are {', '.join(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise UsageError(f"config argument {key!r} needs a value: {key}=...")
      values[key] = True
      continue
    try:
      values[key] = _cast(raw.strip(), default)
    except ValueError:
      raise UsageError(f"config argument {key}={raw!r} is not a valid "
                       f"{type(default).__name__}") from None
  return ml_collections.ConfigDict(values)


def _cast(raw: str, like):
  if isinstance(like, bool):
    if raw.lower() in ("1", "true", "yes"):
      return True
    if raw.lower() in ("0", "false", "no"):
      return False
    raise ValueError(raw)
  if isinstance(like, (int, float)):
    return type(like)(raw)
  return raw


def load(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """Loads ``path.py[:arg]`` and applies ``key=value`` overrides (values as Python literals)."""
  path, arg = spec, None
  if ".py:" in spec:
    path, arg = spec.split(".py:", 1)
    path += ".py"
  file = pathlib.Path(path)
  if not file.is_file():
    raise UsageError(f"config file {path} not found: pass --config configs/NAME.py[:ARGS]")
  module_spec = importlib.util.spec_from_file_location(f"zhang_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UsageError(f"config file {path} has no get_config(arg=None)")
  config = module.get_config(arg or None)
  for item in overrides:
    apply_override(config, item)
  return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  key, sep, raw = item.partition("=")
  if not sep:
    raise UsageError(f"override {item!r} is not key=value (e.g. --set max_steps=100)")
  if key not in config:
    raise UsageError(f"unknown config field {key!r}: fields are {', '.join(config.keys())}")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw  # a bare string such as model=mlp_1x512
  try:
    with config.unlocked():
      config[key] = value
  except TypeError:
    raise UsageError(f"cannot set {key} to {raw!r}: give a Python literal of the field's type "
                     f"({type(config[key]).__name__}), e.g. "
                     f"grid=[{{'kinds': ['labels'], 'corruptions': [0.0], 'seeds': [0]}}]"
                     ) from None


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills fields derived from others (the learning rate) and validates."""
  validate(config)
  config = ml_collections.ConfigDict(config.to_dict())
  if config.learning_rate is None:
    config.learning_rate = models.get(config.model).learning_rate
  return config


def to_json_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON types (what ``config.json`` holds)."""
  return json.loads(config.to_json())


# --------------------------------------------------------------------------- validation

def _require(ok: bool, message: str) -> None:
  if not ok:
    raise UsageError(message)


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises UsageError (one line: what is wrong, how to fix it) for a bad config."""
  known = set(base_config().keys())
  unknown = set(c.keys()) - known
  _require(not unknown, f"unknown config field(s) {', '.join(sorted(unknown))}: "
           f"known fields are {', '.join(sorted(known))}")
  missing = known - set(c.keys())
  _require(not missing, f"config lacks field(s) {', '.join(sorted(missing))}: "
           f"start from zhang.config.base_config()")
  models.get(c.model)
  data.check_name(c.dataset)
  for name in ("batch_size", "max_steps", "eval_every", "eval_batch_size", "lr_decay_every",
               "checkpoint_every", "keep_checkpoints"):
    value = c[name]
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"{name}={value!r} must be a positive integer")
  for name in ("n_train", "n_test"):
    _require(isinstance(c[name], int) and c[name] >= 0,
             f"{name}={c[name]!r} must be an integer >= 0 (0 means the whole split)")
  lr = c.learning_rate
  _require(lr is None or (_is_number(lr) and lr > 0),
           f"learning_rate={lr!r} must be positive (or None for the paper's)")
  _require(_is_number(c.momentum) and 0 <= c.momentum < 1,
           f"momentum={c.momentum!r} must be in [0, 1)")
  _require(_is_number(c.lr_decay) and 0 < c.lr_decay <= 1,
           f"lr_decay={c.lr_decay!r} must be in (0, 1] (1 = no decay)")
  _require(_is_number(c.weight_decay) and c.weight_decay >= 0,
           f"weight_decay={c.weight_decay!r} must be >= 0")
  _require(_is_number(c.fit_threshold) and 0 < c.fit_threshold <= 1,
           f"fit_threshold={c.fit_threshold!r} must be in (0, 1]")
  _require(c.replica_strategy in ("auto", "vmap", "map"),
           f"replica_strategy={c.replica_strategy!r} must be auto, vmap or map")
  _require(c.compute_dtype in ("float32", "bfloat16"),
           f"compute_dtype={c.compute_dtype!r} must be float32 or bfloat16")
  _require(c.conv_gradient in ("auto", "jax", "explicit"),
           f"conv_gradient={c.conv_gradient!r} must be auto, jax or explicit")
  _require(c.cpu_kernels in ("auto", "default", "eigen"),
           f"cpu_kernels={c.cpu_kernels!r} must be auto, default or eigen")
  expand_grid(c)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_against_data(c: ml_collections.ConfigDict, n_train: int) -> None:
  """Checks that need the dataset's size."""
  _require(c.batch_size <= n_train,
           f"batch_size={c.batch_size} is larger than the training set ({n_train} examples): "
           f"use batch_size <= {n_train}")


# --------------------------------------------------------------------------- the grid

@dataclasses.dataclass(frozen=True)
class Replica:
  index: int
  kind: str
  corruption: float
  seed: int


def expand_grid(c: ml_collections.ConfigDict) -> list[Replica]:
  """The replicas of the config's grid: each entry's kinds x corruptions x seeds, grouped
  by kind (in ``randomize.KINDS`` order) and numbered in that order."""
  grid = c.grid
  _require(isinstance(grid, (list, tuple)) and len(grid) > 0,
           "grid must be a non-empty list of dict(kinds=[...], corruptions=[...], seeds=[...])")
  replicas, seen = [], set()
  for entry in grid:
    entry = dict(entry)
    _require(set(entry) == {"kinds", "corruptions", "seeds"},
             f"grid entry {entry} must have exactly the keys kinds, corruptions, seeds")
    for kind in entry["kinds"]:
      randomize.kind_id(kind)
      for p in entry["corruptions"]:
        _require(_is_number(p) and 0.0 <= p <= 1.0,
                 f"corruption level {p!r} is outside [0, 1]: use a probability such as 0.2")
        for seed in entry["seeds"]:
          _require(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**31,
                   f"seed {seed!r} must be an integer in [0, 2**31)")
          key = (kind, float(p), seed)
          _require(key not in seen, f"replica kind={kind}, corruption={p}, seed={seed} "
                   f"appears twice in the grid: remove the duplicate")
          seen.add(key)
          replicas.append(Replica(len(replicas), kind, float(p), seed))
  _require(bool(replicas), "the grid has no replicas: give every entry at least one kind, "
           "corruption and seed")
  # Replicas of one kind sit next to each other, so each kind's input randomization is
  # compiled once for its group (see zhang/step.py); within a kind, grid order is kept.
  replicas.sort(key=lambda r: randomize.KINDS.index(r.kind))
  return [dataclasses.replace(r, index=i) for i, r in enumerate(replicas)]
