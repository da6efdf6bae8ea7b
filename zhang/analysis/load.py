"""Read run directories (`config.json`, `metrics.jsonl`, `summary.json`) into tidy DataFrames.

Paths may be local or on a bucket (`gs://...`): everything goes through `etils.epath`.
Nothing here imports jax or the trainer, so a laptop with pandas can read any run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable, Sequence

import pandas as pd
from etils import epath

from zhang.errors import UsageError
from zhang.formatting import condition_name
from zhang.rundir import format as format_lib

KINDS = ("labels", "shuffled_pixels", "random_pixels", "gaussian")
# Run-level config fields that change how training behaves; two runs that agree on all of
# them (and replicas that agree on HPARAMS) are replicas of the same setup and may share a
# true-label baseline.
_SETUP_FIELDS = ("model", "dataset", "batch_size", "momentum", "lr_decay", "lr_decay_every")
# Per-replica hyper-parameters (grid axes), in every row of metrics.jsonl.
HPARAMS = ("learning_rate", "weight_decay", "augmentation", "output_scale", "dropout")
_HPARAM_SHORT = {"learning_rate": "lr", "weight_decay": "wd", "augmentation": "aug",
                 "output_scale": "alpha", "dropout": "dropout"}
# HPARAMS added after runs were made, with the value those runs trained with.
_LATER_HPARAMS = {"output_scale": 1.0, "dropout": 0.0}
# Columns that name a setup; all are functions of `setup`, carried so tables can show and sort
# by them. `hparams` names only the axes that vary among runs of the same setup family ("" if
# none), so a run with one learning rate and weight decay is named by its model alone.
SETUP_COLUMNS = ("setup", "base_setup", "hparams", *HPARAMS)


@dataclasses.dataclass
class Run:
  """One run directory as written by `zhang train --workdir`."""
  name: str
  path: str
  config: dict[str, Any]
  summary: dict[str, Any] | None
  metrics: pd.DataFrame  # rows of metrics.jsonl

  @property
  def status(self) -> str:
    """'complete', 'running', or 'unknown' (no summary.json yet)."""
    return (self.summary or {}).get("status", "unknown")

  @property
  def steps_run(self) -> int:
    return int(self.metrics["step"].max())


@dataclasses.dataclass
class Runs:
  """Several runs, concatenated into tidy tables.

  Attributes:
    runs: the runs, in the order given.
    metrics: one row per replica per evaluation, with run-level columns (`run`, `model`,
      `dataset`) and replica-level ones (`learning_rate`, `weight_decay`, `augmentation`,
      `setup`, `base_setup`, `hparams`, `regularizers`, `condition`) joined in.
    replicas: one row per replica: its randomization and hyper-parameters, its final metrics
      (from the curves) and what summary.json said about it.

  A setup is a run-level training setup (`base_setup`: model, regularizers, run name when
  ambiguous) plus the replica's hyper-parameter combination (`hparams`, e.g. "lr 0.01, wd 0"),
  so every table grouped by `setup` is per combination.
  """
  runs: list[Run]
  metrics: pd.DataFrame
  replicas: pd.DataFrame

  @property
  def datasets(self) -> list[str]:
    return sorted(self.replicas["dataset"].unique())

  def running(self) -> list[Run]:
    return [r for r in self.runs if r.status != "complete"]


def condition_order(kind: str, corruption: float) -> tuple[int, float]:
  """Sort key: true labels, increasing corruption, random labels, then pixel kinds."""
  if kind == "labels":
    return (0, corruption)
  return (1 + (KINDS.index(kind) if kind in KINDS else len(KINDS)), corruption)


def regularizers(config: dict[str, Any]) -> list[str]:
  """Explicit and implicit regularizers a config turns on, as in the paper's Table 1.

  `config` is a run's config, or one merged with a replica's hyper-parameters
  (`{**config, **replica}`), since weight decay and augmentation are per replica.
  """
  regs = []
  augmentation = config.get("augmentation") or "none"
  if augmentation != "none":
    regs.append(f"augmentation ({augmentation})")
  if (config.get("weight_decay") or 0) > 0:
    regs.append("weight decay")
  model = str(config.get("model", ""))
  if model.startswith("inception") and "nobn" not in model:
    regs.append("batch norm")
  if (config.get("dropout") or 0) > 0:
    regs.append("dropout")
  return regs


def is_run_dir(path: str | epath.Path) -> bool:
  path = epath.Path(path)
  return (path / "config.json").exists() and (path / "metrics.jsonl").exists()


def study_models(path: str | epath.Path) -> list[str] | None:
  """The models of the study in `path` (a `zhang train` workdir whose config names several
  `models`, each a run in `path/MODEL`), or None when `path` is not a study."""
  path = epath.Path(path)
  if not (path / "config.json").exists() or (path / "metrics.jsonl").exists():
    return None
  names = format_lib.read_config(path).get("models")
  return list(names) if names else None


def expand_studies(paths: Sequence[epath.Path]) -> list[epath.Path]:
  """Each study in `paths` replaced by its models' runs (those that have started)."""
  out = []
  for path in paths:
    names = study_models(path)
    if names is None:
      out.append(path)
      continue
    started = [path / m for m in names if is_run_dir(path / m)]
    if not started:
      raise UsageError(f"{path} is a study of {', '.join(names)} and none of their runs has "
                       f"an evaluation yet; wait for the first one")
    out += started
  return out


