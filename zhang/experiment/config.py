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
import itertools
import json
import math
import os
import pathlib
import sys
import traceback

import ml_collections

from zhang.errors import UsageError
from zhang.experiment import augment, data, models, randomize


def base_config() -> ml_collections.ConfigDict:
  """Every field a training config has, with the paper's defaults (CIFAR-10 schedule)."""
  c = ml_collections.ConfigDict()
  c.model = "inception_small"
  # Python modules imported before any name is looked up: where your own models and datasets
  # register (zhang.experiment.models.register, zhang.experiment.data.register). Kept in
  # config.json, so `zhang llc`, `zhang ntk` and every probe import them again.
  c.imports = []
  # A study: several models, each its own compiled program over its grid (a grid entry's
  # `models` list restricts it to some of them), run one after another into WORKDIR/MODEL.
  # [] = the one `model`.
  c.models = []
  # How an MLP's layers scale with its width (zhang/experiment/parameterization.py):
  # standard, ntk, mup or mean_field, for the model(s) whose names carry no suffix of their
  # own (mlp_1x1024_mup does). Only the MLPs take one (mlp_DxW, mlp_tokens, mlp_tokens_W).
  c.parameterization = "standard"
  _data_fields(c)
  c.batch_size = 128
  _stream_fields(c)
  _optimizer_fields(c)
  c.max_steps = 30_000
  c.eval_every = 500  # steps between evaluations on the whole train and test sets
  c.eval_batch_size = 1000
  c.fit_threshold = 1.0  # train accuracy at which a replica counts as having fitted
  # Test accuracy at which a replica counts as having generalized (summary: generalize_step).
  c.generalize_threshold = 0.99
  # Stop once every replica has fitted (the randomization tests); False trains to max_steps
  # (grokking: generalization comes long after the fit).
  c.stop_at_fit = True
  # Each replica's parameters, batch statistics and optimizer state stay as they were at its
  # fit evaluation while the others train on (zhang/experiment/step.py: train_chunk): the
  # grid ends with every replica as if trained alone with `stop_at_fit`.
  c.freeze_at_fit = False
  c.checkpoint_every = 2000  # steps between checkpoints (and one at the end)
  c.keep_checkpoints = 3
  # zhang/experiment/augment.py's names: what an entry without `augmentations` takes.
  c.augmentation = "none"
  # The rate of the model's dropout (what an entry without `dropouts` takes), in [0, 1): in
  # training each unit is kept with probability 1 - rate and scaled by 1 / (1 - rate)
  # (zhang/experiment/dropout.py). Only models with dropout take a rate above 0:
  # inception_v3 (before its logits; TF-slim trains it at 0.2).
  c.dropout = 0.0
  # Device mesh (replica, data): -1 takes the remaining devices. The grid is padded with
  # inert replicas to a multiple of the replica axis (they never appear in outputs).
  c.mesh_shape = (-1, 1)
  # "bfloat16": opt-in low-precision compute for accelerators (params, optimizer, metrics
  # and the loss stay float32). It changes results, so it is part of the experiment; how a
  # device runs the grid (vmap or a loop, which gradients, which kernels) is not: that is
  # the execution plan's (zhang/runtime/plan.py).
  c.compute_dtype = "float32"
  # Replicas: the union of these products of kinds x corruptions x seeds (and optionally
  # x learning_rates x weight_decays x augmentations x output_scales x dropouts, else the
  # scalars above).
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0])]
  return c


def _data_fields(c: ml_collections.ConfigDict) -> None:
  """The dataset and which of its examples train and test (``base_config``'s, in its order)."""
  c.dataset = "cifar10"
  c.data_dir = ""  # IDX folder or tfds data_dir (a gs:// path on TPU VMs); "" = defaults
  c.n_train = 0  # use the first n training examples; 0 = all
  c.n_test = 0  # 0 = all
  # Two classes: label y -> 0 if y < K // 2 else 1 (K classes), train and test, before label
  # corruption (zhang.experiment.data.binary: MNIST's digits 0-4 against 5-9, Dziugaite &
  # Roy 2017). Image datasets only.
  c.binary = False
  # modadd only (zhang.experiment.data): pairs mod a prime, a random split of them from a seed.
  c.modulus = 113
  c.train_fraction = 0.3
  c.split_seed = 0


