"""Every complexity measure of every replica of a run, in one compiled program.

``measure_run(run, ...)`` rebuilds nothing itself: it takes a run as ``zhang.probes.run``
rebuilds it, picks each replica's parameters at the step asked for (``resolve_step``), the
first ``examples`` training examples as that replica trained on them (its corrupted labels,
its randomized inputs, the evaluation's view: no augmentation), and maps one replica's
measures (``_one_replica``) over the grid with the trainer's ``step.over_grid`` (the
execution plan's vmap or loop, the run's mesh). One jit-compiled function computes every
group asked for; the groups themselves (what each measure is, its settings, its tests) are
``norms``, ``spectral``, ``margins``, ``flatness`` and ``curvature`` in this folder. The
``run`` group reads the run's own files (``run_files``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from zhang.errors import UsageError
from zhang.experiment import randomize
from zhang.experiment import step as step_lib
from zhang.probes import run as run_lib
from zhang.probes.measures import context, curvature, flatness, margins, net, norms, spectral
from zhang.runtime import mesh as mesh_lib

# Norm measures that margins divide (``margins.over_margin``).
OVER_MARGIN = ("frobenius_sum", "frobenius_product", "spectral_product", "spectral_sum",
               "spectral_complexity", "path_norm")
GROUPS = {
    "norms": ("params", "frobenius_sum", "frobenius_product", "init_distance",
              "init_distance_relative", "path_norm"),
    "spectral": ("spectral_product", "spectral_sum", "spectral_complexity"),
    "margin": ("inverse_margin", *(f"{m}_over_margin" for m in OVER_MARGIN)),
    "flatness": ("pacbayes_flatness", "pacbayes_mag_flatness", "sharpness"),
    "curvature": ("hessian_top", "hessian_trace"),
    "run": ("fit_step", "loss_sum_to_fit", "llc"),
}
NAMES = tuple(name for names in GROUPS.values() for name in names)
GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the measures are computed (``measures.json``'s ``settings`` records them)."""
  examples: int = 5000  # the first this many training examples of each replica (all if fewer)
  spectral_iters: int = spectral.ITERS  # power iterations per layer
  flatness: flatness.Settings = flatness.Settings()  # also the curvature group's iterations
  seed: int = 0  # replica r's draws come from (seed, r) alone

  def check(self) -> None:
    for name in ("examples", "spectral_iters"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"`{name}` {value!r} must be a positive integer")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
      raise UsageError(f"`seed` {self.seed!r} must be an integer >= 0")
    self.flatness.check()


def parse_measures(spec: str | None) -> tuple[str, ...]:
  """The measure names of ``--measures`` (comma-separated names or group names; None or
  "all": every measure), in the order of ``NAMES``; UsageError naming the known ones."""
  if spec is None or spec.strip() in ("", "all"):
    return NAMES
  wanted = set()
  for token in (t.strip() for t in spec.split(",")):
    if token in GROUPS:
      wanted.update(GROUPS[token])
    elif token in GROUP_OF:
      wanted.add(token)
    elif token:
      raise UsageError(
          f"unknown measure {token!r} in `measures`: name groups ({', '.join(GROUPS)}) or "
          f"measures ({', '.join(NAMES)}), comma-separated")
  if not wanted:
    raise UsageError("`measures` names no measure: e.g. spectral,flatness (or all)")
  return tuple(name for name in NAMES if name in wanted)


def groups_for(names) -> tuple[str, ...]:
  """The groups to compute for ``names`` (a norm over the margin needs its norm's group)."""
  groups = {GROUP_OF[n] for n in names}
  for n in names:
    if n.endswith("_over_margin"):
      groups.add(GROUP_OF[n[:-len("_over_margin")]])
  return tuple(g for g in GROUPS if g in groups)


# ------------------------------------------------------------------- which parameters

def fit_steps(run: run_lib.Run) -> list[int | None]:
  """Each replica's fit step (summary.json's), None where it has not fitted."""
  by_replica = {r.get("replica"): r.get("fit_step") for r in run.summary.get("replicas", [])}
  return [by_replica.get(r.index) for r in run.replicas]


