"""Executes notebooks/analysis.ipynb top to bottom against a small run."""

import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from zhang.analysis import synthetic  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def test_analysis_notebook_runs(tmp_path, monkeypatch):
  # A synthetic run until the trainer can make a real one in seconds; the notebook reads
  # whatever ZHANG_RUN_DIR points at.
  run_a = synthetic.write_example_run(tmp_path / "mlp_1x512")
  run_b = synthetic.write_example_run(tmp_path / "mlp_3x512", model="mlp_3x512", scale=1.5)
  monkeypatch.setenv("ZHANG_RUN_DIR", str(run_a))
  monkeypatch.setenv("ZHANG_RUN_DIR_B", str(run_b))
  monkeypatch.setenv("ZHANG_N_BOOT", "10")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  start = time.time()
  nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  assert time.time() - start < 60
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 5  # fig1a, 1b, 1c, confidence, and the comparison's fig1b
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "mlp_1x512: " in text and "status complete" in text