def _stream_fields(c: ml_collections.ConfigDict) -> None:
  """Where training batches come from and in which order (``base_config``'s, in its order)."""
  # false: the training set on the device, each replica drawing its batches there; true: a
  # grain pipeline on the host (zhang/experiment/stream.py), every replica the same batches
  # (batch_order "shared"), for data that does not fit on a device (ImageNet: always).
  c.stream = False
  # "replica": each replica the batch order of its own seed; "shared": every replica the
  # order of a replica of seed `order_seed` (the stream's; in memory too, to compare them).
  c.batch_order = "replica"
  c.order_seed = 0
  # Grain worker processes that read and preprocess the stream's examples (0: the training
  # process). How a run executes, like the plan: not part of its identity (hash).
  c.stream_workers = 0
  # The side of the square images a host-streamed dataset's preprocessing makes (ImageNet:
  # zhang/experiment/imagenet.py); 0: the dataset's own (299 for Inception V3).
  c.image_size = 0


def _optimizer_fields(c: ml_collections.ConfigDict) -> None:
  """The optimizer, its rate and the rate's schedule (``base_config``'s, in its order)."""
  # "sgd_momentum" (the paper's: SGD with `momentum`, L2 `weight_decay` added to the
  # gradient) or "adamw" (Adam with `adam_b1`, `adam_b2`; weight decay decoupled, scaled by the
  # learning rate: Loshchilov & Hutter). Either takes the per-replica rates and decays.
  c.optimizer = "sgd_momentum"
  c.adam_b1 = 0.9
  c.adam_b2 = 0.98
  # The paper's rate for the model when left at None (0.1 Inception, 0.01 AlexNet and MLPs);
  # what a grid entry without `learning_rates` takes.
  c.learning_rate = ml_collections.config_dict.placeholder(float)
  c.momentum = 0.9
  # x0.95 every 390 steps: one CIFAR-10 epoch of batch 128, the paper's schedule. It is in
  # steps, not epochs, on purpose: decayed per epoch of a small dataset, it starves training.
  c.lr_decay = 0.95
  c.lr_decay_every = 390
  c.weight_decay = 0.0  # L2, added to the gradient (what an entry without `weight_decays` takes)
  # alpha (what an entry without `output_scales` takes): a replica trains alpha (f(w) - f(w_0))
  # at its rate / alpha^2 (SGD; / alpha under Adam), lazier as alpha grows (Chizat and Bach
  # 2019). When every replica's is 1, the model's own outputs, as without it.
  c.output_scale = 1.0


# --------------------------------------------------------------------------- loading