def resolve_step(run: run_lib.Run, spec) -> tuple[list[int], list[int], str]:
  """(the step whose parameters each replica is measured at, the checkpoint each is read
  from, the spec in words) for ``--step``: "fit", "final", a saved step, or None (fit for a
  run trained with ``freeze_at_fit``, else final). UsageError before anything compiles."""
  if spec is None:
    spec = "fit" if run.config.get("freeze_at_fit", False) else "final"
  r = len(run.replicas)
  if spec == "final":
    return [run.steps[-1]] * r, [run.steps[-1]] * r, "final"
  if spec != "fit":
    try:
      step = int(spec)
    except ValueError:
      raise UsageError(f"`step` {spec!r} must be fit, final or a saved step: "
                       f"{', '.join(map(str, run.steps))} (or 0, the initialization)") from None
    if step != 0 and step not in run.steps:
      raise UsageError(f"no checkpoint of `step` {step} in {run.path}: saved steps are "
                       f"{', '.join(map(str, run.steps))} (and 0, the initialization)")
    return [step] * r, [step] * r, str(step)
  fits = fit_steps(run)
  unfit = [rep for rep, f in zip(run.replicas, fits) if f is None]
  if unfit:
    names = ", ".join(f"{x.index} ({x.kind} {x.corruption:g}, seed {x.seed})"
                      for x in unfit[:6]) + (f" and {len(unfit) - 6} more" if len(unfit) > 6
                                             else "")
    raise UsageError(f"`step` fit: replica(s) {names} of {run.path} never fitted their "
                     f"training set: measure them at `step` final, or train longer")
  if run.config.get("freeze_at_fit", False):
    last = run.steps[-1]  # each replica stopped changing at its fit step
    if max(fits) > last:
      raise UsageError(f"{run.path}'s last checkpoint (step {last}) predates its last fit "
                       f"(step {max(fits)}): resume the run to save one")
    return list(fits), [last] * r, "fit"
  missing = sorted({f for f in fits if f not in run.steps})
  if missing:
    raise UsageError(
        f"`step` fit: {run.path} has no checkpoint of fit step(s) "
        f"{', '.join(map(str, missing[:8]))} (saved: {', '.join(map(str, run.steps))}): "
        f"train with freeze_at_fit=True to keep every replica as it fitted, or pass `step` "
        f"final")
  return list(fits), list(fits), "fit"


# ------------------------------------------------------------------- the program

def examples(run: run_lib.Run, m: int, chunk: int):
  """Every replica's first ``m`` training examples as it evaluates them, padded to a
  multiple of ``chunk``: x (R, M, ...), y (R, M) int32, valid (M,) float32."""
  total = -(-m // chunk) * chunk
  idx = np.minimum(np.arange(total), m - 1)
  valid = (np.arange(total) < m).astype(np.float32)
  s, reps, d = run.settings, run.reps, run.data

  @functools.partial(jax.jit, out_shardings=mesh_lib.replica_sharding(run.mesh))
  def inputs(reps, d, idx):
    u8 = d.train_images[idx]
    (h, w), (big_h, big_w) = d.test_images.shape[1:3], u8.shape[1:3]
    if (big_h, big_w) != (h, w):  # kept uncropped for a crop augmentation: the centre
      top, left = (big_h - h) // 2, (big_w - w) // 2
      u8 = u8[:, top:top + h, left:left + w]
    return step_lib.grid_inputs(s, reps, d, u8, idx, randomize.TRAIN), reps.labels[:, idx]

  x, y = inputs(reps, d, jnp.asarray(idx))
  return x, y, jnp.asarray(valid)


def model_of(run: run_lib.Run, chunk: int) -> context.Model:
  """The measures' ``context.Model`` of a run: eval-mode logits in the run's compute dtype
  under its execution plan (the plan's explicit CPU gradients make a convolution's gradient,
  the sharpness search's step, 5x faster), how its Hessian-vector products go under those
  gradients (a conv net's reverse over reverse through them, 5.5x faster than forward over
  reverse through JAX's rules on alexnet_small; an MLP's forward over reverse through JAX's
  rules, 1.4x faster than reverse over reverse on digits), and the linear layers (found on
  the model's parameter shapes)."""
  def logits_under(plan):
    apply = functools.partial(step_lib.apply_model, run.module, plan, run.settings,
                              run.has_batch_norm)
    return lambda p, bs, x: apply(step_lib.TrainState(p, bs, ()), x, train=False)[0]

  init = jax.eval_shape(lambda: run.module.init(
      jax.random.key(0), jnp.zeros((1, *run.input_shape), jnp.float32), train=False))
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), init)
  layers = net.layers(run.module, zeros["params"], zeros.get("batch_stats", {}),
                      jnp.zeros((1, *run.input_shape), jnp.float32))
  explicit = run.plan.gradients == "explicit"
  convs = any(layer.kind == "conv" for layer in layers)
  hvp_logits = None
  if explicit and not convs:
    hvp_logits = logits_under(dataclasses.replace(run.plan, gradients="jax"))
  return context.Model(logits_under(run.plan), run.module, layers, chunk,
                       hvp_logits=hvp_logits, reverse_hvp=explicit and convs)


