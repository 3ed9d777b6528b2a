"""The quickstart notebook runs top to bottom in a real Jupyter kernel, so it never rots."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_the_quickstart_notebook_executes(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=90,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failure
    outputs = [
        "".join(str(part) for part in output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ]
    joined = "\n".join(outputs)
    assert "'succeeded': 1000" in joined
    assert "('completed', 100, 200, 300)" in joined
    assert "('streamed', 'completed', True)" in joined  # Streaming (issue 12)
    assert ", 50, 50)" in joined  # the spend/cache cell: 50 cache hits, 50 requests sent
