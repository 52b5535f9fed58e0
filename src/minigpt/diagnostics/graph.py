"""The computation graph of a loss: what autograd recorded, walked, grouped and drawn.

    loss, params = loss_graph(model, vocab_size)        # one forward, modules recorded
    nodes, edges = trace(loss, params)                  # every autograd node (a pure walk)
    small = collapse(nodes, edges, depth=1)             # one node per module
    render(to_dot(*small, title="MiniGPT loss"), "out/graph")  # graph.dot, .svg, .png

Nodes are numbered from 0, the root (the loss); edges are (input, consumer) pairs, the way data
flows in the forward pass (parameters -> ... -> loss), the reverse of the way backward() walks.

Autograd nodes do not know which module made them, so `record_modules` finds out while the
forward runs: module hooks keep a stack of the running modules, and a TorchFunctionMode sees
every torch call and tags the autograd nodes the call just created (the untagged ones behind
its outputs, including internal ones such as a Linear's transpose) with the running modules'
paths (the scope, outermost first) and the call's name, in the node's `metadata`; `trace` only
reads them back. This is exact, unlike guessing from the nearest parameter: a residual add
belongs to its block, softmax-attention to `attn`, GELU to `ff.1`, and the model's own calls
(the embedding sum, `cross_entropy`) to no module, which `collapse` keeps as one node per call.
A tensor with autograd history from before the recording is claimed by the first call using it.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from minigpt.errors import MiniGPTError
from minigpt.files import atomic_path, atomic_write_text

SCOPE_KEY = "minigpt_scope"  # grad_fn.metadata keys written by record_modules
CALL_KEY = "minigpt_call"
INSTALL_DOT = "apt install graphviz / brew install graphviz"  # Graphviz's dot, the program
INSTALL_HINT = f"install Graphviz to render it ({INSTALL_DOT}), or open the .dot file in any " \
               "Graphviz viewer"
FORMATS = ("svg", "png", "pdf")
FRAME_LIMIT = 100
STYLES = {"param": ("box", "filled", "#cfe2ff"), "tensor": ("box", "filled", "#e9ecef"),
          "op": ("ellipse", "filled", "#fff3cd"), "module": ("box", "filled,rounded", "#d1e7dd"),
          "root": ("doubleoctagon", "filled", "#f8d7da")}  # kind: (shape, style, fill colour)


@dataclass(frozen=True)
class Node:
    """One node of the graph.

    kind: "op" (an autograd node), "param" (a parameter's AccumulateGrad), "tensor" (another
    leaf that requires grad) or, after `collapse`, "module". scope: the modules whose forward
    was running, outermost first (("blocks.0", "blocks.0.ff", "blocks.0.ff.0")); () for the
    model's own forward; None when `record_modules` did not record it. module: the innermost
    of them ("" for the model's own forward; for a param, the module owning it). call: for an
    op, the torch call that made it ("add#3"). params: the parameter names the node stands for.
    """

    id: int
    label: str
    kind: str
    module: str | None = None
    scope: tuple[str, ...] | None = None
    name: str | None = None
    shape: tuple[int, ...] | None = None
    call: str | None = None
    params: tuple[str, ...] = ()


Edge = tuple[int, int]


class _TagCalls(TorchFunctionMode):
    """Writes the running module's path and the call's name into new autograd nodes."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack = stack  # shared with the module hooks
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        scope = tuple(p for p in self.stack if p)
        call = f"{getattr(func, '__name__', 'op').strip('_')}#{self.calls}"
        todo = [t.grad_fn for t in _tensors(out)]  # and the untagged nodes behind: this call's
        while todo:
            fn = todo.pop()
            if fn is None or SCOPE_KEY in fn.metadata or type(fn).__name__ == "AccumulateGrad":
                continue
            fn.metadata[SCOPE_KEY], fn.metadata[CALL_KEY] = scope, call
            todo.extend(nxt for nxt, _ in fn.next_functions)
        return out


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _tensors(item)] if isinstance(out, (tuple, list)) else []


@contextmanager
def record_modules(model: nn.Module):
    """While inside, every autograd node the model's forward creates is tagged with the module
    that ran it and the torch call that made it (see the module docstring)."""
    stack: list[str] = []  # the paths of the modules running; the model's own is ""

    def leave(module, args, out) -> None:  # a hook returning a value would replace `out`
        stack.pop()

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda m, args, path=path: stack.append(path)))
        handles.append(module.register_forward_hook(leave))
    try:
        with _TagCalls(stack):
            yield
    finally:
        for h in handles:
            h.remove()


