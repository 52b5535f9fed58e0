"""minigpt.diagnostics.graph: tracing a tiny MiniGPT's loss graph, collapsing it per module,
DOT output and rendering (with Graphviz when it is installed, and without it)."""

from __future__ import annotations

import graphlib
import math
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter

import pytest
import torch

from minigpt import MiniGPT
from minigpt.diagnostics.graph import (
    FORMATS,
    FRAME_LIMIT,
    GraphvizMissing,
    Node,
    collapse,
    gradient_norms,
    loss_graph,
    loss_graph_dot,
    record_modules,
    render,
    show_loss_graph,
    to_dot,
    trace,
)
from minigpt.errors import MiniGPTError

VOCAB = 11
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt install graphviz)")


def _model(**kw) -> MiniGPT:
    return MiniGPT(VOCAB, **{"n_embd": 16, "n_head": 2, "n_layer": 2, "block_size": 8, **kw})


@pytest.fixture
def model() -> MiniGPT:
    return _model()


@pytest.fixture
def traced(model):
    loss, params = loss_graph(model, VOCAB, T=8)
    nodes, edges = trace(loss, params)
    return model, loss, params, nodes, edges


def _acyclic(n: int, edges) -> bool:
    """The standard library's topological sort orders exactly the n nodes, finding no cycle."""
    order = graphlib.TopologicalSorter({i: set() for i in range(n)})
    for a, b in edges:
        order.add(b, a)
    try:
        return sorted(order.static_order()) == list(range(n))
    except graphlib.CycleError:
        return False