def parse_arg(arg: str | None, **defaults):
  """Parses ``"a=1,b=x,flag"`` against typed defaults; a bare name sets a bool to True."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, raw = item.partition("=")
    key = key.strip()
    if key not in defaults:
      known = f"known are {', '.join(defaults)}" if defaults else "this config takes none"
      raise UsageError(f"unknown config argument {key!r}: {known}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise UsageError(f"config argument {key!r} needs a value: {key}=...")
      values[key] = True
      continue
    try:
      values[key] = _parse_value(raw.strip(), type(default))
    except (ValueError, SyntaxError):
      raise UsageError(f"config argument {key}={raw!r} is not a valid "
                       f"{type(default).__name__}") from None
  return ml_collections.ConfigDict(values)


def load(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """Loads ``path.py[:arg]`` and applies ``FIELD=VALUE`` overrides (``apply_override``)."""
  path, arg = spec, None
  if ".py:" in spec:
    path, arg = spec.split(".py:", 1)
    path += ".py"
  file = pathlib.Path(path)
  if not file.is_file():
    raise UsageError(f"config file {path} not found: give one such as "
                     f"configs/NAME.py[:ARGS]")
  module_spec = importlib.util.spec_from_file_location(f"zhang_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  get_config = None
  try:
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise UsageError(f"config file {path} has no get_config(arg=None)")
    get_config = module.get_config
    config = get_config(arg or None)
  except UsageError:
    raise
  except Exception as e:  # noqa: BLE001 - whatever the file's code raised, said in one line
    raise UsageError(_config_error(path, e, get_config)) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"config file {path}{_line(get_config)}: get_config returned "
                     f"{type(config).__name__}, not an ml_collections.ConfigDict: return "
                     f"zhang.experiment.config.base_config() with your changes")
  for item in overrides:
    apply_override(config, item)
  return config


def _config_error(path: str, e: Exception, get_config) -> str:
  """One line for an exception loading config file ``path``: the file's line that raised it
  (the innermost traceback frame in the file; a SyntaxError's own line), and the error."""
  message = " ".join(str(e.msg if isinstance(e, SyntaxError) else e).split())
  if isinstance(e, SyntaxError) and e.filename and _same_file(e.filename, path):
    line = f" line {e.lineno}"
  else:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if _same_file(f.filename, path)]
    line = f" line {frames[-1].lineno}" if frames else _line(get_config)
  return (f"config file {path}{line}: {type(e).__name__}{': ' if message else ''}{message}; "
          f"fix the file")


def _same_file(a: str, b: str) -> bool:
  return os.path.abspath(a) == os.path.abspath(b)


def _line(function) -> str:
  """`` line N`` of a function's ``def``, or "" for something that is not a function."""
  code = getattr(function, "__code__", None)
  return f" line {code.co_firstlineno}" if code else ""


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """``FIELD=VALUE`` (``--config.FIELD=VALUE``, ``--set FIELD=VALUE``), the value read as the
  field's type, as ml_collections' ``config_flags`` read it: a number for a number, a word
  for a string (quotes optional), true/false for a bool, a Python literal for a list."""
  key, sep, raw = item.partition("=")
  key = key.strip()
  if not sep:
    raise UsageError(f"override {item!r} is not FIELD=VALUE (e.g. --config.max_steps=100)")
  if key not in config:
    raise UsageError(f"unknown config field {key!r}: fields are {', '.join(config.keys())}")
  field_type = _field_type(config, key)
  try:
    value = _parse_value(raw.strip(), field_type)
  except (ValueError, SyntaxError):
    raise UsageError(f"cannot set {key} to {raw!r}: it takes {_type_name(field_type)}, "
                     f"e.g. {example(key, field_type)}") from None
  with config.unlocked():
    config[key] = value


# A valid value of each field that is not a name, for the examples in messages.
FIELD_EXAMPLES = {
    "n_train": "1000", "n_test": "300", "batch_size": "128", "learning_rate": "0.01",
    "momentum": "0.9", "lr_decay": "0.95", "lr_decay_every": "390", "weight_decay": "5e-4",
    "max_steps": "2000", "eval_every": "500", "eval_batch_size": "1000",
    "fit_threshold": "1.0", "checkpoint_every": "2000", "keep_checkpoints": "3",
    "modulus": "113", "train_fraction": "0.3", "split_seed": "0", "adam_b1": "0.9",
    "adam_b2": "0.98", "generalize_threshold": "0.99", "stop_at_fit": "false",
    "freeze_at_fit": "true", "binary": "true", "output_scale": "10", "parameterization": "mup",
    "dropout": "0.2", "stream": "true", "batch_order": "shared", "order_seed": "0",
    "stream_workers": "4", "image_size": "299",
    "grid": "\"[dict(kinds=['labels'], corruptions=[0.0, 1.0], seeds=[0])]\"",
    "models": "\"['mlp_1x512', 'mlp_3x512']\"", "imports": "\"['my_models']\"",
    "mesh_shape": "'(-1, 1)'"}