def loss_graph(model: nn.Module, vocab_size: int, T: int = 8, seed: int = 0,
               batch_size: int = 2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the model once on a random batch of token ids (int64, from its own generator seeded
    with `seed`) with next-token targets, T of them cut to the model's block size, recording
    modules; return (loss, named parameters), ready for `trace`. The model stays in the mode it
    is in (train or eval)."""
    emb = getattr(model, "token_emb", None)
    if vocab_size < 1 or (emb is not None and vocab_size > emb.num_embeddings):
        raise MiniGPTError(f"vocab_size {vocab_size} does not fit the model's token embedding")
    if T < 1 or batch_size < 1:
        raise MiniGPTError(f"T ({T}) and batch_size ({batch_size}) must be at least 1")
    T = min(T, getattr(model, "block_size", T))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, T + 1), generator=gen, dtype=torch.int64)
    ids = ids.to(next(model.parameters()).device)
    with torch.enable_grad(), record_modules(model):
        _, loss = model(ids[:, :-1], ids[:, 1:])
    return loss, dict(model.named_parameters())


def trace(root: torch.Tensor,
          params: Mapping[str, torch.Tensor] | None = None) -> tuple[list[Node], list[Edge]]:
    """Walk root.grad_fn and its next_functions: one Node per autograd node (shared ones once),
    root first, and (input, consumer) edges. Leaves found in `params` are "param" nodes named
    after it; the tags `record_modules` wrote become the nodes' scope, module and call."""
    if not isinstance(root, torch.Tensor) or root.grad_fn is None:
        raise MiniGPTError("the tensor has no autograd history (grad_fn is None): compute it "
                           "from parameters that require grad, outside torch.no_grad()")
    names: dict[int, str] = {}
    for name, p in (params or {}).items():
        names.setdefault(id(p), name)  # a tied parameter keeps its first name
    ids, nodes, edges = {root.grad_fn: 0}, [], []
    queue = [root.grad_fn]
    for fn in queue:  # breadth-first; the queue grows while it is read
        nodes.append(_node(ids[fn], fn, names))
        for nxt, _ in fn.next_functions:
            if nxt is not None:
                if nxt not in ids:
                    ids[nxt] = len(ids)
                    queue.append(nxt)
                edges.append((ids[nxt], ids[fn]))
    return _scope_params(nodes), list(dict.fromkeys(edges))


def _node(i: int, fn, names: Mapping[int, str]) -> Node:
    if type(fn).__name__ != "AccumulateGrad":
        label = re.sub(r"Backward\d*$", "", type(fn).__name__)
        scope = fn.metadata.get(SCOPE_KEY)
        module = None if scope is None else (scope[-1] if scope else "")
        return Node(i, label, "op", module, scope, call=fn.metadata.get(CALL_KEY))
    shape = tuple(fn.variable.shape)
    size = "(" + ", ".join(map(str, shape)) + ")"
    name = names.get(id(fn.variable))
    if name is None:
        return Node(i, f"tensor {size}", "tensor", shape=shape)
    return Node(i, f"{name} {size}", "param", name.rpartition(".")[0], None, name, shape,
                params=(name,))


def _scope_params(nodes: list[Node]) -> list[Node]:
    """Give each param the scope of the ops its own module ran (when they were recorded)."""
    scopes = {n.module: n.scope for n in nodes if n.kind == "op" and n.scope}
    return [replace(n, scope=scopes.get(n.module)) if n.kind == "param" else n for n in nodes]


def collapse(nodes: Sequence[Node], edges: Sequence[Edge],
             depth: int = 1) -> tuple[list[Node], list[Edge]]:
    """One node per module `depth` calls deep (1: token_emb, blocks.0, ..., lm_head; 2: also
    blocks.0.ln1, blocks.0.attn, ...), holding its parameters and every op its forward (and its
    sub-modules') ran, by the tags `record_modules` wrote. Ops a shallower module ran itself (the
    embedding sum, cross_entropy; at depth 2 a block's residual adds) become one node per torch
    call, so the picture stays a chain without cycles; a module without sub-modules stays one
    node at any depth; unrecorded nodes stay as they are. The root's group comes first."""
    if depth < 1:
        raise MiniGPTError(f"collapse depth must be at least 1, got {depth}")
    parents = {n.scope[:k] for n in nodes if n.scope for k in range(len(n.scope))}
    groups: dict[tuple, list[Node]] = {}
    for node in nodes:
        groups.setdefault(_group_key(node, depth, parents), []).append(node)
    group_of = {m.id: i for i, members in enumerate(groups.values()) for m in members}
    out = [_group_node(key, i, members) for i, (key, members) in enumerate(groups.items())]
    out_edges = [(group_of[a], group_of[b]) for a, b in edges if group_of[a] != group_of[b]]
    return out, list(dict.fromkeys(out_edges))


def _group_key(node: Node, depth: int, parents: set[tuple[str, ...]]) -> tuple:
    """("module", path), ("call", call) or ("node", id): the group `node` falls in."""
    if node.scope is not None and len(node.scope) >= depth:
        return ("module", node.scope[depth - 1])
    if node.scope and node.scope not in parents:  # a module without sub-modules
        return ("module", node.scope[-1])
    if node.kind == "op" and node.scope is not None and node.call:
        return ("call", node.call)
    return ("node", node.id)


def _group_node(key: tuple, i: int, members: list[Node]) -> Node:
    """The collapsed node numbered i for one group."""
    first = replace(members[0], id=i)
    if key[0] == "node":
        return first
    if key[0] == "call":
        return replace(first, label=key[1].partition("#")[0])
    params = tuple(p for m in members for p in m.params)
    count = sum(math.prod(m.shape) for m in members if m.kind == "param")
    label = key[1] if not count else f"{key[1]}\n{count:,} params"
    scope = first.scope[:first.scope.index(key[1]) + 1]
    return Node(i, label, "module", key[1], scope, params=params)


def gradient_norms(params: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """{name: L2 norm of its .grad} for the parameters that have one (after backward)."""
    return {k: float(p.grad.detach().norm()) for k, p in params.items() if p.grad is not None}


def to_dot(nodes: Sequence[Node], edges: Sequence[Edge],
           grad_norms: Mapping[str, float] | None = None, title: str | None = None) -> str:
    """DOT text, data flowing top to bottom into the root. Parameters are blue boxes (name and
    shape, and the gradient norm when grad_norms has it), ops yellow ellipses, modules green
    boxes (with the norm of their parameters' gradients), the root red. In a graph of at most
    FRAME_LIMIT nodes, nodes are drawn inside a frame per module (a cluster), nested 2 calls
    deep; a larger graph has no frames (dot lays a large framed graph with residual
    connections out as a wide staircase; unframed it is one readable column)."""
    cluster_depth = 2 if len(nodes) <= FRAME_LIMIT else 0
    # {scope: the nodes drawn directly in its frame}; a collapsed module is drawn in its
    # parent's frame, so blocks.0.attn sits in the frame of blocks.0
    tree: dict[tuple[str, ...], list[Node]] = {(): []}
    for node in nodes:
        scope = node.scope or ()
        scope = scope[:-1] if node.kind == "module" else scope
        tree.setdefault(scope[:cluster_depth], []).append(node)
    lines = ["digraph loss_graph {",
             '  graph [rankdir=TB, fontname="Helvetica", fontsize=16, nodesep=0.25, '
             'ranksep=0.35, labelloc=t' + (f', label="{_escape(title)}"' if title else "")
             + "];",
             '  node [fontname="Helvetica", fontsize=11, style="filled", penwidth=1];',
             '  edge [color="#6c757d", arrowsize=0.6];',
             *_emit_cluster((), tree, grad_norms or {}, "  "),
             *(f"  n{a} -> n{b};" for a, b in edges), "}"]
    return "\n".join(lines) + "\n"


def _emit_cluster(scope: tuple[str, ...], tree: dict[tuple[str, ...], list[Node]],
                  norms: Mapping[str, float], indent: str) -> list[str]:
    """The DOT lines for one frame: its nodes, then its child frames, nested."""
    lines = [indent + _node_line(n, norms) for n in tree.get(scope, [])]
    children = sorted({s[:len(scope) + 1] for s in tree
                       if len(s) > len(scope) and s[:len(scope)] == scope})
    for child in children:
        name = _escape(child[-1])
        lines += [f'{indent}subgraph "cluster_{name}" {{',
                  f'{indent}  label="{name}"; style="rounded"; color="#adb5bd"; fontsize=12;',
                  *_emit_cluster(child, tree, norms, indent + "  "), indent + "}"]
    return lines


def _node_line(node: Node, norms: Mapping[str, float]) -> str:
    shape, style, colour = STYLES["root" if node.id == 0 else node.kind]
    label = node.label
    known = [norms[p] for p in node.params if p in norms]  # a module: the norm of all its grads
    if known:
        label += f"\n|grad| {math.sqrt(sum(v * v for v in known)):.3g}"
    return (f'n{node.id} [label="{_escape(label)}", shape={shape}, style="{style}", '
            f'fillcolor="{colour}"];')


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class GraphvizMissing(MiniGPTError):
    """`dot` is not installed: only the .dot file was written (its path is in `written`)."""

    def __init__(self, message: str, written: list[Path]):
        super().__init__(message)
        self.written = written


def render(dot_text: str, out: str | Path, formats: Sequence[str] = ("svg", "png")) -> list[Path]:
    """Write `<out>.dot` and, with Graphviz's `dot`, `<out>.<format>` for each format; return
    the paths written. Without `dot`: raise GraphvizMissing (a MiniGPTError saying how to
    install Graphviz) after writing the .dot. Every file is written atomically."""
    bad = [f for f in formats if f not in FORMATS and f != "dot"]
    if bad:
        raise MiniGPTError(f"cannot render {bad[0]!r}: the formats are {', '.join(FORMATS)}")
    out = Path(out)
    if out.suffix[1:] in (*FORMATS, "dot"):  # graph.svg: the name, not graph.svg.svg
        out = out.with_suffix("")
    dot_path = out.with_name(out.name + ".dot")
    atomic_write_text(dot_path, dot_text)
    written = [dot_path]
    wanted = [f for f in dict.fromkeys(formats) if f != "dot"]
    exe = shutil.which("dot")
    if wanted and exe is None:  # pictures of an earlier graph would not be this .dot's
        stale = [t for f in FORMATS if (t := out.with_name(f"{out.name}.{f}")).is_file()]
        for path in stale:
            path.unlink()
        removed = f" (and removed the older {', '.join(p.name for p in stale)})" if stale else ""
        raise GraphvizMissing(f"Graphviz's dot is not installed: wrote only {dot_path}{removed}; "
                              + INSTALL_HINT, written)
    for fmt in wanted:
        target = out.with_name(f"{out.name}.{fmt}")
        with atomic_path(target) as tmp:
            try:
                result = subprocess.run([exe, f"-T{fmt}", str(dot_path), "-o", str(tmp)],
                                        capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                raise MiniGPTError(f"dot took more than 120 s to render {target}") from None
            if result.returncode != 0:
                first = (result.stderr.strip().splitlines() or ["no message"])[0]
                raise MiniGPTError(f"dot could not render {target}: {first}")
        written.append(target)
    return written


def loss_graph_dot(model: nn.Module, vocab_size: int, depth: int = 0) -> str:
    """The whole path from token ids to the loss, as DOT text: one forward and backward on a
    random batch, every node (depth 0) or one per module `depth` calls deep, parameters
    annotated with their gradient norms (the model's own gradients, if any, are left as they
    were: a notebook's next cell may read them)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise MiniGPTError(f"depth must be a whole number >= 0 (0: every node), got {depth!r}")
    kept = {p: p.grad for p in model.parameters()}
    model.zero_grad(set_to_none=True)
    loss, params = loss_graph(model, vocab_size)
    loss.backward()
    norms = gradient_norms(params)
    nodes, edges = trace(loss, params)
    if depth:
        nodes, edges = collapse(nodes, edges, depth=depth)
    title = (f"loss -> embeddings ({'per module' if depth else 'every autograd node'}); "
             f"|grad|: of one batch of random token ids, not the run's text")
    for p, grad in kept.items():
        p.grad = grad
    return to_dot(nodes, edges, norms, title=title)


def draw_loss_graph(model: nn.Module, vocab_size: int, out: str | Path, depth: int = 0,
                    formats: Sequence[str] = ("svg", "png")) -> list[Path]:
    """`loss_graph_dot`, rendered to files (see `render`); returns the files written."""
    return render(loss_graph_dot(model, vocab_size, depth), out, formats)


def show_loss_graph(model: nn.Module, vocab_size: int, depth: int = 1):
    """`loss_graph_dot` as a graphviz.Source, which a notebook draws inline (it needs the
    `graphviz` Python package, pip install graphviz, and Graphviz's dot). Without either,
    GraphvizMissing says how to get it, here rather than when the notebook draws the graph."""
    try:
        import graphviz
    except ImportError:
        raise MiniGPTError("showing the graph needs the graphviz package: pip install "
                           f"'minigpt-loop[notebook]' (and Graphviz's dot: {INSTALL_DOT})"
                           ) from None
    if shutil.which("dot") is None:  # graphviz.Source would fail only when it is drawn
        raise GraphvizMissing("the computation graph is drawn by Graphviz's dot, which is not "
                              f"installed: {INSTALL_DOT} / conda install graphviz (on Colab: "
                              "!apt-get install -y graphviz)", [])
    return graphviz.Source(loss_graph_dot(model, vocab_size, depth))
