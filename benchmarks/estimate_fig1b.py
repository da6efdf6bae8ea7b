"""Wall time of the whole Figure 1b grid on CIFAR-10, from measured step times and steps-to-fit.

  python benchmarks/estimate_fig1b.py results/throughput_*.jsonl \\
      --fit_steps inception_small=16600,alexnet_small=16000,mlp_1x512=16000
  python benchmarks/estimate_fig1b.py rows.jsonl --fit_from runs/*/summary.json --json est.json
  python benchmarks/estimate_fig1b.py OUT/device_check.json --fit_steps ...   # its rows

The grid: per model, corruption 0, 0.1, ..., 1 (``--levels 11``) x ``--seeds 3`` = 33
``labels`` replicas, all trained in one program (the codebase's design), the models one
after another on one device. Per model:

  step time   the throughput rows (benchmarks/throughput.py, JSON lines) of the model: the
              smallest measured R >= 33, scaled to 33 in proportion to R (step time taken to
              grow with the replicas compiled); with no such row, the largest R, scaled the
              same way and flagged *extrapolated*. Among the rows' execution plans
              (``plan``), the fastest, measured ones before extrapolated ones.
              ``step_ms_median`` (the median chunk; ``--step_stat best`` for ``step_ms``).
              Rows of another batch size than ``--batch_size`` are used only when none
              match, scaled per example and flagged.
  steps       steps until the model's last replica fits, rounded up to ``--eval_every``
              (fitting is seen only at evaluations; the run stops at the first one where all
              have fitted), capped at ``--max_steps``. From ``--fit_from summary.json``
              (zhang train's: the latest ``fit_step`` of the model's ``labels`` replicas; a
              replica that never fitted counts with its ``steps_run`` and makes the estimate
              a lower bound) or ``--fit_steps model=N`` (an assumption, stated as such).
  evaluation  at step 0 and every ``--eval_every`` steps (1,000, configs/fig1.py's), every
              replica on the whole train and test sets (``--n_train + --n_test`` = 60,000
              images), each image costing ``eval_cost`` training examples: measured, from
              the ``timing`` of a zhang train run of the model on the same device kind
              (``--eval_cost_from summary.json``, or a ``--fit_from`` one), else
              ``--eval_cost`` (1/3, a forward pass: an assumption, stated as such).
  compile     twice the row's ``compile_s`` (the train chunk and the evaluation program).

  seconds = compile + steps x step + (steps / eval_every + 1) x (60,000 / batch) x step x eval_cost

The defaults are configs/fig1.py's (batch 128, evaluation every 1,000 steps, max_steps 60,000)
at levels=11, seeds=3: the grid that ``zhang train --config configs/fig1.py:levels=11,seeds=3``
runs for one model.

Prints a markdown block (stdout) and writes the same numbers with ``--json``. Exit 2, with one
line on stderr, when a model has no rows (the line says how to measure it), when the rows
come from more than one device kind, or when a model's steps-to-fit are missing.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

MODELS = ("inception_small", "alexnet_small", "mlp_1x512")
DTYPES = ("float32", "bfloat16")
# Named here, not asked of zhang.experiment.models: this script imports neither jax nor zhang, so it
# runs wherever the rows were copied to.
CONV_NETS = ("alexnet_small", "inception_small", "inception_small_nobn")


class EstimateError(Exception):
  """A problem with the inputs: main prints it on one line and exits 2."""


# ---------------------------------------------------------------------------- inputs

def row_plan(row: dict) -> str:
  """A throughput row's execution plan. Rows from before the plan was recorded name its
  parts as the config fields of the time (strategy, conv_gradient, cpu_kernels)."""
  if row.get("plan"):
    return row["plan"]
  parts = [("replicas", row.get("strategy")), ("gradients", row.get("conv_gradient")),
           ("cpu_kernels", row.get("cpu_kernels"))]
  return ",".join(f"{k}={v}" for k, v in parts if v) or "unknown"


def load_rows(paths) -> list[dict]:
  """The JSON rows of throughput.py output files, or of device_check.py's JSON (other lines,
  e.g. logs, are skipped; a missing file is said on stderr: a model it would have held is
  then reported missing)."""
  rows = []
  for path in paths:
    if not pathlib.Path(path).is_file():
      print(f"estimate_fig1b.py: {path}: no such file, skipped", file=sys.stderr)
      continue
    text = pathlib.Path(path).read_text()
    try:
      whole = json.loads(text)
    except json.JSONDecodeError:
      whole = None
    if isinstance(whole, dict) and isinstance(whole.get("throughput"), list):
      found = whole["throughput"]  # device_check.py's results
    else:
      found = [json.loads(line) for line in map(str.strip, text.splitlines())
               if line.startswith("{")]
    for row in found:
      if "model" in row and "replicas" in row and (row.get("step_ms") or 0) > 0:
        rows.append(dict(row, source=str(path)))
  return rows


def device_kind(rows: list[dict]) -> str:
  kinds = sorted({str(r.get("device_kind")) for r in rows})
  if len(kinds) > 1:
    by_kind = {k: sorted({r["source"] for r in rows if str(r.get("device_kind")) == k})
               for k in kinds}
    raise EstimateError("throughput rows from more than one device kind: " + "; ".join(
        f"{k} ({', '.join(v)})" for k, v in by_kind.items()) + ": give one device's rows")
  return kinds[0] if kinds else "unknown"


def _count(text: str) -> int:
  """'16600', '16.6k' or '1.5e4' -> a positive int."""
  t = text.strip().lower()
  scale = 1000 if t.endswith("k") else 1
  value = float(t[:-1] if scale > 1 else t) * scale
  if not math.isfinite(value) or value <= 0:
    raise ValueError(text)
  return math.ceil(value)


def parse_fit_steps(specs) -> dict[str, dict]:
  """``--fit_steps`` values ("model=N[,model=N]", repeatable) -> model -> fit entry."""
  out = {}
  for spec in specs or ():
    for item in filter(None, (s.strip() for s in spec.split(","))):
      name, sep, value = item.partition("=")
      try:
        if not sep:
          raise ValueError(item)
        steps = _count(value)
      except ValueError:
        raise EstimateError(f"--fit_steps {item!r}: use model=STEPS, e.g. "
                            f"inception_small=16600 or inception_small=16.6k") from None
      out[name.strip()] = dict(steps=steps, lower_bound=False, source="--fit_steps",
                               assumed=True)
  return out


def fit_steps_from_summaries(paths) -> dict[str, dict]:
  """model -> steps until its last ``labels`` replica fitted, over every summary.json given.

  A replica with no ``fit_step`` counts with the run's ``steps_run`` and makes the entry a
  lower bound. Notes say where a run differs from the estimated grid (dataset, n_train,
  batch size, corruption levels covered)."""
  out: dict[str, dict] = {}
  for path in paths or ():
    s = json.loads(pathlib.Path(path).read_text())
    model = s.get("model")
    reps = [r for r in s.get("replicas", []) if r.get("kind") == "labels"]
    if not model or not reps:
      raise EstimateError(f"--fit_from {path}: no model or no 'labels' replicas: not a "
                          f"summary.json of a zhang train run of the Figure 1b grid")
    e = out.setdefault(model, dict(steps=0, lower_bound=False, source=[], assumed=False,
                                   replicas=0, fitted=0, unfitted=[], corruptions=set(),
                                   notes=[]))
    steps_run = int(s.get("steps_run") or 0)
    for r in reps:
      e["replicas"] += 1
      e["corruptions"].add(float(r.get("corruption", 0.0)))
      if r.get("fit_step") is None:
        e["lower_bound"] = True
        e["unfitted"].append(dict(file=str(path), corruption=r.get("corruption"),
                                  seed=r.get("seed"), steps_run=steps_run))
        e["steps"] = max(e["steps"], steps_run)
      else:
        e["fitted"] += 1
        e["steps"] = max(e["steps"], int(r["fit_step"]))
    e["source"].append(str(path))
    for key, want in (("dataset", "cifar10"), ("n_train", 50_000), ("batch_size", 128)):
      if key in s and s[key] != want:
        e["notes"].append(f"{path}: {key} {s[key]}, not {want}")
    if s.get("status") not in (None, "complete"):
      e["notes"].append(f"{path}: status {s.get('status')}")
  for model, e in out.items():
    e["corruptions"] = sorted(e["corruptions"])
    if e["steps"] <= 0:
      raise EstimateError(f"--fit_from: the {model} runs ran no steps")
    if 1.0 not in e["corruptions"]:
      e["notes"].append("no replica at corruption 1 (random labels, the slowest to fit)")
  return out


def eval_costs_from_summaries(paths, fit_paths=(), kind: str | None = None) -> dict[str, dict]:
  """model -> measured evaluation cost (``timing.eval_cost`` of zhang train's summary.json):
  from ``--eval_cost_from`` files, else from ``--fit_from`` ones that carry it and were run
  on ``kind`` (the throughput rows' device kind). Where a model has several, their mean."""
  found: dict[str, list] = {}
  for path, explicit in [(p, True) for p in paths or ()] + [(p, False) for p in fit_paths or ()]:
    s = json.loads(pathlib.Path(path).read_text())
    cost = (s.get("timing") or {}).get("eval_cost")
    where = s.get("device_kind")
    if not explicit and (cost is None or (kind is not None and where != kind)):
      continue
    if cost is None:
      raise EstimateError(
          f"--eval_cost_from {path}: no timing.eval_cost (a summary.json of zhang train "
          f"from before timing was recorded, or a run with one train chunk or one "
          f"evaluation after the first, compiling ones): rerun with max_steps of at least "
          f"2 x eval_every")
    if not s.get("model"):
      raise EstimateError(f"--eval_cost_from {path}: no model: not a zhang train summary.json")
    if kind is not None and where != kind:
      raise EstimateError(f"--eval_cost_from {path}: measured on {where}, the throughput rows "
                          f"on {kind}: give a summary.json of a run on {kind}, or leave it "
                          f"out (--eval_cost)")
    found.setdefault(s["model"], []).append(
        dict(cost=float(cost), file=str(path), device_kind=where,
             replicas=len(s.get("replicas", [])), explicit=explicit))
  out = {}
  for model, entries in found.items():
    chosen = [e for e in entries if e["explicit"]] or entries
    out[model] = dict(cost=sum(e["cost"] for e in chosen) / len(chosen),
                      files=[e["file"] for e in chosen],
                      device_kinds=sorted({str(e["device_kind"]) for e in chosen}),
                      replicas=sorted({e["replicas"] for e in chosen}))
  return out


# ---------------------------------------------------------------------------- arithmetic

def measure_command(model: str, extra: str = "") -> str:
  plans = " --plan replicas=map --plan replicas=vmap" if model in CONV_NETS else ""
  return (f"python benchmarks/throughput.py --models {model} --replicas 1,8,64"
          f"{plans} --matmul_n 8192{extra} >> throughput_{model}.jsonl")


def _variant(row: dict) -> tuple:
  return (row_plan(row), row.get("compute_dtype") or "float32", int(row["batch_size"]))


def step_time(rows: list[dict], model: str, replicas: int, batch_size: int,
              compute_dtype: str = "float32", stat: str = "median") -> dict:
  """The step time of ``replicas`` replicas of ``model`` at ``batch_size`` from its rows."""
  mine = [r for r in rows if r["model"] == model]
  if not mine:
    raise EstimateError(f"no throughput rows for {model}; measure them on the device with: "
                        f"{measure_command(model)}")
  mine = [r for r in mine if (r.get("compute_dtype") or "float32") == compute_dtype]
  if not mine:
    raise EstimateError(f"no {compute_dtype} throughput rows for {model}; measure them "
                        f"with: {measure_command(model, ' --compute_dtype ' + compute_dtype)}")
  batch_sizes = {int(r["batch_size"]) for r in mine}
  row_batch = batch_size if batch_size in batch_sizes else max(batch_sizes)
  mine = [r for r in mine if int(r["batch_size"]) == row_batch]
  key = "step_ms_median" if stat == "median" else "step_ms"
  candidates = []
  for variant in sorted({_variant(r) for r in mine}):
    vrows = [r for r in mine if _variant(r) == variant]
    at_least = [r for r in vrows if int(r["replicas"]) >= replicas]
    if at_least:
      r_used = min(int(r["replicas"]) for r in at_least)
    else:
      r_used = max(int(r["replicas"]) for r in vrows)
    same = [r for r in vrows if int(r["replicas"]) == r_used]
    row = min(same, key=lambda r: float(r.get(key) or r["step_ms"]))  # repeated: the fastest
    row_ms = float(row.get(key) or row["step_ms"])
    ms = row_ms * replicas / r_used * batch_size / row_batch
    candidates.append(dict(
        plan=variant[0], compute_dtype=variant[1],
        row_replicas=r_used, row_batch_size=row_batch, row_step_ms=row_ms, step_stat=key,
        step_ms=ms, extrapolated=not at_least, batch_scaled=row_batch != batch_size,
        compile_s=float(row.get("compile_s") or 0.0), source=row["source"]))
  best = min(candidates, key=lambda c: (c["extrapolated"], c["step_ms"]))
  return dict(best, variants=[{k: c[k] for k in ("plan", "row_replicas", "step_ms",
                                                 "extrapolated")}
                              for c in candidates])


def scaling_text(st: dict, replicas: int, batch_size: int) -> str:
  """How the step time at ``replicas`` came from its row, in words and numbers."""
  dtype = "" if st["compute_dtype"] == "float32" else f", {st['compute_dtype']}"
  text = (f"{st['row_step_ms']:,.3f} ms ({st['step_stat']}, R = {st['row_replicas']}, "
          f"batch {st['row_batch_size']}, plan {st['plan']}{dtype})")
  if st["row_replicas"] != replicas:
    text += f" x {replicas}/{st['row_replicas']}"
  if st["batch_scaled"]:
    text += f" x {batch_size}/{st['row_batch_size']}"
  return text + f" = {st['step_ms']:,.3f} ms"


def estimate_model(model: str, st: dict, fit: dict, a, eval_cost: dict | None = None) -> dict:
  """One model's seconds. ``eval_cost``: its measured evaluation cost, if any."""
  replicas = a.levels * a.seeds
  cost = a.eval_cost if eval_cost is None else eval_cost["cost"]
  step_s = st["step_ms"] / 1e3
  fit_steps = int(fit["steps"])
  steps = math.ceil(fit_steps / a.eval_every) * a.eval_every
  capped = steps > a.max_steps
  steps = min(steps, a.max_steps)
  evaluations = math.ceil(steps / a.eval_every) + 1  # and one at step 0 (and at max_steps)
  eval_examples = a.n_train + a.n_test
  eval_one_s = eval_examples / a.batch_size * step_s * cost
  train_s = steps * step_s
  eval_s = evaluations * eval_one_s
  compile_s = 2 * st["compile_s"]
  seconds = compile_s + train_s + eval_s
  return dict(
      model=model, replicas=replicas, step=st, step_ms=st["step_ms"],
      step_scaling=scaling_text(st, replicas, a.batch_size),
      fit_steps=fit_steps, fit_source=fit["source"], fit_assumed=fit["assumed"],
      lower_bound=bool(fit["lower_bound"]) or capped, capped_at_max_steps=capped,
      unfitted=fit.get("unfitted", []), fit_notes=fit.get("notes", []),
      eval_cost=cost, eval_cost_measured=eval_cost is not None,
      eval_cost_source=(f"--eval_cost {a.eval_cost:.3g} (assumed)" if eval_cost is None else
                        f"measured: timing.eval_cost of {', '.join(eval_cost['files'])} "
                        f"({', '.join(eval_cost['device_kinds'])}, "
                        f"{'/'.join(map(str, eval_cost['replicas']))} replicas)"),
      steps=steps, evaluations=evaluations, eval_one_s=eval_one_s, train_s=train_s,
      eval_s=eval_s, eval_overhead=eval_s / train_s, compile_s=compile_s, seconds=seconds,
      extrapolated=st["extrapolated"], batch_scaled=st["batch_scaled"])


def estimate(rows: list[dict], fits: dict[str, dict], a,
             eval_costs: dict[str, dict] | None = None) -> dict:
  kind = device_kind(rows)
  eval_costs = eval_costs or {}
  missing = [m for m in a.models if m not in fits]
  if missing:
    raise EstimateError(f"no steps-to-fit for {', '.join(missing)}: give --fit_from "
                        f"summary.json of a run of it, or --fit_steps {missing[0]}=N")
  per_model = []
  for model in a.models:
    st = step_time(rows, model, a.levels * a.seeds, a.batch_size, a.dtypes.get(model, "float32"),
                   a.step_stat)
    per_model.append(estimate_model(model, st, fits[model], a, eval_costs.get(model)))
  total = sum(m["seconds"] for m in per_model)
  lower_bound = any(m["lower_bound"] for m in per_model)
  budget_s = a.budget_hours * 3600
  assumptions = [
      f"Each model's {a.levels * a.seeds} replicas ({a.levels} corruption levels x {a.seeds} "
      f"seeds, 'labels' only) are one program on one device; the models run one after "
      f"another.",
      f"Step time grows in proportion to the replicas compiled: a row at another R is "
      f"scaled by {a.levels * a.seeds}/R (from a larger R this is optimistic where the "
      f"per-replica cost falls with R).",
      "Each model runs under the execution plan of the row used (ZHANG_PLAN=... where it "
      "is not the automatic plan; zhang/runtime/plan.py).",
      f"Evaluation (at step 0 and every {a.eval_every} steps, whole train and test sets: "
      f"{a.n_train + a.n_test:,} images per replica) costs, per image, "
      + "; ".join(f"{m['model']} {m['eval_cost']:.3g} ({m['eval_cost_source']})"
                  for m in per_model)
      + " of a training example. A measured cost comes from the run's own grid and "
      "evaluation set, and is taken to carry over to this one.",
      "Compilation: twice the row's compile_s (train chunk and evaluation program); data "
      "loading and start-up are not counted.",
      f"The run stops at the first evaluation where every replica has fitted "
      f"(train accuracy 1.0), at most max_steps {a.max_steps:,}.",
  ]
  low = [m["model"] for m in per_model if m["step"]["compute_dtype"] != "float32"]
  if low:
    assumptions.append(f"{', '.join(low)} in bfloat16 (--compute_dtype; config field "
                       f"compute_dtype=bfloat16): an opt-in mode whose curves are close to "
                       f"float32's, not the same, so its steps-to-fit may differ too.")
  if any(m["fit_assumed"] for m in per_model):
    assumptions.append("Steps-to-fit given with --fit_steps are assumptions, not "
                       "measurements" + (f": {a.fit_source}" if a.fit_source else "."))
  return dict(
      device_kind=kind, backend=sorted({str(r.get("backend")) for r in rows}),
      grid=dict(models=list(a.models), levels=a.levels, seeds=a.seeds,
                replicas_per_model=a.levels * a.seeds),
      settings=dict(batch_size=a.batch_size, n_train=a.n_train, n_test=a.n_test,
                    eval_every=a.eval_every, eval_cost=a.eval_cost, max_steps=a.max_steps,
                    step_stat=a.step_stat, compute_dtype=a.compute_dtype,
                    steps_per_epoch=a.n_train // a.batch_size),
      throughput_files=sorted({r["source"] for r in rows}),
      models=per_model, total_seconds=total, total_hours=total / 3600,
      # None: a lower bound below the budget says nothing either way.
      budget_hours=a.budget_hours,
      under_budget=None if lower_bound and total < budget_s else total < budget_s,
      lower_bound=lower_bound, extrapolated=any(m["extrapolated"] for m in per_model),
      batch_scaled=any(m["batch_scaled"] for m in per_model), assumptions=assumptions)


# ---------------------------------------------------------------------------- report

def markdown(e: dict) -> str:
  g, s = e["grid"], e["settings"]
  hours = e["total_hours"]
  lines = [
      f"### Figure 1b grid on CIFAR-10: estimated wall time on one {e['device_kind']}",
      "",
      f"{len(g['models'])} models x {g['levels']} corruption levels x {g['seeds']} seeds "
      f"= {g['replicas_per_model']} replicas per model in one program, models one after "
      f"another; batch {s['batch_size']} ({s['steps_per_epoch']} steps per epoch), evaluation "
      f"every {s['eval_every']} steps.",
      "",
      "| model | replicas | step ms (R used) | fit steps | steps run | evaluations | "
      "train s | eval s (overhead) | compile s | seconds |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for m in e["models"]:
    st = m["step"]
    flags = " (extrapolated)" if m["extrapolated"] else ""
    fit = f"{'>= ' if m['lower_bound'] else ''}{m['fit_steps']:,}"
    fit += " (assumed)" if m["fit_assumed"] else " (measured)"
    lines.append(
        f"| {m['model']} | {m['replicas']} | {m['step_ms']:,.2f} (R = {st['row_replicas']})"
        f"{flags} | {fit} | {m['steps']:,} | {m['evaluations']} | {m['train_s']:,.0f} | "
        f"{m['eval_s']:,.0f} ({m['eval_overhead']:.0%}) | {m['compile_s']:,.0f} | "
        f"{m['seconds']:,.0f} |")
  bound = ">= " if e["lower_bound"] else ""
  lines.append(f"| **total** | {g['replicas_per_model'] * len(g['models'])} | | | | | | | | "
               f"**{bound}{e['total_seconds']:,.0f}** |")
  lines.append("")
  verdict = {True: "under", False: "over",
             None: "a lower bound (a replica did not fit), so not shown to be under"}[
                 e["under_budget"]]
  caveats = [c for c, on in (("extrapolated from fewer replicas than 33", e["extrapolated"]),
                             ("scaled from another batch size", e["batch_scaled"])) if on]
  lines.append(f"**Total: {bound}{e['total_seconds']:,.0f} s = {bound}{hours:.2f} h: "
               f"{verdict} {e['budget_hours']:g} hour{'s' if e['budget_hours'] != 1 else ''}"
               f"**{' (' + '; '.join(caveats) + ')' if caveats else ''}.")
  lines += ["", "Arithmetic (seconds = compile + steps x step + evaluations x (images / batch) "
            "x step x eval cost):", ""]
  images = s["n_train"] + s["n_test"]
  for m in e["models"]:
    st = m["step"]
    lines.append(f"- {m['model']}: step {m['step_scaling']}"
                 f"{' (extrapolated)' if m['extrapolated'] else ''}; "
                 f"fit {m['fit_steps']:,} steps ({_source(m)}) -> {m['steps']:,}"
                 f"{' (capped at max_steps)' if m['capped_at_max_steps'] else ''}; "
                 f"train {m['steps']:,} x {m['step_ms']:,.3f} ms = {m['train_s']:,.1f} s; "
                 f"evaluation {m['evaluations']} x ({images:,} / {s['batch_size']} x "
                 f"{m['step_ms']:,.3f} ms x {m['eval_cost']:.3g}"
                 f"{'' if m['eval_cost_measured'] else ' assumed'}) = {m['eval_s']:,.1f} s; "
                 f"compile 2 x {st['compile_s']:,.1f} s; total {m['seconds']:,.1f} s.")
    others = [v for v in st["variants"] if v["plan"] != st["plan"]]
    if others:
      lines.append("  Other plans at R = 33: " + ", ".join(
          f"{v['plan']} {v['step_ms']:,.2f} ms"
          f"{' (extrapolated)' if v['extrapolated'] else ''}" for v in others) + ".")
    for u in m["unfitted"]:
      lines.append(f"  Not fitted: corruption {u['corruption']}, seed {u['seed']} after "
                   f"{u['steps_run']:,} steps ({u['file']}): a lower bound.")
    for note in m["fit_notes"]:
      lines.append(f"  Note: {note}.")
  lines += ["", "Assumptions:", ""] + [f"- {a}" for a in e["assumptions"]]
  lines += ["", "Throughput rows: " + ", ".join(e["throughput_files"]) + "."]
  return "\n".join(lines) + "\n"


def _source(m: dict) -> str:
  if m["fit_assumed"]:
    return "assumed, --fit_steps"
  src = m["fit_source"]
  return "last replica to fit in " + (", ".join(src) if isinstance(src, list) else src)


# ---------------------------------------------------------------------------- command line

def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 2)[2])
  p.add_argument("throughput", nargs="+", help="benchmarks/throughput.py output (JSON lines) "
                 "or benchmarks/device_check.py's device_check.json")
  p.add_argument("--fit_from", nargs="+", default=[], metavar="SUMMARY",
                 help="summary.json files of zhang train runs: steps until the last replica "
                 "of each model fitted")
  p.add_argument("--fit_steps", action="append", default=[], metavar="MODEL=N[,MODEL=N]",
                 help="assumed steps-to-fit of a model's slowest replica (repeatable; wins "
                 "over --fit_from for that model)")
  p.add_argument("--fit_source", default="", help="where the --fit_steps values come from "
                 "(printed with the assumptions)")
  p.add_argument("--models", default=",".join(MODELS), help="comma-separated")
  p.add_argument("--levels", type=int, default=11, help="corruption levels 0, ..., 1")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--n_train", type=int, default=50_000, help="CIFAR-10 training images")
  p.add_argument("--n_test", type=int, default=10_000, help="CIFAR-10 test images")
  p.add_argument("--eval_every", type=int, default=1000, help="configs/fig1.py's default")
  p.add_argument("--eval_cost", type=float, default=1 / 3,
                 help="assumed cost of evaluating an image, as a fraction of a training "
                 "example, for models with no measured one")
  p.add_argument("--eval_cost_from", action="append", default=[], metavar="SUMMARY",
                 help="summary.json of a zhang train run (repeatable): its model's measured "
                 "evaluation cost (timing.eval_cost), on the rows' device kind")
  p.add_argument("--max_steps", type=int, default=60_000, help="configs/fig1.py's default")
  p.add_argument("--step_stat", choices=("median", "best"), default="median",
                 help="the rows' step_ms_median or step_ms (the fastest chunk)")
  p.add_argument("--compute_dtype", default="float32", metavar="DTYPE|MODEL=DTYPE[,...]",
                 help="the rows' compute_dtype to use: float32 (default) or bfloat16 for "
                 "every model, or per model (e.g. inception_small=bfloat16; the others "
                 "float32). bfloat16 is an opt-in mode with its own numerics "
                 "(config field compute_dtype)")
  p.add_argument("--budget_hours", type=float, default=1.0)
  p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
  a = p.parse_args(argv)
  a.models = [m for m in a.models.split(",") if m]
  for name in ("levels", "seeds", "batch_size", "n_train", "eval_every", "max_steps"):
    if getattr(a, name) <= 0:
      p.error(f"--{name} must be positive")
  if not a.eval_cost > 0:
    p.error("--eval_cost must be positive")
  a.dtypes = {}
  for item in filter(None, (t.strip() for t in a.compute_dtype.split(","))):
    model, sep, dtype = item.rpartition("=")
    if dtype not in DTYPES or (sep and model not in a.models):
      p.error(f"--compute_dtype {item!r}: use float32, bfloat16 or MODEL=DTYPE with MODEL "
              f"one of {', '.join(a.models)}")
    a.dtypes.update({model: dtype} if sep else {m: dtype for m in a.models})
  return a


def compute(a: argparse.Namespace) -> dict:
  """The estimate of parsed arguments (``parse``); raises EstimateError on bad inputs."""
  rows = load_rows(a.throughput)
  if not rows:
    raise EstimateError(f"no throughput rows in {', '.join(a.throughput)}")
  fits = fit_steps_from_summaries(a.fit_from)
  explicit = parse_fit_steps(a.fit_steps)
  for model in set(fits) & set(explicit):
    print(f"estimate_fig1b.py: {model}: --fit_steps {explicit[model]['steps']} replaces "
          f"{fits[model]['steps']} from --fit_from", file=sys.stderr)
  fits.update(explicit)
  eval_costs = eval_costs_from_summaries(a.eval_cost_from, a.fit_from, device_kind(rows))
  return estimate(rows, fits, a, eval_costs)


def main(argv=None) -> int:
  a = parse(argv)
  try:
    result = compute(a)
  except (EstimateError, OSError, json.JSONDecodeError) as err:
    print(f"estimate_fig1b.py: {err}", file=sys.stderr)
    return 2
  text = markdown(result)
  print(text, end="")
  if a.json:
    pathlib.Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
