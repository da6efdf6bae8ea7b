"""Executes notebooks/analysis.ipynb top to bottom against a small run."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from zhang.analysis import synthetic  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def _execute(tmp_path, monkeypatch, run, run_b=None, n_boot="10"):
  """Runs the notebook on ``run`` (and ``run_b`` to compare; None: the notebook's defaults)
  with Jupyter started in ``tmp_path``; returns (outputs, stream text)."""
  if run is None:
    monkeypatch.delenv("ZHANG_RUN_DIR", raising=False)
  else:
    monkeypatch.setenv("ZHANG_RUN_DIR", str(run))
  if run_b is None:
    monkeypatch.delenv("ZHANG_RUN_DIR_B", raising=False)
  else:
    monkeypatch.setenv("ZHANG_RUN_DIR_B", str(run_b))
  monkeypatch.setenv("ZHANG_N_BOOT", n_boot)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  errors = [o for o in outputs if o.output_type == "error"]
  assert not errors, "\n".join(f"{o.ename}: {o.evalue}" for o in errors)
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  return outputs, text


@pytest.mark.slow
def test_analysis_notebook_runs(tmp_path, monkeypatch):
  # Two synthetic runs with known curves: the notebook also compares them.
  run_a = synthetic.write_example_run(tmp_path / "mlp_1x512")
  run_b = synthetic.write_example_run(tmp_path / "mlp_3x512", model="mlp_3x512", scale=1.5)
  outputs, text = _execute(tmp_path, monkeypatch, run_a, run_b)
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 5  # fig1a, 1b, 1c, confidence, and the comparison's fig1b
  assert "mlp_1x512: " in text and "status complete" in text
  # Run files without checkpoints: nothing to evaluate, said in one line.
  assert "No trained replica to evaluate here: " in text and "has no checkpoints/" in text


def _readme_first_workdir() -> str:
  """The --workdir of the README's first command (the first line of its first code block)."""
  text = (REPO / "README.md").read_text()
  first = text.split("```")[1].splitlines()[1]
  return first.split("--workdir", 1)[1].split()[0]


@pytest.mark.slow
def test_analysis_notebook_runs_as_shipped_from_notebooks_folder(tmp_path, monkeypatch):
  """No environment variable: the notebook reads the README's run, its relative path taken
  from the repository's top although Jupyter starts in notebooks/."""
  assert _readme_first_workdir() == "runs/digits"
  checkout = tmp_path / "checkout"  # a checkout's layout, with the README's run in it
  for folder in ("configs", "notebooks"):
    (checkout / folder).mkdir(parents=True)
  synthetic.write_example_run(checkout / "runs" / "digits", seeds=(0,))
  _, text = _execute(checkout / "notebooks", monkeypatch, None)
  assert "digits: mlp_1x512 on " in text and "status complete" in text
  assert "No trained replica to evaluate here: " in text and "has no checkpoints/" in text


# --- The same notebook, and `zhang report`, on a real (tiny) training run. -------------------


def _tiny_real_config():
  """MLP on 256 digits, 60 steps: conftest's `tiny_config` plus p = 1, at lr 0.05.

  At the paper's lr 0.01 no replica fits in 60 steps. At 0.05 the true-label and pixel
  replicas fit (step 40-50) and the corrupted-label ones stay censored, so both the fitted and
  the censored paths of the analysis run; `--loss_below 1e-12` (below) censors them all.
  """
  from zhang.experiment import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.model = "mlp_1x512"
  c.dataset = "digits"
  c.n_train, c.n_test = 256, 128
  c.batch_size = 32
  c.learning_rate = 0.05
  c.max_steps = 60
  c.eval_every = 10
  c.eval_batch_size = 100
  c.lr_decay_every = 25
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 0.5, 1.0], seeds=[0, 1]),
            dict(kinds=["shuffled_pixels", "random_pixels", "gaussian"], corruptions=[0.0],
                 seeds=[0])]
  return c


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
  """Trains the tiny grid once for this module's tests (a few seconds on 2 CPU cores)."""
  from zhang.experiment import train  # pylint: disable=g-import-not-at-top  (jax only for these tests)
  workdir = tmp_path_factory.mktemp("real") / "mlp_1x512"
  summary = train.run(_tiny_real_config(), workdir, progress=False)
  assert summary["status"] == "complete" and summary["steps_run"] == 60
  fitted = {(r["kind"], r["corruption"]) for r in summary["replicas"] if r["fit_step"]}
  assert ("labels", 0.0) in fitted  # the report needs a fitted true-label replica
  for name in ("config.json", "metrics.jsonl", "summary.json"):
    assert (workdir / name).stat().st_size > 0, name
  return workdir


