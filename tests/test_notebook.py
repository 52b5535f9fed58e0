"""examples/lesson.ipynb: the outputs saved with it are those of its cells as they are, from one
run top to bottom without an error, and show what the lesson shows; and executed in a real
Jupyter kernel (nbclient), twice in one folder, with Graphviz's dot and without it."""

import ast
import functools
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from minigpt import MiniGPT, resolve_config
from minigpt.performance import peak_memory

nbformat = pytest.importorskip("nbformat")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = EXAMPLES / "lesson.ipynb"


def load_executor():
    """examples/execute.py, which runs the notebook and saves its outputs."""
    spec = importlib.util.spec_from_file_location("execute", EXAMPLES / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def assert_shows_the_lesson(nb):
    """What the lesson's sections show, in the notebook's outputs."""
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []
    text = "".join(outputs(nb, "stream")) + "".join(outputs(nb, "text/plain"))
    assert "def train_step(" in text  # section 1: the four steps, as code
    assert "tensor([7.])" in text and "dy/dx = 7" in text  # section 2
    assert "torch.optim.SGD takes the same steps: True" in text  # section 3
    assert abs(float(re.search(r"w = (-?[\d.]+): the minimum", text)[1]) + 1.5) < 0.01
    assert "train 1,003,854 tokens, validation 111,540" in text  # the lesson's 3 questions
    assert "B*T = 32*128 = 4,096" in text
    fresh = float(re.search(r"ln 65 = 4.17 expected; a fresh model gives ([\d.]+)", text)[1])
    assert abs(fresh - 4.17) < 0.5
    assert "216,576 parameters" in text
    assert_the_trade_lines(nb, text)  # the sliders' table
    assert "step  199 | train" in text  # the loop ran to its end
    assert "token_emb.weight: grad mean=" in text  # the lesson's printout: the graph kept them
    assert_the_gradflow_table(text)
    assert text.count("Reading the curve:") == 2 and "the lesson's shape" in text
    assert_the_summary(nb, text)  # train()'s
    assert_the_samples(nb)
    assert len(outputs(nb, "image/png")) >= 5  # lr, both losses, SGD vs AdamW, attention
    assert_the_figures(nb)


@functools.cache
def lesson_model() -> MiniGPT:
    """The lesson's model, as the notebook builds it (the oracle for its tables)."""
    return MiniGPT.from_config(resolve_config().model)


def assert_the_trade_lines(nb, text):
    """The skipped sliders cell's lines: one for each (B, T) its loop names, in order, with
    B*T predictions, the activations peak_memory gives that shape of the lesson's model, and
    a throughput that is the predictions over the step time the line prints."""
    source = next(c.source for c in nb.cells if "format_trade(batch_trade(" in c.source)
    shapes = ast.literal_eval(re.search(r"for b, t in (\[.*?\]):", source)[1])
    lines = re.findall(r"B=(\d+) +T=(\d+) +x, y: \((\d+), (\d+)\) +([\d,]+) predictions per "
                       r"step  activations +([\d.]+) MiB  one step +([\d.]+) ms here "
                       r"\(([\d,]+) predictions/s\)", text)
    assert [(int(b), int(t)) for b, t, *_ in lines] == shapes
    lesson = lesson_model().num_params()
    for b, t, xb, xt, predictions, mib, ms, rate in lines:
        b, t, ms = int(b), int(t), float(ms)
        assert (int(xb), int(xt)) == (b, t) and int(predictions.replace(",", "")) == b * t
        cfg = resolve_config(overrides={"batch_size": b, "block_size": t})
        assert float(mib) == round(peak_memory(cfg, 0, lesson)["activations"] / 2**20, 1)
        rate = int(rate.replace(",", ""))  # ms printed to 0.1, the rate to 1
        assert b * t * 1000 / (ms + 0.05) - 1 <= rate <= b * t * 1000 / (ms - 0.05) + 1


def assert_the_gradflow_table(text):
    """The gradient-flow table: a row for each parameter tensor of the lesson's model, in its
    order, and a summary line that counts them and the rows whose FLAGS are not '-'."""
    names = [name for name, _ in lesson_model().named_parameters()]
    table = re.search(r"^PARAMETER .*\n-[- ]+\n((?:.*\n)*?)(\d+ (?:of \d+ )?parameters.*)$",
                      text, re.M)
    rows = [line.split() for line in table[1].splitlines()]
    assert [row[0] for row in rows] == names
    flagged = sum(row[-1] != "-" for row in rows)
    if flagged:
        assert table[2].startswith(f"{flagged} of {len(names)} parameters flagged: ")
    else:
        assert table[2] == f"{len(names)} parameters, none flagged"


def assert_the_figures(nb):
    """Each cell that calls a plot function shows one figure, its own: the attention maps a
    panel for each layer and head of the lesson's model and a colour bar, the comparison its
    two panels (by step, by time), the curves one."""
    model = resolve_config().model
    panels = {"plot_lr": 1, "plot_loss": 1, "plot_overlay": 2,
              "plot_attention": model.n_layer * model.n_head + 1}
    for cell in nb.cells:
        called = re.findall(r"^(plot_\w+)\(", cell.source, re.M)
        if cell.cell_type != "code" or not called:
            continue
        shown = [o["data"]["text/plain"] for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(called) == len(shown) == 1, cell.source
        assert shown[0].endswith(f" with {panels[called[0]]} Axes>"), (called, shown)


def assert_the_samples(nb):
    """Each cell sampling from "ROMEO:" prints the prompt and then as many characters as it
    asks generate for (a character tokenizer: one a token), not the prompt alone or again."""
    cells = [c for c in nb.cells if c.cell_type == "code" and 'encode("ROMEO:")' in c.source]
    assert len(cells) == 2  # section 9's, and the closing train()'s model's
    for cell in cells:
        asked = int(re.search(r"generate\((?:\w+, )?\w+, (\d+)", cell.source)[1])
        printed = "".join(o["text"] for o in cell.outputs if o.get("name") == "stdout")
        assert printed.startswith("ROMEO:") and printed.endswith("\n"), printed
        assert len(printed) == len("ROMEO:") + asked + 1, printed  # (print's newline)


def assert_the_summary(nb, text):
    """train()'s summary: the steps its cell asks for, the parameters of the lesson's model,
    and the best validation loss the reading below it finds in the run's metrics."""
    cell = next(c for c in nb.cells if "result.summary" in c.source)
    summary = ast.literal_eval(next(o["data"]["text/plain"] for o in cell.outputs
                                    if "text/plain" in o.get("data", {})))
    assert summary["steps"] == int(re.search(r'"steps": (\d+)', cell.source)[1])
    assert summary["params"] == lesson_model().num_params()
    best = re.findall(r"best validation loss ([\d.]+) at step", text)[-1]  # the reading's
    assert float(best) == round(summary["best_val_loss"], 4)


def test_the_saved_outputs_are_a_clean_run_of_the_cells_as_they_are():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # one run
    assert nb.metadata.get("minigpt", {}).get("sources_sha256") == \
        load_executor().sources_hash(nb), "cells changed since: run python examples/execute.py"
    assert_shows_the_lesson(nb)


def test_the_first_cell_says_how_to_install_minigpt(monkeypatch, capsys):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # a fresh kernel
    with pytest.raises(SystemExit, match="not installed"):
        exec(first.source, {})
    said = capsys.readouterr().out
    assert "pip install -e '.[notebook]'" in said and "Colab" in said


def shortened(nb, steps):
    """The notebook with each of its trainings cut short: `steps` maps the steps a cell trains
    to the steps it trains here."""
    for long, short in steps.items():
        cells = [c for c in nb.cells if f'"steps": {long}' in c.source]
        assert cells, f"no cell trains for {long} steps: update the test's step counts"
        for cell in cells:
            cell.source = cell.source.replace(f'"steps": {long}', f'"steps": {short}')
    return nb


def code_cell(nb, marker):
    """The one code cell whose source holds `marker`."""
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"{len(cells)} code cells hold {marker!r}"
    return cells[0]


def test_the_gradient_probe_runs_after_earlier_cells_run_again(tmp_path, data_dir):
    """A learner goes back, runs section 3's descent and the batch table again, then section
    11's probe: it still reads section 8's settings (those cells' loops name a variable `t`
    too: the probe read section 8's `t = cfg.train` and failed with "'int' object has no
    attribute 'lr'"). Only the cells needed run, section 8's loop one step on 2x16 batches."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = shortened(nbformat.read(NOTEBOOK, as_version=4),
                   {200: '1, "batch_size": 2, "block_size": 16'})
    table = code_cell(nb, "format_trade(batch_trade(")
    table.source = re.sub(r"for b, t in \[.*?\]:", "for b, t in [(2, 8)]:", table.source)
    cells = [code_cell(nb, marker) for marker in ("RUNS = ", "Splits.from_tokens(",
                                                  "model = MiniGPT(tok", "for step in range(")]
    again = [code_cell(nb, "eta, w = "), table, code_cell(nb, "probe_batch_stats(")]
    nb.cells = cells + again
    load_executor().execute(nb, tmp_path)  # (a cell that fails raises CellExecutionError)
    assert_the_gradflow_table("".join(outputs(nb, "stream")))


@pytest.mark.slow  # the whole lesson, trained in a kernel, then again, shorter
def test_the_notebook_runs_twice_in_one_folder_with_and_without_dot(tmp_path, data_dir):
    """The first run trains the lesson's loop its 200 steps, whose curve the test reads, and
    the optimizer comparison and train() 10 of their 100: what the test reads of those (a plot,
    a summary, a reading) does not depend on how long they train (at 10 steps each still
    evaluates at its first and last step, which the reading's best and the summary's meet on),
    and the saved outputs show them whole. The second run, in the folder the first one filled
    and without Graphviz's dot, trains each cell 2 to 4 steps: what it checks (every cell runs
    again beside the first run's folders; the graph cell says how to install dot) does not
    depend on how long they train."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    execute = load_executor().execute
    first = execute(shortened(nbformat.read(NOTEBOOK, as_version=4), {100: 10}), tmp_path)
    assert_shows_the_lesson(first)
    if shutil.which("dot"):
        svgs = outputs(first, "image/svg+xml")
        assert svgs and "blocks.0" in "".join(svgs)
    no_dot = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # python, but no dot
    second = shortened(nbformat.read(NOTEBOOK, as_version=4), {200: 4, 100: 2})
    at, exercise = next((i, c) for i, c in enumerate(second.cells) if "compare(" in c.source)
    edited = nbformat.v4.new_code_cell(exercise.source.replace('"lr": 0.5', '"lr": 0.1'))
    assert edited.source != exercise.source
    second.cells.insert(at + 1, edited)  # the exercise edited and run again, as a learner does
    second = execute(second, tmp_path, env=no_dot)
    assert "step    3 | train" in "".join(outputs(second, "stream"))  # the loop ran, shorter
    assert len(outputs(second, "image/png")) >= 5
    assert_the_figures(second)
    assert outputs(second, "image/svg+xml") == []
    said = "".join(outputs(second, "stream"))
    assert "Graphviz's dot, which is not installed: apt install graphviz" in said
    compared = sorted(len(list(r.glob("compare-*/compare.json")))
                      for r in (tmp_path / "runs").iterdir())
    assert compared == [1, 2]  # the first run's one, the second's two