def example(key: str, field_type=None) -> str:
  """``--config.KEY=VALUE`` with a valid value of the field (``FIELD_EXAMPLES``)."""
  value = FIELD_EXAMPLES.get(key) or {int: "100", float: "0.01", bool: "true",
                                      str: "NAME"}.get(field_type, "...")
  return f"--config.{key}={value}"


def _field_type(config, key):
  field = config._fields[key]  # noqa: SLF001 - a placeholder's type is only here
  if isinstance(field, ml_collections.FieldReference):
    return field.get_type()
  return type(field)


def _type_name(t) -> str:
  return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          list: "a list", tuple: "a tuple"}.get(t, f"a {getattr(t, '__name__', t)}")


def _parse_value(raw: str, field_type):
  if field_type is bool:
    if raw.lower() in ("1", "true", "yes"):
      return True
    if raw.lower() in ("0", "false", "no"):
      return False
    raise ValueError(raw)
  if field_type is str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
      return raw[1:-1]
    return raw
  if raw.lower() in ("none", "null"):
    if field_type in (int, float):
      return None  # a placeholder (learning_rate) back to its default
    raise ValueError(raw)
  if field_type is int:
    return int(raw)
  if field_type is float:
    return float(raw)  # nan and inf too: validation says what range the field takes
  value = _literal(raw)
  if field_type in (list, tuple) and not isinstance(value, (list, tuple)):
    raise ValueError(raw)
  return field_type(value) if field_type in (list, tuple) else value


def _literal(raw: str):
  """A Python literal; ``dict(a=1)`` is read as ``{'a': 1}`` (the configs' own spelling)."""
  tree = ast.parse(raw, mode="eval")

  class DictCalls(ast.NodeTransformer):
    def visit_Call(self, node):
      self.generic_visit(node)
      if isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return ast.Dict([ast.Constant(k.arg) for k in node.keywords],
                        [k.value for k in node.keywords])
      return node

  return ast.literal_eval(ast.fix_missing_locations(DictCalls().visit(tree)))


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills fields derived from others (the learning rate) and validates."""
  validate(config)
  config = ml_collections.ConfigDict(config.to_dict())
  if config.parameterization != "standard":  # the models' names say it from here on
    config.model = models.with_parameterization(config.model, config.parameterization)
    config.models = [models.with_parameterization(m, config.parameterization)
                     for m in config.models]
    config.grid = [{**dict(e), "models": [models.with_parameterization(
        m, config.parameterization) for m in dict(e)["models"]]} if "models" in dict(e)
        else dict(e) for e in config.grid]
  if config.learning_rate is None and not is_study(config):
    config.learning_rate = models.get(config.model).learning_rate
  if config.dataset in data.STREAM_ONLY:  # it never fits on a device
    config.stream, config.batch_order = True, "shared"
  return config


def to_json_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON types (what ``config.json`` holds)."""
  return json.loads(config.to_json())


# Fields added after runs were made, with the default that trains as those runs did: left out
# of ``identity`` at that default, so the runs keep their hash and resume.
LATER_DEFAULTS = {"freeze_at_fit": False, "binary": False, "parameterization": "standard",
                  "output_scale": 1.0, "dropout": 0.0, "stream": False,
                  "batch_order": "replica", "order_seed": 0, "image_size": 0}
# Fields of how a run executes, not of what it computes: never part of ``identity``.
EXECUTION_FIELDS = ("stream_workers",)


def identity(config: ml_collections.ConfigDict | dict) -> dict:
  """What the config's hash (in its checkpoints and summary) is of: every field, as JSON,
  but ``LATER_DEFAULTS``' fields at their default; a dict is config.json's fields. Not
  config.json's ``format``: the same experiment keeps its hash across run-file formats."""
  fields = dict(config) if isinstance(config, dict) else to_json_dict(config)
  return {k: v for k, v in fields.items()
          if k not in EXECUTION_FIELDS and (k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k])}


# --------------------------------------------------------------------------- studies

def is_study(config: ml_collections.ConfigDict) -> bool:
  return bool(config.get("models"))


