"""How long a run takes from a preemption notice (SIGTERM) to its saved checkpoint and exit.

A Spot or preemptible VM gets about 30 s between the notice and the hard stop. This starts
``zhang train`` on a config, waits until it has trained for ``--after`` seconds past its
first evaluation at or past ``--after_step``, sends SIGTERM, and times the rest: the train
call in flight, the save, the exit. It checks that the run says ``preempted`` at a saved
step. With ``--resume`` it then runs the same command again, as a user would, and reports
the step it resumed from and the run's metrics.jsonl rows (every replica's row at every
evaluation once, when nothing was lost or repeated).

  python benchmarks/preemption.py --config 'configs/fig1.py:dataset=synthetic_cifar10,quick'
  python benchmarks/preemption.py --config configs/digits.py --repeats 3
  python benchmarks/preemption.py --config configs/digits.py --resume -- --config.max_steps=600

Prints one JSON line per try: the step of the last evaluation written before the notice
(``evaluated_step_at_notice``), the step saved (``step``), the seconds from notice to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def one_try(config: str, after: float, extra: list[str], resume: bool = False,
            after_step: int = 0) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / "run"
    command = [sys.executable, "-m", "zhang", "train", "--config", config, "--workdir",
               str(workdir), "--no_progress", *extra]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    summary_file = workdir / "summary.json"
    while not (summary_file.exists() and (workdir / "metrics.jsonl").exists()
               and json.loads(summary_file.read_text())["steps_run"] >= after_step):
      if proc.poll() is not None:
        raise SystemExit(f"the run ended before its evaluation at step {after_step}: "
                         f"{proc.stderr.read()[-2000:]}")
      time.sleep(0.05)
    time.sleep(after)
    # The last evaluation the run wrote (summary.json is replaced whole, never half-written).
    evaluated = json.loads(summary_file.read_text())["steps_run"]
    if proc.poll() is not None:
      raise SystemExit("the run ended before the notice: give a longer config or --after")
    notice = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=600)[1]
    seconds = time.perf_counter() - notice
    summary = json.loads(summary_file.read_text())
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                   if p.name.isdigit())
    ok = (proc.returncode == 0 and summary["status"] == "preempted"
          and saved and saved[-1] == summary["steps_run"])
    if not ok:
      raise SystemExit(f"not a clean preemption (exit {proc.returncode}): {err[-2000:]}")
    row = dict(config=config, evaluated_step_at_notice=evaluated, step=summary["steps_run"],
               notice_to_exit_s=round(seconds, 2),
               train_ms_per_step=summary["timing"]["train_ms_per_step"])
    return dict(row, **_resume(command, workdir)) if resume else row


def _resume(command: list[str], workdir: pathlib.Path) -> dict:
  """Runs the same command again: the step it says it resumed from, how it ended, and the
  rows of metrics.jsonl (all of them, and the distinct (step, replica) among them)."""
  done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True, timeout=1800)
  if done.returncode != 0:
    raise SystemExit(f"the resumed run failed (exit {done.returncode}): {done.stderr[-2000:]}")
  found = re.search(r"resuming .* from the checkpoint of step (\d+)", done.stderr)
  summary = json.loads((workdir / "summary.json").read_text())
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
          if line.strip()]
  return dict(resumed_from=int(found.group(1)) if found else None,
              resumed_status=summary["status"], resumed_steps_run=summary["steps_run"],
              metrics_rows=len(rows),
              metrics_keys=len({(r["step"], r["replica"]) for r in rows}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/fig1.py:dataset=synthetic_cifar10,quick")
  parser.add_argument("--after", type=float, default=10.0,
                      help="seconds of training after the first evaluation before the notice")
  parser.add_argument("--after_step", type=int, default=0,
                      help="count --after from the first evaluation at or past this step (the "
                      "train step's compilation is then behind)")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--resume", action="store_true",
                      help="then run the same command again and report what it resumed from")
  parser.add_argument("extra", nargs="*", help="more zhang train flags (after --)")
  args = parser.parse_args()
  if args.after < 0 or args.repeats < 1:
    parser.error("--after must be >= 0 and --repeats >= 1")
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  for _ in range(args.repeats):
    print(json.dumps(one_try(args.config, args.after, args.extra, args.resume,
                                      args.after_step)), flush=True)


if __name__ == "__main__":
  main()
