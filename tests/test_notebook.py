"""examples/tutorial.ipynb runs top to bottom in a fresh kernel, and is committed without outputs."""
import json
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "tutorial.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "".join(cell["source"])[:80]


def test_notebook_runs(tmp_path, monkeypatch):
    """Every cell runs in a fresh kernel (cwd: a temporary folder) and the cells show what they promise."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.time()
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.time() - start
    outputs = [cell.get("outputs", []) for cell in notebook.cells if cell.cell_type == "code"]
    assert not any(out.get("output_type") == "error" for cell in outputs for out in cell)
    text = "".join(out.get("text", "") for cell in outputs for out in cell if out.get("output_type") == "stream")
    assert "explained variance" in text and "\nlocal " in text and "\ne2e " in text     # the metrics table
    assert any("image/png" in out.get("data", {}) for cell in outputs for out in cell)     # the Pareto plot
    assert any("<b>feature " in out.get("data", {}).get("text/html", "") for cell in outputs for out in cell)
    assert "steered (+8 x feature" in text
    assert (tmp_path / "outputs" / "tutorial-e2e" / "final" / "model.safetensors").is_file()
    print(f"notebook ran in {seconds:.0f} s")
