"""`zhang train`: train a config's grid of replicas, then print its table."""

from __future__ import annotations

import argparse
import sys

from zhang.formatting import pct


def register(sub) -> argparse.ArgumentParser:
  """Adds `train` to an argparse sub-parser collection."""
  from zhang.experiment import config as config_lib
  p = sub.add_parser(
      "train", help="train a config's grid of replicas",
      description="Trains every replica of a config's grid (randomization kinds x corruption "
      "levels x seeds\nx hyper-parameters) in one jit-compiled program until each has fitted "
      "its training set\nor max_steps, writing config.json, metrics.jsonl, summary.json, "
      "fit_times.npz and\ncheckpoints/ to --workdir; the same command on the same workdir "
      "resumes. Ends with a\ntable of every replica's fit step and accuracies.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="fields that take a name:\n" + "\n".join(
          f"  {field}: {', '.join(values)}" for field, values in config_lib.choices().items())
      + "\ngrid entries: " + ", ".join(config_lib.AXES) + " (lists)")
  p.add_argument("--config", required=True,
                 help="configs/NAME.py[:ARGS], e.g. configs/fig1.py:model=mlp_1x512")
  p.add_argument("--workdir", required=True, help="where config.json, metrics.jsonl and "
                 "summary.json are written")
  p.add_argument("--config.FIELD", dest="set", action="append", metavar="VALUE",
                 help="override a config field, typed by the field (repeatable), e.g. "
                 "--config.max_steps=2000 --config.learning_rate=0.03")
  p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                 help="the same as --config.FIELD=VALUE")
  p.add_argument("--max_steps", type=int, help="shorthand for --set max_steps=N")
  p.add_argument("--data_dir", help="dataset folder (IDX files or a tfds data_dir, gs:// ok)")
  p.add_argument("--restart", action="store_true",
                 help="delete the workdir's previous run files and checkpoints and start "
                 "over (by default a workdir of the same config resumes)")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  g = p.add_argument_group("multi-host (one process per host, the same command on each)")
  g.add_argument("--distributed", action="store_true",
                 help="jax.distributed.initialize() with auto-detection (Cloud TPU VMs)")
  g.add_argument("--coordinator_address", help="HOST:PORT of process 0 (CPU/GPU clusters; "
                 "or $ZHANG_COORDINATOR_ADDRESS)")
  g.add_argument("--num_processes", type=int, help="number of processes "
                 "(or $ZHANG_NUM_PROCESSES)")
  g.add_argument("--process_id", type=int, help="this process's rank (or $ZHANG_PROCESS_ID)")
  p.set_defaults(func=run_train_command)

  return p


def run_train_command(args) -> int:
  from zhang.experiment import config as config_lib
  from zhang.experiment import train
  from zhang.runtime import mesh as mesh_lib
  config = config_lib.load(args.config, args.set or [])
  if args.max_steps is not None:
    config_lib.apply_override(config, f"max_steps={args.max_steps}")
  if args.data_dir is not None:
    config_lib.apply_override(config, f"data_dir={args.data_dir!r}")
  config_lib.resolve(config)  # validates: every local check before any peer waits for us
  if mesh_lib.joins_peers(args.num_processes, auto=args.distributed):
    train.check_before_peers(config, args.workdir, restart=args.restart)
  mesh_lib.initialize_distributed(args.coordinator_address, args.num_processes,
                                  args.process_id, auto=args.distributed)
  try:
    summary = train.run(config, args.workdir, restart=args.restart,
                        progress=not args.no_progress)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
    print("zhang train: stopped (Ctrl-C); the same command resumes from the last saved "
          "checkpoint", file=sys.stderr)
    return 130
  workdir = args.workdir.rstrip("/")  # a string: pathlib would turn gs:// into gs:/
  import jax
  if (summary["status"] == "preempted" or summary.get("already_complete")
      or jax.process_index() != 0):
    return 0
  if summary.get("study"):
    for model in summary["models"]:
      run = summary["runs"][model]
      print(f"\n{model} ({workdir}/{model}/):")
      print_run(dict(run, replicas=[r for r in summary["replicas"] if r["model"] == model]),
                config_lib.resolve(config_lib.for_model(config, model)))
    print(f"\nResults in {workdir}/: one run per model (MODEL/config.json, metrics.jsonl, "
          f"summary.json), and summary.json with every model's replicas "
          f"({len(summary['replicas'])}, {summary['wall_seconds']:.0f} s in all). `zhang report "
          f"{workdir} --out {workdir}_report` reads the study.")
    return 0
  print_run(summary, config_lib.resolve(config))
  print(f"Results in {workdir}/: config.json, metrics.jsonl (learning curves), "
        f"summary.json (fit steps, final accuracies), fit_times.npz (when each training "
        f"example was fitted).")
  return 0


