"""report.md's sections of the probes' files in the report folder (`zhang kernel`, `zhang
llc`, `zhang ntk`, `zhang measures`, `zhang bound`), each embedded only when the file was
computed from the runs reported (``provenance.py``); otherwise one line says where it is from.
"""

from __future__ import annotations

import sys

import pandas as pd
from etils import epath

from zhang.analysis import bound as bound_report
from zhang.analysis import kernel_baseline, lazy_rich, provenance
from zhang.analysis import llc as llc_report
from zhang.analysis import measures as measures_report
from zhang.analysis import ntk as ntk_report
from zhang.analysis.load import Runs


def log(msg: str) -> None:
  print(f"[zhang report] {msg}", file=sys.stderr, flush=True)


def _skipped(title: str, path: epath.Path, settings: dict, command: str) -> list[str]:
  """The section of a probe file computed from another run: where it is from, and that it
  was skipped."""
  log(provenance.skipped_line(path, settings))
  return [title, "", f"{path} was computed from {provenance.describe(settings)}, not from "
          f"the runs reported here, so it is not shown. `{command}` writes this section for "
          f"a run reported here.", ""]


def kernel_baseline_section(runs: Runs, out: epath.Path, grok: pd.DataFrame) -> list[str]:
  """The section of what `zhang kernel RUN --out OUT` wrote, for runs on token datasets."""
  entries = kernel_baseline.load(out)
  others = kernel_baseline.select(entries, runs)[1]
  if others:
    log(provenance.skipped_line(out / kernel_baseline.FILE, others[0].get("settings", {}))
         + (f" ({len(others)} entries)" if len(others) > 1 else ""))
  return kernel_baseline.report_lines(entries, runs, out, grok)


def sections(runs: Runs, out: epath.Path) -> tuple[list[epath.Path], list[str]]:
  """The figures and sections of what `zhang llc RUN`, `zhang ntk RUN`, `zhang measures
  RUN` (with measures.md) and `zhang bound RUN` wrote into ``out``, each only where computed
  from one of ``runs``."""
  written, lines = [], []
  if (out / "llc.json").exists():
    llc = llc_report.load(out / "llc.json")
    if provenance.source(llc["settings"], runs) is None:
      lines += _skipped("## Local learning coefficient", out / "llc.json", llc["settings"],
                        f"zhang llc RUN --out {out}")
    else:
      written += [epath.Path(p) for p in llc_report.plot(llc, out)]
      traces = llc_report.replot_traces(llc, out)  # the chains' losses, when zhang llc kept them
      written += [epath.Path(traces)] if traces else []
      lines += llc_report.report_lines(llc) + [""]
  if (out / ntk_report.NTK_JSON).exists():
    ntk = ntk_report.load(out)
    if provenance.source(ntk["settings"], runs) is None:
      lines += _skipped("## Kernel regime (empirical NTK at initialization)",
                        out / ntk_report.NTK_JSON, ntk["settings"], f"zhang ntk RUN --out {out}")
    else:
      from zhang.analysis import ntk_plots  # matplotlib's figures of ntk.json
      written += [epath.Path(p) for p in ntk_plots.plot(ntk, out)]
      lines += ntk_report.summary_lines(ntk) + [""]
  if (out / lazy_rich.FILE).exists():
    moved = lazy_rich.load(out)
    if provenance.source(moved["settings"], runs) is None:
      lines += _skipped("## Kernel movement (lazy or rich)", out / lazy_rich.FILE,
                        moved["settings"], f"zhang ntk RUN --steps all --out {out}")
    else:
      written += [epath.Path(p) for p in lazy_rich.plot(moved, out)]
      acc = {(m, int(i)): float(a) for m, i, a in runs.replicas[
          ["model", "replica", "final_test_acc"]].itertuples(index=False)}
      lines += lazy_rich.report_lines(moved, acc)
  if (out / measures_report.FILE).exists():
    written_m, lines_m = _measures(runs, out)
    written, lines = written + written_m, lines + lines_m
  if (out / bound_report.FILE).exists():
    written_b, lines_b = _bound(runs, out)
    written, lines = written + written_b, lines + lines_b
  return written, lines


def _these_runs(runs: Runs, path: epath.Path, result: dict, title: str, command: str):
  """(the replicas of a probe's per-replica ``result`` that are these runs', []), or (None,
  the skipped section) when none is; a line says when the file holds other runs' too."""
  mine, others = measures_report.select(result, runs)
  if mine is None:
    return None, _skipped(title, path, result["settings"], command)
  if others:
    log(measures_report.partial_line(path, others))
  return mine, []


def _bound(runs: Runs, out: epath.Path) -> tuple[list[epath.Path], list[str]]:
  """The figure and report.md's section of bound.json's replicas that are these runs'."""
  path = out / bound_report.FILE
  mine, skipped = _these_runs(runs, path, bound_report.load(path), "## PAC-Bayes bounds",
                              f"zhang bound RUN --out {out}")
  if mine is None:
    return [], skipped
  return bound_report.plot(mine, out), bound_report.report_lines(mine)


def _measures(runs: Runs, out: epath.Path) -> tuple[list[epath.Path], list[str]]:
  """measures.md, its figures and report.md's section, from the replicas of measures.json
  that are these runs' (a study's measures.json may hold other models' too)."""
  path = out / measures_report.FILE
  mine, skipped = _these_runs(runs, path, measures_report.load(path),
                              "## Generalization measures", f"zhang measures RUN --out {out}")
  if mine is None:
    return [], skipped
  analysis = measures_report.analyze(mine)
  return measures_report.write(out, analysis), measures_report.summary_lines(analysis)