def for_model(config: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
  """A study's run of one model: the config with ``model`` set, no ``models``, and the grid
  entries that apply to the model (without their ``models`` lists). It is a plain run's
  config, the same as training that model alone."""
  sub = ml_collections.ConfigDict(to_json_dict(config))
  sub.model = model
  sub.models = []
  sub.grid = [{k: v for k, v in dict(e).items() if k != "models"}
              for e in config.grid if model in _entry_models(e, model)]
  return sub


def _entry_models(entry, default: str) -> list:
  models_ = dict(entry).get("models", [default])
  _require(isinstance(models_, (list, tuple)) and len(models_) > 0,
           f"grid entry field models={models_!r} must be a non-empty list of model names")
  for name in models_:
    models.get(name)
  return list(models_)


def check_study(c: ml_collections.ConfigDict) -> None:
  """A study's models exist, appear once, and each has a grid entry; every grid entry's
  ``models`` are among them."""
  names = c.models
  _require(isinstance(names, (list, tuple)) and all(isinstance(m, str) for m in names),
           f"models={names!r} must be a list of model names", "models")
  for name in names:
    models.get(name)
  twice = sorted({m for m in names if list(names).count(m) > 1})
  _require(not twice, f"models lists {', '.join(twice)} more than once: name each model once")
  for entry in c.grid if isinstance(c.grid, (list, tuple)) else []:
    if hasattr(entry, "keys") and "models" in entry:
      outside = [m for m in _entry_models(entry, names[0]) if m not in names]
      _require(not outside, f"grid entry {dict(entry)} names model(s) "
               f"{', '.join(outside)} that the study's models ({', '.join(names)}) lack: "
               f"add them to models or remove them from the entry")
  for name in names:
    sub = for_model(c, name)
    _require(len(sub.grid) > 0, f"no grid entry applies to model {name}: give it an entry "
             f"(an entry without `models` applies to every model)")
    validate(sub)


# --------------------------------------------------------------------------- validation

def import_modules(names) -> None:
  """Imports the config's ``imports`` (modules that register models or datasets), from the
  Python path or else the current folder; one line for a module that is missing or fails."""
  _require(isinstance(names, (list, tuple)) and all(isinstance(n, str) and n for n in names),
           f"imports={names!r} must be a list of module names", "imports")
  for name in names:
    try:
      try:
        importlib.import_module(name)
      except ModuleNotFoundError as e:
        if e.name != name.split(".")[0] or os.getcwd() in sys.path:
          raise
        sys.path.append(os.getcwd())  # `zhang` run beside the module, as `python -m` would
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - whatever the module raised, said in one line
      message = " ".join(str(e).split())
      raise UsageError(f"imports: module {name!r} cannot be imported ({type(e).__name__}: "
                       f"{message}): put it on PYTHONPATH or in the current folder") from None


def choices() -> dict[str, tuple[str, ...]]:
  """The allowed values of every config field (and grid axis) that takes a name: what
  validation checks, the CLI lists and the benchmarks offer."""
  return {"model": (*models.names(), models.MLP_PATTERN), "dataset": tuple(data.names()),
          "compute_dtype": ("float32", "bfloat16"), "augmentation": augment.NAMES,
          "kind": randomize.KINDS, "optimizer": OPTIMIZERS}


OPTIMIZERS = ("sgd_momentum", "adamw")


def _require(ok: bool, message: str, field: str | None = None) -> None:
  """Raises UsageError(message) unless ok; ``field`` adds its example (``example``)."""
  if not ok:
    raise UsageError(f"{message}, e.g. {example(field)}" if field else message)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_choice(field: str, value) -> None:
  allowed = choices()[field]
  _require(value in allowed, f"{field}={value!r} must be one of {', '.join(allowed)}")


def check_learning_rate(value, where: str = "learning_rate", how: str | None = None) -> None:
  """``how``: the message's example (default ``--config.learning_rate=...``)."""
  _require(_is_number(value) and value > 0, f"{where}={value!r} must be a positive finite "
           f"number, e.g. {how or example('learning_rate')}")


def check_weight_decay(value, where: str = "weight_decay", how: str | None = None) -> None:
  """``how``: the message's example (default ``--config.weight_decay=...``)."""
  _require(_is_number(value) and value >= 0, f"{where}={value!r} must be a finite number "
           f">= 0 (0 = none), e.g. {how or example('weight_decay')}")


def check_dropout(value, where: str = "dropout", how: str | None = None) -> None:
  """``how``: the message's example (default ``--config.dropout=...``)."""
  _require(_is_number(value) and 0 <= value < 1, f"{where}={value!r} must be in [0, 1) "
           f"(0 = none), e.g. {how or example('dropout')}")


def _check_dropout_model(model: str, rates, in_entry: bool) -> None:
  """A rate above 0 only for a model with dropout (``ModelSpec.dropout``)."""
  rate = next((r for r in rates if r > 0), None)
  if rate is None or models.get(model).dropout:
    return
  where, fix = (("grid dropout", "dropouts=[0.0] in the entry") if in_entry
                else ("dropout", "--config.dropout=0"))
  raise UsageError(f"{where}={rate!r}, but model {model} has no dropout (models with "
                   f"dropout: {', '.join(models.with_dropout())}): use {fix}, or a model "
                   f"with dropout")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises UsageError (one line: what is wrong, how to fix it) for a bad config."""
  known = set(base_config().keys())
  unknown = set(c.keys()) - known
  _require(not unknown, f"unknown config field(s) {', '.join(sorted(unknown))}: "
           f"known fields are {', '.join(sorted(known))}")
  missing = known - set(c.keys())
  _require(not missing, f"config lacks field(s) {', '.join(sorted(missing))}: "
           f"start from zhang.experiment.config.base_config()")
  import_modules(c.imports)
  _check_scaling(c)
  _check_stream(c)
  if is_study(c):
    check_study(c)
    return
  spec = models.get(c.model)
  data.check_name(c.dataset)
  inputs = data.input_kind(c.dataset)
  _require(spec.inputs == inputs,
           f"model {c.model} takes {spec.inputs}, but dataset {c.dataset} is {inputs}: use "
           f"one of {', '.join(models.names(inputs))} for {c.dataset}")
  # modadd's fields, checked whatever the dataset (their defaults are valid).
  data.check_modadd(c.modulus, c.train_fraction)
  _require(isinstance(c.split_seed, int) and not isinstance(c.split_seed, bool)
           and c.split_seed >= 0, f"split_seed={c.split_seed!r} must be an integer >= 0",
           "split_seed")
  _check_choice("compute_dtype", c.compute_dtype)
  _check_choice("optimizer", c.optimizer)
  for name in ("adam_b1", "adam_b2"):
    _require(_is_number(c[name]) and 0 <= c[name] < 1, f"{name}={c[name]!r} must be in [0, 1)",
             name)
  _require(_is_number(c.generalize_threshold) and 0 < c.generalize_threshold <= 1,
           f"generalize_threshold={c.generalize_threshold!r} must be in (0, 1]",
           "generalize_threshold")
  for name in ("stop_at_fit", "freeze_at_fit", "binary"):
    _require(isinstance(c[name], bool), f"{name}={c[name]!r} must be true or false", name)
  _require(not c.binary or inputs != "tokens", f"binary=True is for image datasets, and "
           f"{c.dataset} has token inputs: use --config.binary=false for {c.dataset}")
  augment.check_name(c.augmentation)
  for name in ("batch_size", "max_steps", "eval_every", "eval_batch_size", "lr_decay_every",
               "checkpoint_every", "keep_checkpoints"):
    value = c[name]
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"{name}={value!r} must be a positive integer", name)
  for name in ("n_train", "n_test"):
    _require(isinstance(c[name], int) and not isinstance(c[name], bool) and c[name] >= 0,
             f"{name}={c[name]!r} must be an integer >= 0 (0 means the whole split)", name)
  if c.learning_rate is not None:
    check_learning_rate(c.learning_rate)
  _require(_is_number(c.momentum) and 0 <= c.momentum < 1,
           f"momentum={c.momentum!r} must be in [0, 1)", "momentum")
  _require(_is_number(c.lr_decay) and 0 < c.lr_decay <= 1,
           f"lr_decay={c.lr_decay!r} must be in (0, 1] (1 = no decay)", "lr_decay")
  check_weight_decay(c.weight_decay)
  check_dropout(c.dropout)
  _require(_is_number(c.fit_threshold) and 0 < c.fit_threshold <= 1,
           f"fit_threshold={c.fit_threshold!r} must be in (0, 1]", "fit_threshold")
  expand_grid(c)


def _check_scaling(c: ml_collections.ConfigDict) -> None:
  """The parameterization is a preset the model(s) take, and the output scale positive."""
  _require(isinstance(c.parameterization, str), f"parameterization={c.parameterization!r} "
           f"must be a name", "parameterization")
  for name in c.models or [c.model]:
    models.with_parameterization(name, c.parameterization)
  _require(_is_number(c.output_scale) and 0 < c.output_scale < float("inf"),
           f"output_scale={c.output_scale!r} must be a positive number (1 = the model's own "
           f"outputs)", "output_scale")


def _check_stream(c: ml_collections.ConfigDict) -> None:
  """The batch order and the streaming fields."""
  _require(c.batch_order in ("replica", "shared"), f"batch_order={c.batch_order!r} must be "
           f"replica (each replica its own seed's) or shared (every replica one order)",
           "batch_order")
  for name in ("order_seed", "stream_workers", "image_size"):
    _require(isinstance(c[name], int) and not isinstance(c[name], bool) and c[name] >= 0,
             f"{name}={c[name]!r} must be an integer >= 0", name)
  _require(isinstance(c.stream, bool), f"stream={c.stream!r} must be true or false", "stream")
  _require(not c.stream or c.batch_order == "shared",
           "stream=true trains every replica on the same batches: set batch_order=shared too "
           "(the order a replica of seed order_seed takes)", "batch_order")


def check_against_data(c: ml_collections.ConfigDict, n_train: int) -> None:
  """Checks that need the dataset's size."""
  _require(c.batch_size <= n_train,
           f"batch_size={c.batch_size} is larger than the training set ({n_train} examples): "
           f"use batch_size <= {n_train}")


# --------------------------------------------------------------------------- the grid

AXES = ("kinds", "corruptions", "seeds", "learning_rates", "weight_decays", "augmentations",
        "output_scales", "dropouts")


@dataclasses.dataclass(frozen=True)
class Replica:
  """One replica's coordinates in the grid."""
  index: int
  kind: str
  corruption: float
  seed: int
  learning_rate: float
  weight_decay: float
  augmentation: str = "none"
  model: str = ""
  output_scale: float = 1.0
  dropout: float = 0.0


def _axis(entry: dict, name: str, default) -> list:
  values = entry.get(name, [default])
  _require(isinstance(values, (list, tuple)) and len(values) > 0,
           f"grid entry field {name}={values!r} must be a non-empty list")
  return list(values)


def expand_grid(c: ml_collections.ConfigDict) -> list[Replica]:
  """The replicas of the config's grid: each entry's product of its axes (``AXES``; kinds,
  corruptions and seeds required, the others default to the config's scalars), grouped by
  kind (in ``randomize.KINDS`` order) and numbered in that order."""
  grid = c.grid
  _require(isinstance(grid, (list, tuple)) and len(grid) > 0,
           "grid must be a non-empty list of dict(kinds=[...], corruptions=[...], seeds=[...])")
  replicas, seen = [], set()
  for entry in grid:
    for kind, p, seed, rate, wd, aug, alpha, drop in _entry_values(c, entry):
      key = (kind, float(p), seed, float(rate), float(wd), aug, float(alpha), float(drop))
      _require(key not in seen, f"replica kind={kind}, corruption={p}, seed={seed}, "
               f"learning rate={rate}, weight decay={wd}, augmentation={aug}, output scale="
               f"{alpha}, dropout={drop} appears twice in the grid: remove the duplicate")
      seen.add(key)
      replicas.append(Replica(len(replicas), *key[:6], model=c.model, output_scale=key[6],
                              dropout=key[7]))
  _require(len(replicas) > 0, f"no grid entry applies to model {c.model}: give it an entry "
           f"(an entry without `models` applies to every model)")
  # Replicas of one kind sit next to each other, so each kind's input randomization is
  # compiled once for its group (see zhang/experiment/step.py); within a kind, grid order is kept.
  replicas.sort(key=lambda r: randomize.KINDS.index(r.kind))
  return [dataclasses.replace(r, index=i) for i, r in enumerate(replicas)]


def _entry_values(c: ml_collections.ConfigDict, entry) -> list[tuple]:
  """One grid entry's replicas as (kind, corruption, seed, learning rate, weight decay,
  augmentation, output scale, dropout), as the entry spells them, checked; none for an entry
  of a study's other models."""
  _require(isinstance(entry, dict) or hasattr(entry, "keys"),
           f"grid entry {entry!r} must be a dict(kinds=[...], corruptions=[...], seeds=[...])")
  entry = dict(entry)
  if c.model not in _entry_models(entry, c.model):
    return []
  entry.pop("models", None)
  unknown = set(entry) - set(AXES)
  _require(not unknown, f"grid entry field(s) {', '.join(sorted(unknown))} unknown: an "
           f"entry takes {', '.join(AXES)} (and models, in a study)")
  lacking = {"kinds", "corruptions", "seeds"} - set(entry)
  _require(not lacking, f"grid entry {entry} lacks {', '.join(sorted(lacking))}: kinds, "
           f"corruptions and seeds are required")
  lr = c.learning_rate if c.learning_rate is not None else models.get(c.model).learning_rate
  axes = [_axis(entry, name, default) for name, default in zip(
      AXES, (None, None, None, lr, c.weight_decay, c.augmentation, c.output_scale,
             c.dropout))]
  _check_axes(c.dataset, *axes)
  _check_dropout_model(c.model, axes[-1], "dropouts" in entry)
  return list(itertools.product(*axes))


def _check_axes(dataset: str, kinds, corruptions, seeds, lrs, wds, augs, alphas,
                drops) -> None:
  """Every value of a grid entry's axes is valid (and fits the dataset's inputs)."""
  for kind in kinds:
    randomize.kind_id(kind)
    _require(kind == "labels" or dataset not in data.TOKEN_DATASETS,
             f"kind {kind} randomizes pixels, and {dataset} has token inputs, not "
             f"images: use kinds=['labels'] (label corruption) for {dataset}")
  for p in corruptions:
    _require(_is_number(p) and 0.0 <= p <= 1.0,
             f"corruption level {p!r} is outside [0, 1]: use a probability such as 0.2")
  for seed in seeds:
    _require(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**31,
             f"seed {seed!r} must be an integer in [0, 2**31)")
  for value in lrs:
    check_learning_rate(value, "grid learning rate", "learning_rates=[0.01] in the entry")
  for value in wds:
    check_weight_decay(value, "grid weight decay", "weight_decays=[5e-4] in the entry")
  for value in drops:
    check_dropout(value, "grid dropout", "dropouts=[0.0, 0.2] in the entry")
  for alpha in alphas:
    _require(_is_number(alpha) and 0 < alpha < float("inf"),
             f"output scale {alpha!r} must be a positive number, e.g. output_scales=[1, 10, "
             f"100] in the entry")
  for name in augs:
    augment.check_name(name)
    _require(name == "none" or dataset not in data.TOKEN_DATASETS,
             f"augmentation {name} is for images, and {dataset} has token inputs: use "
             f"augmentations=['none'] for {dataset}")