# The row's coordinates: integers, never null.
_COORDINATES = ("step", "replica", "seed")
_NUMBERS = ("epoch", "corruption", "learning_rate", "weight_decay")
_NUMBER_SUFFIXES = ("_acc", "_loss", "_confidence", "_step", "_top5")


def _read_jsonl(path: epath.Path, in_progress: bool = False) -> pd.DataFrame:
  """Reads metrics.jsonl. A torn last line is dropped only while the run is ``in_progress``
  (the trainer may be writing it right now); anywhere else, or a field of the wrong type, is
  damage, refused in one line naming the file and line rather than read as a shorter run."""
  lines = path.read_text().splitlines()
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1 and in_progress:
        break
      raise UsageError(f"{path} line {i + 1} is not valid JSON (a torn row): the file is damaged; "
                       f"rerun the run's zhang train command to repair it, or delete the "
                       f"line") from None
    _check_row(row, path, i + 1)
    rows.append(row)
  return pd.DataFrame(rows)


def _check_row(row: Any, path: epath.Path, line: int) -> None:
  """One line for a row that is not an object or holds a non-number where a number belongs
  (null is a diverged replica's metric, never a coordinate)."""
  if not isinstance(row, dict):
    raise UsageError(f"{path} line {line} is not a JSON object: the file is damaged")
  for key, value in row.items():
    numeric = (key in _COORDINATES or key in _NUMBERS or key.endswith(_NUMBER_SUFFIXES))
    if not numeric or (value is None and key not in _COORDINATES):
      continue
    whole = key in _COORDINATES
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
      raise UsageError(f"{path} line {line}: {key} is {json.dumps(value)[:40]}, not "
                       f"{'an integer' if whole else 'a number'}: the file is damaged")


def _not_a_run_message(path: epath.Path) -> str:
  if not path.exists():
    return f"{path} does not exist"
  if not path.is_dir():
    return f"{path} is not a directory; pass a run directory (the --workdir of zhang train)"
  missing = [f for f in ("config.json", "metrics.jsonl") if not (path / f).exists()]
  msg = f"{path} is not a run: it has no {' or '.join(missing)}"
  children = sorted(p.name for p in path.iterdir() if p.is_dir() and is_run_dir(p))
  if children:
    shown = ", ".join(children[:3]) + (", ..." if len(children) > 3 else "")
    msg += f" (it contains runs: {shown}; pass those)"
  return msg


_METRIC_COLUMNS = ("step", "epoch", "replica", "kind", "corruption", "seed", *HPARAMS,
                   "train_loss", "train_acc", "test_loss", "test_acc")