def _grad_fns(root):
    """The oracle for the node count: every distinct autograd node behind root."""
    seen, todo, pairs = set(), [root.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is not None:
                pairs.add((nxt, fn))
                todo.append(nxt)
    return seen, pairs


def test_loss_graph_feeds_token_ids_gives_the_initial_loss_and_rejects_misfits(model):
    loss, params = loss_graph(model, VOCAB, T=8, seed=0)
    assert loss.dim() == 0 and loss.requires_grad
    assert abs(loss.item() - math.log(VOCAB)) < 0.1  # N(0, 0.02) weights: near-uniform logits
    assert params == dict(model.named_parameters())
    assert loss_graph(model, VOCAB, T=8, seed=0)[0].item() == loss.item()
    assert loss_graph(model, VOCAB, T=8, seed=1)[0].item() != loss.item()
    with pytest.raises(MiniGPTError, match="vocab_size"):
        loss_graph(model, VOCAB + 1)
    with pytest.raises(MiniGPTError, match=r"^T \(0\) and batch_size \(1\) must be at least 1$"):
        loss_graph(model, VOCAB, T=0, batch_size=1)
    short = _model(block_size=4)  # T=8 by default: cut to the model's block_size
    assert loss_graph(short, VOCAB)[0].grad_fn is not None
    for depth in ("1", -1, 1.5, True):  # (a notebook's "1": a TypeError deep in collapse)
        with pytest.raises(MiniGPTError, match=r"^depth must be a whole number >= 0 \(0: every "
                                               rf"node\), got {re.escape(repr(depth))}$"):
            loss_graph_dot(model, VOCAB, depth)


def test_loss_graph_feeds_b_rows_of_t_tokens_and_targets_the_next_token(model):
    """Read back from autograd's own saved tensors: token_emb's indices are the (B, T) inputs
    (B != T, so a swap shows), the loss's targets are each row shifted by one token."""
    loss, _ = loss_graph(model, VOCAB, T=5, batch_size=3)
    fns, _ = _grad_fns(loss)
    x = next(f._saved_indices for f in fns
             if type(f).__name__.startswith("Embedding") and f._saved_indices.dim() == 2)
    y = loss.grad_fn._saved_target.view(3, 5)
    assert x.shape == (3, 5) and torch.equal(y[:, :-1], x[:, 1:])


def test_trace_has_every_parameter_once_and_the_loss_at_the_root(traced):
    model, loss, params, nodes, edges = traced
    names = Counter(n.name for n in nodes if n.kind == "param")
    assert names == Counter(dict.fromkeys(params, 1))
    assert all(n.label.startswith(f"{n.name} (") for n in nodes if n.kind == "param")
    assert [n.id for n in nodes] == list(range(len(nodes)))
    assert nodes[0].label == "NllLoss" and nodes[0].kind == "op"
    sinks = {n.id for n in nodes} - {a for a, _ in edges}
    assert sinks == {0}  # the loss feeds nothing, and it alone
    assert _acyclic(len(nodes), edges)  # so, with one sink, every node has a path to the loss
    fns, pairs = _grad_fns(loss)
    assert len(nodes) == len(fns) and len(edges) == len(pairs)  # shared nodes counted once


def test_trace_records_which_module_ran_each_op(traced):
    *_, nodes, _ = traced
    by_label = {}
    for n in nodes:
        by_label.setdefault(n.label, set()).add(n.module)
    sdpa = next(label for label in by_label if label.startswith("ScaledDotProduct"))
    assert by_label[sdpa] == {"blocks.0.attn", "blocks.1.attn"}
    assert by_label["Gelu"] == {"blocks.0.ff.1", "blocks.1.ff.1"}
    assert by_label["Embedding"] == {"token_emb", "pos_emb"}
    assert by_label["NllLoss"] == {""} and by_label["LogSoftmax"] == {""}
    # the residual adds are the blocks' own; the embedding sum is the model's own
    assert by_label["Add"] == {"", "blocks.0", "blocks.1"}
    ff0 = next(n for n in nodes if n.name == "blocks.1.ff.0.weight")
    assert ff0.scope == ("blocks.1", "blocks.1.ff", "blocks.1.ff.0") and ff0.shape == (64, 16)


def test_trace_counts_a_tied_weight_once():
    model = _model(tie_weights=True)
    loss, params = loss_graph(model, VOCAB)
    nodes, edges = trace(loss, params)
    emb = [n for n in nodes if n.name == "token_emb.weight"]
    assert len(emb) == 1 and not any(n.name == "lm_head.weight" for n in nodes)
    assert len([b for a, b in edges if a == emb[0].id]) == 2  # the embedding and lm_head


def test_trace_works_after_backward_and_without_recording(model):
    loss, params = loss_graph(model, VOCAB)
    loss.backward()
    nodes, _ = trace(loss, params)
    assert sum(n.kind == "param" for n in nodes) == len(params)
    x = torch.randint(0, VOCAB, (1, 4))
    _, plain = model(x, x)  # not recorded: ops have no module, params no scope
    nodes, edges = trace(plain)
    assert all(n.module is None for n in nodes if n.kind == "op")
    assert sum(n.kind == "tensor" for n in nodes) == len(params)  # unnamed leaves
    small, _ = collapse(nodes, edges)
    assert len(small) == len(nodes)  # nothing to group by


def test_trace_rejects_a_tensor_without_history_and_record_modules_leaves_no_hooks(model):
    with pytest.raises(MiniGPTError, match="no autograd history"):
        trace(torch.ones(3))
    with record_modules(model):
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_collapse_gives_one_node_per_module_in_a_chain(traced):
    model, _, params, nodes, edges = traced
    small, small_edges = collapse(nodes, edges, depth=1)
    labels = [n.label.split("\n")[0] for n in small]
    assert sorted(labels) == sorted(["cross_entropy", "view", "lm_head", "ln_f", "blocks.1",
                                     "blocks.0", "add", "token_emb", "pos_emb"])
    assert small[0].label == "cross_entropy"  # the root's group comes first
    named = {label: n.id for label, n in zip(labels, small, strict=True)}
    chain = [("token_emb", "add"), ("pos_emb", "add"), ("add", "blocks.0"),
             ("blocks.0", "blocks.1"), ("blocks.1", "ln_f"), ("ln_f", "lm_head"),
             ("lm_head", "view"), ("view", "cross_entropy")]
    assert sorted(small_edges) == sorted((named[a], named[b]) for a, b in chain)
    grouped = Counter(p for n in small for p in n.params)
    assert grouped == Counter(dict.fromkeys(params, 1))  # each parameter in one group
    counts = [int(n.label.split("\n")[1].split()[0].replace(",", ""))
              for n in small if n.kind == "module"]
    assert sum(counts) == model.num_params()


def test_collapse_counts_a_scalar_parameter_in_its_module():
    model = _model(value_embeds=1)  # blocks.0.attn.ve_lambda has shape ()
    small, _ = collapse(*trace(*loss_graph(model, VOCAB)), depth=2)
    counts = {n.module: int(n.label.split("\n")[1].split()[0].replace(",", ""))
              for n in small if n.kind == "module" and "\n" in n.label}
    attn = sum(p.numel() for k, p in model.named_parameters() if k.startswith("blocks.0.attn."))
    assert counts["blocks.0.attn"] == attn
    assert sum(counts.values()) == model.num_params()


def test_collapse_depth_two_opens_the_blocks(traced):
    model, *_, nodes, edges = traced
    small, small_edges = collapse(nodes, edges, depth=2)
    modules = Counter(n.module for n in small if n.kind == "module")
    for i in range(2):
        for part in ("ln1", "attn", "ln2", "ff"):
            assert modules[f"blocks.{i}.{part}"] == 1
    assert modules["lm_head"] == 1 and modules["token_emb"] == 1  # leaves stay whole
    assert "blocks.0" not in modules  # its own residual adds became call nodes
    assert sum(n.label == "add" for n in small) == 1 + 2 * 2
    assert _acyclic(len(small), small_edges)
    for n in small:  # a module's scope ends with itself, after the modules it sits in
        if n.kind == "module":
            assert n.module in dict(model.named_modules()) and n.scope[-1] == n.module
            assert all(n.module.startswith(p + ".") for p in n.scope[:-1])
    ff = next(n for n in small if n.module == "blocks.0.ff")
    assert set(ff.params) == {f"blocks.0.ff.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    with pytest.raises(MiniGPTError, match="at least 1"):
        collapse(nodes, edges, depth=0)


def test_to_dot_marks_parameters_ops_and_gradient_norms(traced):
    _, loss, params, nodes, edges = traced
    loss.backward()
    norms = gradient_norms(params)
    assert norms.keys() == params.keys()
    assert norms["lm_head.weight"] == pytest.approx(float(params["lm_head.weight"].grad.norm()))
    text = to_dot(nodes, edges, norms, title='tiny "GPT"')
    for name in params:
        assert f'label="{name} (' in text
    param_lines = [line for line in text.splitlines() if "blocks.0.attn.Wq.weight" in line]
    assert len(param_lines) == 1 and "shape=box" in param_lines[0]
    assert f"|grad| {norms['blocks.0.attn.Wq.weight']:.3g}" in param_lines[0]
    assert text.count("shape=ellipse") == sum(n.kind == "op" for n in nodes) - 1  # root apart
    assert text.count("->") == len(edges)
    # the arrows point the way data flows, as the autograd edges do: parameters -> ... -> loss
    # (the root, n0, feeds nothing; a parameter consumes nothing)
    drawn = {tuple(map(int, m)) for m in re.findall(r"^  n(\d+) -> n(\d+);$", text, re.M)}
    assert drawn == set(edges)
    assert not any(a == 0 for a, _ in drawn)
    assert not any(nodes[b].kind == "param" for _, b in drawn)
    assert 'label="tiny \\"GPT\\""' in text
    small = collapse(nodes, edges)
    text = to_dot(*small, norms)
    block = next(line for line in text.splitlines() if 'label="blocks.0' in line)
    expected = math.sqrt(sum(v * v for k, v in norms.items() if k.startswith("blocks.0.")))
    assert f"|grad| {expected:.3g}" in block


def test_drawing_the_graph_leaves_the_model_s_gradients_as_they_were(model):
    """A notebook draws the graph, then reads the gradients its own backward left."""
    x = torch.randint(0, VOCAB, (2, 8))
    model(x, x)[1].backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    dot = loss_graph_dot(model, VOCAB)
    assert "|grad|" in dot  # (its own gradients, of another batch, which its title says)
    assert "|grad|: of one batch of random token ids, not the run's text" in dot
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())


@needs_dot
def test_dot_renders_the_full_and_collapsed_graphs(traced, tmp_path):
    *_, nodes, edges = traced
    for graph, name in (((nodes, edges), "full"), (collapse(nodes, edges, 2), "by-module")):
        text = to_dot(*graph, title=name)
        check = subprocess.run(["dot", "-Tcanon"], input=text, capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stderr
        paths = render(text, tmp_path / name)
        assert [p.name for p in paths] == [f"{name}.dot", f"{name}.svg", f"{name}.png"]
        assert (tmp_path / f"{name}.dot").read_text() == text
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
        svg = ET.parse(tmp_path / f"{name}.svg").getroot()
        titles = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")}
        assert {f"n{n.id}" for n in graph[0]} <= titles
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_without_dot_only_dot_is_written_and_unknown_formats_refused(traced, tmp_path, monkeypatch):
    *_, nodes, edges = traced
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    text = to_dot(*collapse(nodes, edges))
    with pytest.raises(GraphvizMissing) as info:
        render(text, tmp_path / "out" / "graph", formats=("png",))
    message = str(info.value)
    assert isinstance(info.value, MiniGPTError) and "\n" not in message
    assert "apt install graphviz" in message and "brew install graphviz" in message
    assert info.value.written == [tmp_path / "out" / "graph.dot"]
    assert (tmp_path / "out" / "graph.dot").read_text() == text
    assert not (tmp_path / "out" / "graph.png").exists()
    (tmp_path / "out" / "graph.png").write_bytes(b"an earlier graph's picture")
    with pytest.raises(GraphvizMissing, match=r"graph.dot \(and removed the older graph.png\);"):
        render("digraph {}", tmp_path / "out" / "graph", formats=("png",))
    assert not (tmp_path / "out" / "graph.png").exists()  # not left beside another .dot
    assert render(text, tmp_path / "only", formats=("dot",)) == [tmp_path / "only.dot"]
    with pytest.raises(MiniGPTError, match="'jpeg'"):
        render("digraph {}", tmp_path / "g", formats=("jpeg",))
    assert not (tmp_path / "g.dot").exists()


def test_without_dot_every_stale_picture_goes_not_only_those_asked_for(tmp_path, monkeypatch):
    """The .dot is of a new graph: an older graph's SVG or PDF beside it is as stale as its
    PNG, though this call asked for a PNG only."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for f in FORMATS:
        (tmp_path / f"graph.{f}").write_bytes(b"an earlier graph's picture")
    with pytest.raises(GraphvizMissing) as info:
        render("digraph {}", tmp_path / "graph", formats=("png",))
    assert sorted(p.name for p in tmp_path.glob("graph.*")) == ["graph.dot"]
    assert all(f"graph.{f}" in str(info.value) for f in FORMATS)


def test_show_loss_graph_without_dot_says_how_in_one_line(monkeypatch, tmp_path):
    pytest.importorskip("graphviz")
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on it
    with pytest.raises(GraphvizMissing) as info:
        show_loss_graph(MiniGPT(65), 65)
    assert "\n" not in str(info.value) and "apt install graphviz" in str(info.value)


def test_show_loss_graph_without_the_graphviz_package_says_how_in_one_line(monkeypatch):
    """Not a bare ImportError, nor the .dot file that render's hint names: show writes none."""
    monkeypatch.setitem(sys.modules, "graphviz", None)  # as if it were not installed
    with pytest.raises(MiniGPTError) as info:
        show_loss_graph(MiniGPT(65), 65)
    assert str(info.value) == ("showing the graph needs the graphviz package: pip install "
                               "'minigpt-loop[notebook]' (and Graphviz's dot: apt install "
                               "graphviz / brew install graphviz)")


def fake_dot(folder, script: str):
    """A folder holding a `dot` that runs the shell `script` instead of Graphviz."""
    folder.mkdir()
    (folder / "dot").write_text(f"#!/bin/sh\n{script}\n")
    (folder / "dot").chmod(0o755)
    return folder


@pytest.mark.parametrize(("script", "said"), [
    ("echo 'Error: out of memory' >&2; echo 'and a second line' >&2; exit 1",
     "Error: out of memory"),  # its first line
    ("exit 3", "no message"),
], ids=["its-first-line", "silent"])
def test_a_dot_that_fails_is_one_line_and_leaves_only_the_dot(tmp_path, monkeypatch, script,
                                                                 said):
    monkeypatch.setenv("PATH", str(fake_dot(tmp_path / "bin", script)))
    with pytest.raises(MiniGPTError) as info:
        render("digraph {}", tmp_path / "graph", formats=("png",))
    assert str(info.value) == f"dot could not render {tmp_path / 'graph.png'}: {said}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "graph.dot"]  # no temporary


def test_a_dot_that_hangs_is_stopped_in_one_line(tmp_path, monkeypatch):
    """Its limit, 120 s, shortened here to half a second (the message says the real one)."""
    sleep = shutil.which("sleep")  # (found before PATH holds only the fake dot)
    monkeypatch.setenv("PATH", str(fake_dot(tmp_path / "bin", f"exec {sleep} 60")))
    run = subprocess.run

    def hurried(*args, timeout, **kw):
        assert timeout == 120
        return run(*args, timeout=0.5, **kw)

    monkeypatch.setattr(subprocess, "run", hurried)
    with pytest.raises(MiniGPTError) as info:
        render("digraph {}", tmp_path / "graph", formats=("svg",))
    assert str(info.value) == f"dot took more than 120 s to render {tmp_path / 'graph.svg'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "graph.dot"]


def test_trace_names_a_parameter_given_twice_by_its_first_name_and_repeats_no_edge():
    w = torch.ones(3, requires_grad=True)
    nodes, edges = trace((w * w).sum(), {"first": w, "second": w})
    assert [n.name for n in nodes if n.kind == "param"] == ["first"]
    assert len(edges) == len(set(edges)) == 2  # w -> mul (once, though used twice) -> sum


def test_a_module_s_count_is_written_with_commas(traced):
    model, _, _, nodes, edges = traced
    block = next(n for n in collapse(nodes, edges)[0] if n.module == "blocks.0")
    count = sum(p.numel() for p in model.blocks[0].parameters())
    assert count >= 1000 and block.label == f"blocks.0\n{count:,} params"


def test_frames_nest_each_once_up_to_the_limit_and_backslashes_are_escaped():
    two = [Node(0, "x", "op", "a.x", ("a", "a.x")), Node(1, "y", "op", "b.y", ("b", "b.y"))]
    frames = [line.strip() for line in to_dot(two, []).splitlines() if "subgraph" in line]
    assert sorted(frames) == sorted(f'subgraph "cluster_{m}" {{' for m in ("a", "a.x", "b", "b.y"))

    def nodes(n):
        return [Node(i, f"op {i}", "op", "m", ("m",)) for i in range(n)]
    assert 'subgraph "cluster_m"' in to_dot(nodes(FRAME_LIMIT), [])
    assert "subgraph" not in to_dot(nodes(FRAME_LIMIT + 1), [])
    assert 'label="C:\\\\runs\\\\a"' in to_dot(nodes(1), [], title="C:\\runs\\a")