def print_run(summary: dict, config) -> None:
  """A run's replicas as a table, where its time went, and a note on a decayed rate."""
  reps = summary["replicas"]
  fitted = sum(r["fit_step"] is not None for r in reps)
  past_fit = not config.get("stop_at_fit", True)  # grokking runs: the generalize step too
  generalized = (f"; {sum(r.get('generalize_step') is not None for r in reps)}/{len(reps)} "
                 f"generalized (test accuracy >= {config.generalize_threshold:g})"
                 if past_fit else "")
  print(f"{fitted}/{len(reps)} replicas fitted their training set in {summary['steps_run']} "
        f"steps ({summary['wall_seconds']:.0f} s){generalized}.")
  # Hyper-parameter columns only for the axes that vary in this grid.
  extra = [(key, head, width) for key, head, width in HYPER_COLUMNS
           if len({r.get(key) for r in reps}) > 1 and all(key in r for r in reps)]
  print(f"{'replica':>7} {'kind':<16} {'p':>4} {'seed':>4} "
        + "".join(f"{head:>{width}} " for _, head, width in extra)
        + f"{'noise':>6} {'fit_step':>8} " + (f"{'gen_step':>8} " if past_fit else "")
        + f"{'train':>7} {'test':>6} {'conf':>5}")
  for r in reps:
    fit = "-" if r["fit_step"] is None else str(r["fit_step"])
    # Four decimals: 0.99975 (one example in 4000 wrong) must not print as 1.000.
    print(f"{r['replica']:>7} {r['kind']:<16} {r['corruption']:>4.2f} {r['seed']:>4} "
          + "".join(f"{r[key]:>{width}{'g' if key != 'augmentation' else ''}} "
                    for key, _, width in extra)
          + f"{r['label_noise']:>6.3f} {fit:>8} "
          + (f"{'-' if r.get('generalize_step') is None else r['generalize_step']:>8} "
             if past_fit else "")
          + f"{_number(r['final_train_acc'], 7, '.4f')} "
          f"{_number(r['final_test_acc'], 6, '.3f')} {_number(r['test_confidence'], 5, '.2f')}")
  print("noise: the fraction of training labels the corruption changed; train, test: final "
        "accuracies; conf: mean max-softmax probability on the test set.")
  for line in (divergence_line(reps), timing_line(summary), decay_note(summary, config)):
    if line:
      print(line)


def _number(x, width: int, spec: str) -> str:
  """A table cell; summary.json writes NaN (a diverged replica's) as null."""
  return f"{'nan':>{width}}" if x is None else f"{x:>{width}{spec}}"


def divergence_line(reps: list[dict]) -> str | None:
  """Which replicas diverged (a train loss that is not finite) and from which evaluation:
  summary.json's ``diverged_step``."""
  diverged = [r for r in reps if r.get("diverged_step") is not None]
  if not diverged:
    return None
  shown = ", ".join(f"{r['replica']} (step {r['diverged_step']})" for r in diverged[:10])
  return (f"{len(diverged)} replica{'s' if len(diverged) > 1 else ''} diverged (train loss "
          f"not finite from the evaluation at the step shown): {shown}"
          f"{', ...' if len(diverged) > 10 else ''}; a lower learning_rate avoids it.")


HYPER_COLUMNS = (("learning_rate", "lr", 7), ("weight_decay", "wd", 7),
                 ("augmentation", "augment", 10), ("output_scale", "alpha", 6),
                 ("dropout", "drop", 5))


def timing_line(summary: dict) -> str | None:
  """Where the run's time went (summary.json's ``timing``), once both a train chunk and an
  evaluation have been timed after their first, compiling, calls."""
  t = summary.get("timing") or {}
  if t.get("train_ms_per_step") is None or t.get("eval_seconds_each") is None:
    return None
  return (f"Time: training {t['train_ms_per_step']:.3g} ms per step, evaluation "
          f"{t['eval_seconds_each']:.3g} s each ({t['eval_images']:,} images per replica; "
          f"{pct(t['eval_share'], 0)}% of the timed time, eval_every sets how often), "
          f"compilation and first calls {t['first_call_seconds']:.0f} s.")


def decay_note(summary: dict, config) -> str | None:
  """A line for a run that ended at max_steps with replicas short of ``fit_threshold`` after
  the learning rate had decayed below 1% of its start, when running longer would change little
  (on all of Fashion-MNIST no label replica of MLP 1x512 fits; benchmarks/RESULTS.md)."""
  short = sum(r["fit_step"] is None for r in summary["replicas"])
  steps = summary["steps_run"]
  if not short or steps < config.max_steps:
    return None
  from zhang.experiment import step as step_lib
  factor = float(step_lib.schedule(config.lr_decay, config.lr_decay_every)(steps - 1))
  if factor >= 0.01:
    return None
  return (f"{short} replica{'s' if short > 1 else ''} did not reach train accuracy "
          f"{config.fit_threshold:g} in max_steps={config.max_steps}. The learning rate had "
          f"decayed to {100 * factor:.2g}% of its start (x{config.lr_decay:g} every "
          f"{config.lr_decay_every} steps), so more steps would change little; fewer training "
          f"images (n_train) or a slower decay (lr_decay, lr_decay_every) would.")