@pytest.mark.slow
def test_analysis_notebook_runs_on_real_run(real_run, tmp_path, monkeypatch):
  outputs, text = _execute(tmp_path, monkeypatch, real_run)
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 4  # fig1a, 1b, 1c, confidence (no second run to compare)
  assert "mlp_1x512: mlp_1x512 on digits, status complete, 60 steps, 9 replicas" in text
  assert "Set ZHANG_RUN_DIR_B" in text
  # The trained replicas evaluated through zhang.probes.run, beside metrics.jsonl's record.
  assert "9 replicas evaluated at step 60 (saved steps [60])" in text
  table = next(o.data["text/plain"] for o in outputs
               if "test_acc_recorded" in o.get("data", {}).get("text/plain", ""))
  rows = [line.split() for line in table.splitlines()[2:]]
  assert [int(r[0]) for r in rows] == list(range(9))
  assert all(r[-2] == r[-1] for r in rows), table  # test_acc, as training recorded it


@pytest.mark.slow
def test_report_cli_on_real_run(real_run, tmp_path, monkeypatch, capsys):
  from zhang import cli  # pylint: disable=g-import-not-at-top
  from zhang.analysis import report  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("MPLBACKEND", "Agg")
  out = tmp_path / "report"
  assert cli.main(["report", str(real_run), "--out", str(out), "--n_boot", "10"]) == 0
  printed = capsys.readouterr().out.split()
  for name in (*report.FIGURES, "report.md"):
    path = out / name
    assert path.is_file() and str(path) in printed, name
  for name in report.FIGURES:
    data = (out / name).read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n"), name
  text = (out / "report.md").read_text()
  assert text.startswith("# Randomization tests on digits")
  assert "mlp_1x512" in text and "complete" in text
  assert "still in progress" not in text


def test_report_cli_when_true_labels_never_fit(real_run, tmp_path, monkeypatch, capsys):
  from zhang import cli  # pylint: disable=g-import-not-at-top
  from zhang.analysis import report  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("MPLBACKEND", "Agg")
  out = tmp_path / "report"
  # A loss no replica reaches: every replica censored, as early in a long run.
  assert cli.main(["report", str(real_run), "--out", str(out),
                   "--loss_below", "1e-12", "--n_boot", "10"]) == 0
  printed = capsys.readouterr().out.split()
  for name in (*report.FIGURES, "report.md"):
    path = out / name
    assert path.is_file() and path.stat().st_size > 0 and str(path) in printed, name
  text = (out / "report.md").read_text()
  assert "Slowdowns undefined (mlp_1x512)" in text
  assert "no true-label replica has fitted yet" in text
  assert "no scaling law could be fitted (no replica has fitted yet" in text
  # Time to fit still reported, as censored lower bounds (60 steps of 8 per epoch).
  assert "| mlp_1x512 | true labels | 0/2 | ≥ 7.5 [7.5, ∞] | – |" in text


@pytest.mark.slow
def test_analysis_notebook_runs_before_anything_fits(tmp_path, monkeypatch):
  # Early in a run: no replica has fitted, so slowdowns and scaling laws are undefined.
  run = synthetic.write_example_run(tmp_path / "early", steps_run=30, status="running")
  _, text = _execute(tmp_path, monkeypatch, run, n_boot="5")
  assert "status running" in text and "no scaling law could be fitted" in text