def load_run(path: str | epath.Path, name: str | None = None) -> Run:
  """Loads one run directory. Raises UsageError if it is not a run, or not one of the
  run-file format this code reads (``zhang.rundir.format``)."""
  path = epath.Path(path)
  if not is_run_dir(path):
    raise UsageError(_not_a_run_message(path))
  config = format_lib.read_config(path)
  summary = (format_lib.read_summary(path) if (path / format_lib.SUMMARY).exists()
             else None)
  status = (summary or {}).get("status", "unknown")
  metrics = _read_jsonl(path / "metrics.jsonl", in_progress=status in ("running", "unknown"))
  if metrics.empty:
    raise UsageError(f"{path} has no evaluations yet (metrics.jsonl is empty); "
                     f"wait for the first one (eval_every={config.get('eval_every')})")
  for column, value in _LATER_HPARAMS.items():
    if column not in metrics.columns:
      metrics[column] = value
  missing = [c for c in _METRIC_COLUMNS if c not in metrics.columns]
  if missing:
    raise UsageError(f"{path}/metrics.jsonl lacks columns {missing}; was it written by "
                     f"zhang train?")
  for key in ("model", "dataset"):
    if key not in config:
      raise UsageError(f"{path}/config.json has no '{key}' field")
  return Run(name=name or path.name, path=str(path), config=config, summary=summary,
             metrics=metrics)


def _unique_names(paths: Sequence[epath.Path]) -> list[str]:
  """Shortest path suffixes that tell the runs apart (`a/run1`, `b/run1`)."""
  for depth in range(1, 1 + max(len(p.parts) for p in paths)):
    names = ["/".join(p.parts[-depth:]) for p in paths]
    if len(set(names)) == len(names):
      return names
  return [str(p) for p in paths]


def _hparam_text(field: str, value: Any) -> str:
  return f"{_HPARAM_SHORT[field]} {value:g}" if isinstance(value, float) else (
      f"{_HPARAM_SHORT[field]} {value}")


def hparams_label(row: dict[str, Any], axes: Sequence[str]) -> str:
  """Names a hyper-parameter combination by the axes that vary: 'lr 0.01, wd 0.0005'."""
  return ", ".join(_hparam_text(a, row[a]) for a in axes)


def _combinations(run: Run) -> pd.DataFrame:
  """One row per replica: `replica` and its HPARAMS."""
  return run.metrics.groupby("replica", as_index=False)[list(HPARAMS)].first()


def varying_axes(runs: Sequence[Run]) -> list[str]:
  """The HPARAMS that take more than one value across the replicas of `runs`."""
  combos = pd.concat([_combinations(r) for r in runs], ignore_index=True)
  return [a for a in HPARAMS if combos[a].nunique(dropna=False) > 1]


def _run_key(run: Run) -> tuple[str, ...]:
  return tuple(json.dumps(run.config.get(f), sort_keys=True) for f in _SETUP_FIELDS)


def _setup_labels(runs: Sequence[Run]) -> dict[str, tuple[str, list[str]]]:
  """Names each run's training setup and the HPARAMS that vary among its replicas.

  Runs that agree on `_SETUP_FIELDS` are one setup family; an axis varies when it takes more
  than one value within the family, and regularizers it sets are left out of the name (the
  replica's `hparams` names them). Returns run name -> (base setup name, varying axes): the
  model, plus fixed regularizers, plus the run name if that is ambiguous.
  """
  families: dict[tuple[str, ...], list[Run]] = {}
  for run in runs:
    families.setdefault(_run_key(run), []).append(run)
  varying = {key: varying_axes(family) for key, family in families.items()}
  labels, keys = {}, {}
  for run in runs:
    key = _run_key(run)
    fixed = _combinations(run).iloc[0].to_dict()  # same for every replica unless varying
    config = {**run.config, **{a: fixed[a] for a in HPARAMS if a not in varying[key]}}
    for a in varying[key]:
      config.pop(a, None)
    label = run.config["model"]
    regs = regularizers(config)
    if regs:
      label += " + " + " + ".join(regs)
    keys.setdefault(label, set()).add(key)
    labels[run.name] = (label, key)
  out = {}
  for name, (label, key) in labels.items():
    if len(keys[label]) > 1:  # same model, different hyper-parameters: keep them apart
      label = f"{label} [{name}]"
    out[name] = (label, varying[key])
  return out


def _replica_setups(run: Run, base: str, varying: Sequence[str]) -> pd.DataFrame:
  """One row per replica: `replica`, `setup`, `base_setup`, `hparams`, `regularizers`."""
  combos = _combinations(run)
  rows = []
  for row in combos.to_dict("records"):
    hp = hparams_label(row, varying)
    rows.append(dict(replica=row["replica"], setup=f"{base} ({hp})" if hp else base,
                     base_setup=base, hparams=hp,
                     regularizers=", ".join(regularizers({**run.config, **row})) or "none"))
  return pd.DataFrame(rows, columns=["replica", "setup", "base_setup", "hparams",
                                     "regularizers"])