def _one_replica(model: context.Model, groups, s: Settings, params, init_params, batch_stats,
                 x, y, key_data, valid):
  """One replica's measures (a dict of scalars), its searches' raw results and its
  per-layer details: the groups of ``groups``, each from its own key."""
  keys = jax.random.split(jax.random.wrap_key_data(key_data), len(GROUPS))
  key = dict(zip(GROUPS, keys))
  rep = context.Replica(params, init_params, batch_stats, x, y, valid, key["norms"])
  out, search, layers = {}, {}, {}
  spectral_norms = None
  if "spectral" in groups:
    spectral_norms = spectral.norms(model, params, key["spectral"], s.spectral_iters)
    out.update(spectral.measures(model, rep, s.spectral_iters, spectral=spectral_norms))
  if "norms" in groups:
    out.update(norms.measures(model, rep))
    layers.update(norms.layer_details(model, rep, s.spectral_iters,
                                      False if spectral_norms is None else spectral_norms))
  if "margin" in groups:
    gamma = margins.margin(model, rep)
    search["margin"] = gamma
    out.update(margins.measures(model, rep, gamma))
    out.update(margins.over_margin(out, gamma))
  if "flatness" in groups:
    found, raw = flatness.measures(model, rep._replace(key=key["flatness"]), s.flatness)
    out.update(found)
    search.update(raw)
  if "curvature" in groups:
    out.update(curvature.measures(model, rep._replace(key=key["curvature"]), s.flatness))
  return out, search, layers


def program(run: run_lib.Run, groups, s: Settings, chunk: int) -> Callable:
  """The jit-compiled measures of every replica: (params, init params, batch stats, x, y,
  keys, valid) -> (measures, searches, layer details), each a dict of (R, ...) arrays."""
  model = model_of(run, chunk)
  one = functools.partial(_one_replica, model, groups, s)
  grid = step_lib.over_grid(run.plan, run.mesh, one, replicated=(1,))  # valid: shared
  return jax.jit(grid, out_shardings=mesh_lib.replicated(run.mesh))


def finish(values: dict, gamma=None) -> dict:
  """The program's per-replica values on the host (float64): each product measure from its
  logarithm (``context.LOG`` keys), which float32 holds where the product itself overflows,
  and its ``_over_margin`` from it and ``gamma`` (the margin); the log keys removed."""
  values = {k: np.asarray(v, np.float64) for k, v in values.items()}
  for key in [k for k in values if k.startswith(context.LOG)]:
    name = key[len(context.LOG):]
    log = values.pop(key)
    values[name] = np.exp(log)
    over = f"{name}_over_margin"
    if over in values and gamma is not None:
      g = np.asarray(gamma, np.float64)
      safe = np.where(g > 0, g, 1.0)
      values[over] = np.where(g > 0, np.exp(log - 2 * np.log(safe)), np.nan)
  return values


def replica_keys(run: run_lib.Run, seed: int):
  """(padded replicas,) key data: replica r's from (seed, r), whatever the padding."""
  rows = np.minimum(np.arange(run.padded), len(run.replicas) - 1)
  base = jax.random.key(seed)
  return jax.random.key_data(jax.vmap(lambda r: jax.random.fold_in(base, r))(
      jnp.asarray(rows)))
