"""examples/lesson.ipynb, executed top to bottom in a real Jupyter kernel (nbclient): no cell
may fail, and the outputs show what the lesson shows (the parameter count, dy/dx = 7, the
curves, the maps, the graph, text from "ROMEO:")."""

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytestmark = pytest.mark.slow  # the whole lesson, trained in a kernel

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "lesson.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory, data_dir):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    folder = tmp_path_factory.mktemp("notebook")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()
    return nb, folder


def outputs(nb, kind):
    """Every output of the given MIME type (or 'stream' text), in cell order."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "stream" and out.get("output_type") == "stream":
                found.append(out["text"])
            elif kind in out.get("data", {}):
                found.append(out["data"][kind])
    return found


def test_the_notebook_runs_and_shows_the_lessons_figures(executed):
    nb, folder = executed
    text = "".join(outputs(nb, "stream")) + "".join(outputs(nb, "text/plain"))
    assert "216,576 parameters" in text
    assert "tensor([7.])" in text and "dy/dx = 7" in text
    assert "1,003,854 tokens, validation 111,540" in text
    assert "def train_step(" in text  # the step minigpt.train calls, shown as code
    assert "step  199 | train" in text  # the loop around it ran to its end
    assert "parameters, none flagged" in text or "parameters flagged" in text
    assert "final_val_loss" in text  # train()'s summary
    assert text.count("ROMEO:") >= 2  # a sample, twice
    assert len(outputs(nb, "image/png")) >= 3  # loss curve, attention maps, SGD vs AdamW
    assert (folder / "runs" / "notebook-compare" / "compare.json").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_the_graph_is_drawn_inline(executed):
    nb, _ = executed
    svgs = outputs(nb, "image/svg+xml")
    assert svgs and "blocks.0" in "".join(svgs)
