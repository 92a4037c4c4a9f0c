"""The Colab-style notebook runs top to bottom on a tiny configuration."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("NB_NUM_RUNS", "6")
    monkeypatch.setenv("NB_NUM_STEPS", "6")
    monkeypatch.setenv("NB_WORKDIR", str(tmp_path))
    os.makedirs(tmp_path, exist_ok=True)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "all-steps MSE" in outputs and "final loss of test example 0" in outputs
    assert (tmp_path / "counterfactual.png").exists()