def setup_sort_columns(table: pd.DataFrame) -> list[str]:
  """Columns to sort setups by: base setup, then hyper-parameters numerically."""
  return [c for c in ("base_setup", *HPARAMS, "setup") if c in table.columns]


def _replica_table(run: Run, setups: pd.DataFrame) -> pd.DataFrame:
  """One row per replica: identity, last evaluated metrics, and summary.json fields."""
  m = run.metrics.sort_values("step")
  last = m.groupby("replica", as_index=False).last()
  cols = ["replica", "kind", "corruption", "seed", *HPARAMS, "step", "epoch", "train_loss",
          "train_acc", "test_loss", "test_acc"]
  cols += [c for c in ("test_confidence", "test_entropy", "train_top5", "test_top5")
           if c in last.columns]
  table = last[cols].rename(columns={
      "step": "steps_run", "epoch": "epochs_run", "train_loss": "final_train_loss",
      "train_acc": "final_train_acc", "test_loss": "final_test_loss",
      "test_acc": "final_test_acc", "test_entropy": "final_test_entropy",
      "test_confidence": "final_test_confidence", "train_top5": "final_train_top5",
      "test_top5": "final_test_top5"})
  summary_reps = pd.DataFrame((run.summary or {}).get("replicas", []))
  if not summary_reps.empty and "replica" in summary_reps.columns:
    keep = [c for c in ("replica", "label_noise", "fit_step", "fit_epoch")
            if c in summary_reps.columns]
    table = table.merge(summary_reps[keep].rename(
        columns={"fit_step": "summary_fit_step", "fit_epoch": "summary_fit_epoch"}),
        on="replica", how="left")
  summary = run.summary or {}
  table.insert(0, "run", run.name)
  table["model"] = run.config["model"]
  table["dataset"] = run.config["dataset"]
  table = table.merge(setups, on="replica", how="left")
  table["num_params"] = summary.get("num_params", math.nan)
  table["num_classes"] = summary.get("num_classes", math.nan)
  table["status"] = run.status
  table["condition"] = [condition_name(k, p) for k, p in zip(table.kind, table.corruption)]
  return table


def load_runs(paths: str | epath.Path | Iterable[str | epath.Path]) -> Runs:
  """Loads one or many run directories (local or gs://) into tidy tables. A study (a workdir
  of several `models`) counts as its models' runs, named by model."""
  if isinstance(paths, (str, epath.Path)) or hasattr(paths, "__fspath__"):
    paths = [paths]
  paths = expand_studies([epath.Path(p) for p in paths])
  if not paths:
    raise UsageError("no run directories given")
  names = _unique_names(paths)
  runs = [load_run(p, n) for p, n in zip(paths, names)]
  bases = _setup_labels(runs)
  metrics, replicas = [], []
  for run in runs:
    setups = _replica_setups(run, *bases[run.name])
    m = run.metrics.copy()
    m.insert(0, "run", run.name)
    m["model"] = run.config["model"]
    m["dataset"] = run.config["dataset"]
    m["status"] = run.status  # so fit times know which replicas may still fit
    m = m.merge(setups, on="replica", how="left")
    m["condition"] = [condition_name(k, p) for k, p in zip(m.kind, m.corruption)]
    metrics.append(m)
    replicas.append(_replica_table(run, setups))
  metrics = pd.concat(metrics, ignore_index=True).sort_values(
      ["run", "replica", "step"], ignore_index=True)
  return Runs(runs=runs, metrics=metrics, replicas=pd.concat(replicas, ignore_index=True))


def require_one_dataset(table: pd.DataFrame, what: str = "one figure") -> str:
  """Returns the dataset of `table`; UsageError if it mixes datasets."""
  datasets = sorted(table["dataset"].unique())
  if len(datasets) != 1:
    raise UsageError(f"runs of different datasets ({', '.join(datasets)}) cannot share "
                     f"{what}; report each dataset separately")
  return datasets[0]
