"""notebooks/scaling_laws.ipynb executes headless (nbclient, kernel python3 from .venv)."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "scaling_laws.ipynb"


def test_scaling_laws_notebook_runs(monkeypatch):
  monkeypatch.setenv("SCALING_NB_GRID", "coarse")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(NB, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}
  )
  client.execute()
  outputs = "".join(
      o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert "N_opt" in outputs and "summed objective" in outputs
  assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
