"""Analysis of randomization-test runs from their files alone (no jax, no trainer).

Typical use (also in notebooks/analysis.ipynb):

  from zhang import analysis
  runs = analysis.load_runs(["gs://bucket/run1", "runs/run2"])
  fits = analysis.slowdown(analysis.time_to_fit(runs.metrics, threshold=1.0))
  laws = analysis.fit_scaling(fits)
  analysis.plots.fig1b(fits, laws)

A *setup* is a run-level training setup plus one combination of the per-replica
hyper-parameters (`HPARAMS`: learning rate, weight decay, augmentation, output scale,
dropout), so every table above is per combination; the columns `SETUP_COLUMNS` name it.
"""

from zhang.analysis import memorization, paper, plots, regularization, tables
from zhang.analysis.fit_time import (
                                     bootstrap_mean_ci,
                                     non_monotonic,
                                     slowdown,
                                     summarize,
                                     time_to_fit,
)
from zhang.analysis.load import (
                                     HPARAMS,
                                     SETUP_COLUMNS,
                                     Run,
                                     Runs,
                                     condition_name,
                                     hparams_label,
                                     is_run_dir,
                                     load_run,
                                     load_runs,
                                     regularizers,
                                     require_one_dataset,
                                     varying_axes,
)
from zhang.analysis.report import Analysis, analyze, combinations, write_report
from zhang.analysis.scaling import fit_form, fit_scaling, verdict

__all__ = [
    "HPARAMS", "SETUP_COLUMNS", "Analysis", "Run", "Runs", "analyze", "bootstrap_mean_ci",
    "combinations", "condition_name", "fit_form", "fit_scaling", "hparams_label", "is_run_dir",
    "load_run", "load_runs", "memorization", "non_monotonic", "paper", "plots",
    "regularization", "regularizers",
    "require_one_dataset", "slowdown", "summarize", "tables", "time_to_fit", "varying_axes",
    "verdict", "write_report",
]
