"""How long a run takes from a preemption notice (SIGTERM) to its saved checkpoint and exit.

A Spot or preemptible VM gets about 30 s between the notice and the hard stop. This starts
``zhang train`` on a config, waits until it has trained for ``--after`` seconds past its
first evaluation, sends SIGTERM, and times the rest: the train call in flight, the save, the
exit. It checks that the run says ``preempted`` at a saved step.

  python benchmarks/preemption.py --config 'configs/fig1.py:dataset=synthetic_cifar10,quick'
  python benchmarks/preemption.py --config configs/digits.py --repeats 3

Prints one JSON line per try: the step reached, the seconds from notice to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def one_try(config: str, after: float, extra: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / "run"
    proc = subprocess.Popen([sys.executable, "-m", "zhang", "train", "--config", config,
                             "--workdir", str(workdir), "--no_progress", *extra], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and metrics.stat().st_size > 0):
      if proc.poll() is not None:
        raise SystemExit(f"the run ended before its first evaluation: {proc.stderr.read()}")
      time.sleep(0.05)
    time.sleep(after)
    if proc.poll() is not None:
      raise SystemExit("the run ended before the notice: give a longer config or --after")
    notice = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=600)[1]
    seconds = time.perf_counter() - notice
    summary = json.loads((workdir / "summary.json").read_text())
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                   if p.name.isdigit())
    ok = (proc.returncode == 0 and summary["status"] == "preempted"
          and saved and saved[-1] == summary["steps_run"])
    if not ok:
      raise SystemExit(f"not a clean preemption (exit {proc.returncode}): {err[-2000:]}")
    return dict(config=config, step=summary["steps_run"], notice_to_exit_s=round(seconds, 2),
                train_ms_per_step=summary["timing"]["train_ms_per_step"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/fig1.py:dataset=synthetic_cifar10,quick")
  parser.add_argument("--after", type=float, default=10.0,
                      help="seconds of training after the first evaluation before the notice")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("extra", nargs="*", help="more zhang train flags (after --)")
  args = parser.parse_args()
  if args.after < 0 or args.repeats < 1:
    parser.error("--after must be >= 0 and --repeats >= 1")
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  for _ in range(args.repeats):
    print(json.dumps(one_try(args.config, args.after, args.extra)), flush=True)


if __name__ == "__main__":
  main()
