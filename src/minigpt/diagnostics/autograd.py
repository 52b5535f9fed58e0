"""Autograd by example: differentiate a small formula with PyTorch and explain every step.

    report = explain("x**2 + 3*x + 1", {"x": 2.0})   # value 11, dy/dx = 7
    print(format_report(report))                      # the backward graph, node by node

`parse_expr` checks the formula's `ast` against a whitelist (numbers, variables, + - * / **,
unary + and -, parentheses, one-argument calls to FUNCTIONS) and never evaluates it with Python.
Each operation runs as a torch op on float64 scalars; its grad_fn's public `metadata` records the
sub-expression and the operands' values. After `y.backward()` the graph is walked through the
public Node API (next_functions, register_hook): per node, the gradient received, the local
derivative (formula and number, by this module's own rules in OPS: PyTorch's saved tensors are
private and never read) and the gradients sent on. A central difference checks every gradient.
"""

from __future__ import annotations

import ast
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain, count, zip_longest

import torch
from torch.autograd.graph import Node, get_gradient_edge

from minigpt.errors import MiniGPTError

Rule = tuple[str, Callable[..., float]]  # one local derivative: (formula, value)
Op = tuple[Callable[..., torch.Tensor], tuple[Rule, ...]]

# Each operation: its torch function and a Rule per input of its grad_fn, in order. Formulas
# name the operands {a}, {b} ({pa}, {pb}: parenthesised where needed); "**n" is a power with a
# constant exponent {n}, and {pa_n1} is a**(n - 1). Values are functions of all the operands.
OPERATORS: dict[str, Op] = {
    "+": (torch.add, (("1", lambda a, b: 1.0), ("1", lambda a, b: 1.0))),
    "-": (torch.sub, (("1", lambda a, b: 1.0), ("-1", lambda a, b: -1.0))),
    "*": (torch.mul, (("{b}", lambda a, b: b), ("{a}", lambda a, b: a))),
    "/": (torch.div, (("1/{pb}", lambda a, b: 1 / b), ("-{pa}/{pb}**2", lambda a, b: -a / b**2))),
    "**": (torch.pow, (("{pb}*{pa}**({b} - 1)", lambda a, b: b * a ** (b - 1)),
                       ("{pa}**{pb}*log({a})", lambda a, b: a**b * math.log(a)))),
    "**n": (torch.pow, (("{n}*{pa_n1}", lambda a, n: n * a ** (n - 1)),)),
    "neg": (torch.neg, (("-1", lambda a: -1.0),)),
}
FUNCTIONS: dict[str, Op] = {
    "sin": (torch.sin, (("cos({a})", math.cos),)),
    "cos": (torch.cos, (("-sin({a})", lambda a: -math.sin(a)),)),
    "tan": (torch.tan, (("1 + tan({a})**2", lambda a: 1 + math.tan(a) ** 2),)),
    "exp": (torch.exp, (("exp({a})", math.exp),)),
    "log": (torch.log, (("1/{pa}", lambda a: 1 / a),)),
    "sqrt": (torch.sqrt, (("1/(2*sqrt({a}))", lambda a: 1 / (2 * math.sqrt(a))),)),
    "tanh": (torch.tanh, (("1 - tanh({a})**2", lambda a: 1 - math.tanh(a) ** 2),)),
    # s*(1 - s) as torch computes it from s = sigmoid(a), here without overflow (_sigmoid)
    "sigmoid": (torch.sigmoid, (("sigmoid({a})*(1 - sigmoid({a}))",
                                 lambda a: _sigmoid(a) * (1 - _sigmoid(a))),)),
    "relu": (torch.relu, (("1 if {a} > 0 else 0", lambda a: float(a > 0)),)),
    "abs": (torch.abs, (("sign({a})", lambda a: float((a > 0) - (a < 0))),)),
}
OPS = OPERATORS | FUNCTIONS


def _sigmoid(a: float) -> float:
    """1/(1 + exp(-a)), exp never overflowing: at -40, 4.2e-18 (not 0, as 1 - tanh(-20)**2 is)."""
    e = math.exp(-abs(a))
    return 1 / (1 + e) if a >= 0 else e / (1 + e)


_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_SYMBOLS = {ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<", ast.BitOr: "|",
            ast.RShift: ">>", ast.BitXor: "^", ast.BitAnd: "&", ast.Invert: "~", ast.Not: "not"}
_KINDS = {ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "lambda"}
_ALLOWED = "use numbers, variables, + - * / **, parentheses and " + ", ".join(FUNCTIONS)
MAX_LENGTH = 1000
MORE_STEPS = 30  # finite-difference steps below 1e-12, for a variable near 0 (|v| >= 1e-30)
MAX_DEPTH = 100  # levels of nesting: the checks and the graph walk recurse once or more per level


@dataclass(frozen=True)
class Term:
    """A checked formula or a piece of one. op: "num", "var" or a key of OPS; text: the piece as
    the lesson writes it (x**2 + 3*x; for "var", the name); number: the value of a "num"."""

    op: str
    text: str
    args: tuple[Term, ...] = ()
    number: float = 0.0

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables, in order of first appearance."""
        if self.op == "var":
            return (self.text,)
        return tuple(dict.fromkeys(name for arg in self.args for name in arg.variables))


def parse_expr(text: str) -> Term:
    """Check `text` against the whitelist and return it as a Term; never executes anything."""
    if not isinstance(text, str) or not text.strip():
        raise MiniGPTError("the expression is empty: give a formula such as x**2 + 3*x + 1")
    if len(text) > MAX_LENGTH:
        raise MiniGPTError(f"the expression has {len(text)} characters; at most {MAX_LENGTH}")
    too_deep = (f"the expression is nested too deeply: at most {MAX_DEPTH} levels, each operator"
                f" of a chain one more (x + x + ... + x: at most {MAX_DEPTH} terms)")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        hint = ""  # what a learner writes on paper, 2x and x²
        if e.msg == "invalid decimal literal":
            hint = " (multiplication is written out: 2*x, not 2x)"
        elif e.msg.startswith("invalid character") and re.search("[²³¹⁰⁴-⁹]", text):
            hint = " (a power is written x**2, not x²)"
        raise MiniGPTError(f"cannot read the expression {text.strip()!r}: {e.msg}{hint}") from None
    except (RecursionError, MemoryError):  # the parser's own limits, which vary by version
        raise MiniGPTError(too_deep) from None
    if _depth(tree) > MAX_DEPTH:  # a fixed limit, not Python's recursion limit (IPython raises it)
        raise MiniGPTError(too_deep)
    return _term(tree)


def _depth(tree: ast.expr) -> int:
    """How many expressions deep the tree goes (x: 1, -x: 2), counted without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack += [(child, depth + 1) for child in ast.iter_child_nodes(node)
                  if isinstance(child, ast.expr)]
    return deepest


def _term(node: ast.expr) -> Term:
    """The Term for a syntax tree, or a MiniGPTError naming the first piece not allowed."""
    text = re.sub(r" (\*\*|\*|/) ", r"\1", ast.unparse(node))  # x**2 + 3*x, not x ** 2 + 3 * x
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise MiniGPTError(f"the constant {text[:40]} is not allowed: only real numbers are")
        try:
            number = float(node.value)
        except OverflowError:  # an integer of hundreds of digits
            raise MiniGPTError(f"the constant {text[:40]}... is too large for a float") from None
        if not math.isfinite(number):  # a literal such as 1e400, which Python reads as inf
            raise MiniGPTError("a constant in the expression is too large for a float (the "
                               "largest is about 1.8e308)")
        return Term("num", text, number=number)
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise MiniGPTError(f"{node.id!r} is a function: call it, as {node.id}(x)")
        if not re.fullmatch(r"[A-Za-z]\w*", node.id):
            raise MiniGPTError(f"the variable name {node.id!r} is not allowed: use letters, "
                               "digits and _, starting with a letter")
        return Term("var", node.id)
    if isinstance(node, (ast.BinOp, ast.UnaryOp)) and type(node.op) in _SYMBOLS:
        raise MiniGPTError(f"operator {_SYMBOLS[type(node.op)]!r} is not allowed; {_ALLOWED}")
    if isinstance(node, ast.BinOp):
        return Term(_BINARY[type(node.op)], text, (_term(node.left), _term(node.right)))
    if isinstance(node, ast.UnaryOp):  # + or -
        operand = _term(node.operand)
        return operand if isinstance(node.op, ast.UAdd) else Term("neg", text, (operand,))
    if isinstance(node, ast.Call):
        name = ast.unparse(node.func)
        one_arg = (len(node.args) == 1 and not node.keywords
                   and not isinstance(node.args[0], ast.Starred))
        if name not in FUNCTIONS:  # 2(x + 1), x(x + 1), (x + 1)(x - 1): a product on paper
            product = not isinstance(node.func, (ast.Name, ast.Attribute)) or len(name) == 1
            hint = (f" (for a product write {_p(name)}*({ast.unparse(node.args[0])}))"
                    if product and one_arg else "")
            raise MiniGPTError(f"calling {name!r} is not allowed; the functions are "
                               + ", ".join(FUNCTIONS) + hint)
        if not one_arg:
            raise MiniGPTError(f"{name}() takes exactly one argument, as {name}(x)")
        return Term(name, text, (_term(node.args[0]),))
    raise MiniGPTError(f"{_KINDS.get(type(node), 'syntax')} {text[:40]!r} is not allowed; "
                       + _ALLOWED)


def _evaluate(term: Term, at: Mapping[str, torch.Tensor | float], strict: bool) -> torch.Tensor:
    """The formula's value as a float64 0-d tensor computed with torch ops, each grad_fn tagged
    with op, expr, texts and values. strict: a MiniGPTError at the first non-finite piece."""
    if term.op in ("num", "var"):
        value = term.number if term.op == "num" else at[term.text]
        return torch.as_tensor(value, dtype=torch.float64)
    op, args = term.op, [_evaluate(arg, at, strict) for arg in term.args]
    values = [a.item() for a in args]
    if op == "**" and not args[1].requires_grad:  # a number exponent: PowBackward0
        op, args = "**n", [args[0], values[1]]
    result = OPS[op][0](*args)
    if result.grad_fn is not None:
        texts = [arg.text for arg in term.args]
        result.grad_fn.metadata.update(op=op, expr=term.text, texts=texts, values=values)
    if strict and not math.isfinite(result.item()):
        if op == "/" and values[1] == 0:
            raise MiniGPTError(f"division by zero in {term.text!r} at {_where(at)}")
        raise MiniGPTError(f"{term.text!r} is not finite ({result.item()}) at {_where(at)}")
    return result


def _where(at: Mapping[str, torch.Tensor | float]) -> str:
    values = {k: torch.as_tensor(v, dtype=torch.float64).item() for k, v in at.items()}
    return ", ".join(f"{k}={_num(v)}" for k, v in values.items())  # (float32 made 1e-200 0)


@dataclass(frozen=True)
class GradNode:
    """One node of the backward graph, numbered in topological order (y.grad_fn is 0). op: its
    class name (PowBackward0, ..., AccumulateGrad); expr: the sub-expression it differentiates
    (a leaf: the variable); local: a line per input that needs a gradient, its local derivative;
    inputs: the node index of each next_function (None: a constant); grad_in: the gradient it
    received, dy/d(expr); grads_out: the gradient it sent along each input."""

    index: int
    op: str
    expr: str
    local: tuple[str, ...]
    inputs: tuple[int | None, ...]
    grad_in: float | None
    grads_out: tuple[float | None, ...]


@dataclass(frozen=True)
class GradCheck:
    """An autograd gradient against the central difference (f(v+h) - f(v-h)) / 2h."""

    variable: str
    autograd: float
    numeric: float
    abs_error: float
    h: float
    kink: tuple[float, float] | None = None  # the slopes (left, right) at a kink, else None


@dataclass(frozen=True)
class AutogradReport:
    """What `explain` found: y's value, dy/dv per variable, the backward graph and the checks."""

    expr: str
    at: dict[str, float]
    value: float
    gradients: dict[str, float]
    graph: tuple[GradNode, ...]
    checks: tuple[GradCheck, ...]

    @property
    def max_abs_error(self) -> float:
        return max((c.abs_error for c in self.checks), default=0.0)


def explain(expr_text: str = "x**2 + 3*x + 1",
            at: Mapping[str, float] | None = None) -> AutogradReport:
    """Evaluate `expr_text` at `at` (default: x = 2, the lesson's, for an expression of x), run
    `y.backward()` and explain it."""
    expr = parse_expr(expr_text)
    point = _point(expr, ({"x": 2.0} if "x" in expr.variables else {}) if at is None else at)
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in point.items()}
    y = _evaluate(expr, leaves, strict=True)
    order = _topological(y.grad_fn)
    seen = _record_gradients(order)
    y.backward()
    gradients = {k: 0.0 if t.grad is None else t.grad.item() for k, t in leaves.items()}
    for k, g in gradients.items():
        if not math.isfinite(g):
            raise MiniGPTError(f"the gradient d{output_name(point)}/d{k} is not finite ({g}) at "
                               f"{_where(point)}")
    names = {get_gradient_edge(t).node: k for k, t in leaves.items()}  # AccumulateGrad -> name
    checks = tuple(_finite_difference(expr, point, k, gradients[k]) for k in point)
    return AutogradReport(expr.text, point, y.item(), gradients, _graph(order, seen, names), checks)


def output_name(variables: Iterable[str]) -> str:
    """What the report calls the expression's value: y, unless a variable has that name."""
    taken = set(variables)
    names = chain(("y", "f", "g"), (f"y{i}" for i in count()))
    return next(n for n in names if n not in taken)


def _point(expr: Term, at: Mapping[str, float]) -> dict[str, float]:
    """The values of expr's variables, in expr's order: all given, none unknown, finite."""
    variables = expr.variables
    if not variables:
        raise MiniGPTError(f"{expr.text!r} has no variables: there is nothing to differentiate")
    unknown = [name for name in at if name not in variables]
    if unknown:
        raise MiniGPTError(f"unknown variable {unknown[0]!r}: {expr.text!r} uses only "
                           + ", ".join(variables))
    for name in variables:
        value = at.get(name)
        if value is None:
            raise MiniGPTError(f"no value for variable {name!r}: give one, e.g. {name}=2.0")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MiniGPTError(f"the value of {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise MiniGPTError(f"the value of {name} must be finite, got {value}")
    return {name: float(at[name]) for name in variables}


def _topological(root: Node | None) -> list[Node]:
    """The nodes reachable from root, each before the nodes it sends gradients to (reverse
    post-order of a depth-first walk over next_functions); a shared node once."""
    order: list[Node] = []
    done: set[Node] = set()

    def visit(fn: Node | None) -> None:
        if fn is not None and fn not in done:
            done.add(fn)
            for nxt, _ in fn.next_functions:
                visit(nxt)
            order.append(fn)

    visit(root)
    return order[::-1]


def _record_gradients(order: list[Node]) -> dict[Node, tuple]:
    """Hook every node: backward() leaves seen[node] = (gradient received, gradients sent)."""
    seen: dict[Node, tuple] = {}
    for fn in order:
        def hook(sent: tuple, received: tuple, fn: Node = fn) -> None:  # inputs, outputs
            seen[fn] = (_float(received[0]), tuple(_float(g) for g in sent))
        fn.register_hook(hook)
    return seen


def _float(t: torch.Tensor | None) -> float | None:
    return None if t is None else t.item()


def _graph(order: list[Node], seen: dict, names: dict[Node, str]) -> tuple[GradNode, ...]:
    index = {fn: i for i, fn in enumerate(order)}
    graph = []
    for i, fn in enumerate(order):
        grad_in, grads_out = seen.get(fn, (None, ()))
        inputs = tuple(index.get(nxt) for nxt, _ in fn.next_functions)
        expr, local = (names[fn], ()) if fn in names else (fn.metadata["expr"], _local(fn, index))
        graph.append(GradNode(i, type(fn).__name__, expr, local, inputs, grad_in, grads_out))
    return tuple(graph)


def _local(fn: Node, index: dict[Node, int]) -> tuple[str, ...]:
    """A line per input that needs a gradient: d(out)/d(input) = formula = number; a long
    sub-expression is written as its node's number, [j]."""
    meta, nexts = fn.metadata, [nxt for nxt, _ in fn.next_functions]
    texts = [t if len(t) <= 24 or j is None else f"[{j}]"
             for t, j in zip_longest(meta["texts"], [index.get(n) for n in nexts])]
    out = f"[{index[fn]}]" if len(meta["expr"]) > 24 else f"({meta['expr']})"
    fields = _fields(texts, meta["values"])
    lines = []
    # x*x: each line differentiates by one operand, the other held (d(x*x)/dx is 2x, not x)
    sides = (" (left)", " (right)") if len(texts) == 2 and texts[0] == texts[1] else ("", "")
    for nxt, wrt, side, (formula, rule) in zip(nexts, texts, sides, OPS[meta["op"]][1],
                                               strict=False):
        if nxt is not None:
            formula, value = formula.format_map(fields), _value(rule, meta["values"])
            wrt = wrt if re.fullmatch(r"\w+|\[\d+\]", wrt) else f"({wrt})"
            same = formula == _num(value)
            lines.append(f"d{out}/d{wrt}{side} = {formula}"
                         + ("" if same else f" = {_num(value)}"))
    return tuple(lines)


def _fields(texts: list[str], values: list[float]) -> dict[str, str]:
    """What the formulas of OPS name: a, pa and, for two operands, b, pb, n and pa_n1."""
    fields = {"a": texts[0], "pa": _p(texts[0])}
    if len(texts) == 2:
        power = fields["pa"] if values[1] == 2 else f"{fields['pa']}**{_p(_num(values[1] - 1))}"
        fields.update(b=texts[1], pb=_p(texts[1]), n=_num(values[1]), pa_n1=power)
    return fields


def _value(rule: Callable[..., float], values: list[float]) -> float | None:
    """A rule's number, or None where the arithmetic fails (log of a negative, 1/0)."""
    try:
        return float(rule(*values))
    except (ArithmeticError, ValueError, TypeError):  # TypeError: a complex power
        return None


def _p(text: str) -> str:
    """The text, parenthesised unless it is a name, a number, a call or a node number [j]."""
    atom = text.startswith("[") or isinstance(ast.parse(text, mode="eval").body,
                                              (ast.Name, ast.Constant, ast.Call))
    return text if atom else f"({text})"


def _finite_difference(expr: Term, point: Mapping[str, float], name: str, grad: float) -> GradCheck:
    """(f(v+h) - f(v-h)) / 2h for h = s/10, s/100, ... s/1e12, s = max(1, |v|), and on down to
    |v|/1e12 for a small v (at most 30 more steps: from 1e-30 on), keeping the estimate that
    differs least from the next two smaller steps': there neither truncation (h too large) nor
    rounding (h too small) dominates. (Beside the edge of a domain, log(x) at x = 1e-13, only an
    h below |v| keeps v - h inside it; a larger one gives nan, which never wins.) Estimates can
    agree by chance (near a power of two, v+h and v-h round alike for every tiny h), so none is
    counted closer than its own rounding allows, eps |f| / h. The oracle never sees `grad`."""
    def central(h: float) -> tuple[float, float]:  # (the estimate, its rounding noise)
        up, down = _shifted(expr, point, name, h), _shifted(expr, point, name, -h)
        return (up - down) / (2 * h), sys.float_info.epsilon * max(abs(up), abs(down)) / h

    v = abs(point[name])
    below_one = min(MORE_STEPS, math.floor(-math.log10(v))) if 0 < v < 1 else 0
    steps = [max(1.0, v) * 10.0 ** -k for k in range(1, 13 + below_one)]
    estimates, noise = zip(*(central(h) for h in steps), strict=True)
    spread = [max(abs(a - b), abs(a - c), n) for a, b, c, n in  # (nan would win min: inf)
              zip(estimates, estimates[1:], estimates[2:], noise, strict=False)]
    spread = [d if math.isfinite(d) else math.inf for d in spread]
    best = spread.index(min(spread))
    numeric = estimates[best]
    error = abs(numeric - grad) if math.isfinite(numeric) else math.inf
    return GradCheck(name, grad, numeric, error, steps[best], _kink(expr, point, name, steps[best]))


def _shifted(expr: Term, point: Mapping[str, float], name: str, s: float) -> float:
    """The expression's value with the variable `name` moved by s (no graph)."""
    with torch.no_grad():
        return _evaluate(expr, {**point, name: point[name] + s}, strict=False).item()


def _kink(expr: Term, point: Mapping[str, float], name: str,
          h: float) -> tuple[float, float] | None:
    """The slopes (left, right) where the two sides disagree at h, h/10 and h/100 by as much or
    more each time, above rounding: a kink (abs(x) at 0: -1, 1), whose central difference can
    agree with any subgradient by chance. A smooth f's sides differ by f''h: a tenth per step."""
    def at(s: float) -> float:
        return _shifted(expr, point, name, s)

    gaps, sides, mid = [], (0.0, 0.0), at(0.0)
    for step in (h, h / 10, h / 100):
        up, down = at(step), at(-step)
        sides = ((mid - down) / step, (up - mid) / step)
        noise = 4 * sys.float_info.epsilon * max(abs(up), abs(mid), abs(down)) / step
        gap = abs(sides[1] - sides[0])
        floor = max(1e-5 * max(1.0, *map(abs, sides)), 10 * noise)
        if not (math.isfinite(gap) and gap > floor and (not gaps or gap >= gaps[-1] / 2)):
            return None
        gaps.append(gap)
    return sides


def _num(value: float | None) -> str:
    """A number as a person writes it: 11, 7, 0.5, 1.41421, 1e-12 ("?" for none)."""
    if value is None:
        return "?"
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def format_report(report: AutogradReport) -> str:
    """The report as text for a terminal: value, gradients, the backward graph node by node
    (what each received, its local derivative, what it sent where) and the checks."""
    y = output_name(report.at)
    point = ", ".join(f"{k} = {_num(v)}" for k, v in report.at.items())
    lines = [f"{y} = {report.expr}    at {point}", "", f"value       {y} = {_num(report.value)}"]
    lines += [f"gradient    d{y}/d{k} = {_num(g)}" for k, g in report.gradients.items()]
    lines += ["", f"Backward graph, as {y}.backward() walks it ({y}.grad_fn first, leaves last;",
              f"it starts with d{y}/d{y} = 1 and multiplies by each local derivative):"]
    for node in report.graph:
        lines += _format_node(node, report.graph, y)
    if not report.graph:
        lines.append(f"  ({y} is a variable itself: no operation was recorded)")
    lines += ["", f"Finite-difference check, ({y}(v+h) - {y}(v-h)) / 2h:"]
    for c in report.checks:
        ok = c.abs_error <= 1e-5 * max(1.0, abs(c.autograd))
        start = f"  d{y}/d{c.variable}: autograd {_num(c.autograd)}, numeric "
        if math.isnan(c.numeric):  # no estimate: nothing to agree or disagree with
            lines.append(f"{start}nan: not checked, {y}(v+h) or {y}(v-h) is not a number for "
                         f"every h tried ({c.variable} at the edge of where {y} is defined?)")
            continue
        if c.kink:  # any subgradient may agree with the difference: neither ok nor a mismatch
            lines.append(f"{start}{c.numeric:.10g}: no derivative to check, slope "
                         f"{_num(c.kink[0])} on the left, {_num(c.kink[1])} on the right (a "
                         f"kink or a pole at or beside {c.variable}; autograd takes "
                         f"{_num(c.autograd)})")
            continue
        lines.append(f"{start}{c.numeric:.10g}, |error| {c.abs_error:.2g} (h = {c.h:.2g})  "
                     + ("ok" if ok else "MISMATCH (a kink or a jump near here? or values "
                                           "so large or small that finite differences in "
                                           "float64 cannot see the slope)"))
    return "\n".join(lines)


def _format_node(node: GradNode, graph: tuple[GradNode, ...], y: str) -> list[str]:
    head = f"  [{node.index}] {node.op:<18} {node.expr}"
    if node.op == "AccumulateGrad":  # x.grad: the sum of what the nodes feeding it sent
        parts = [g for other in graph for j, g in zip(other.inputs, other.grads_out, strict=False)
                 if j == node.index and g is not None] or [node.grad_in]
        total = _num(parts[0]) + "".join(f" {'-' if g < 0 else '+'} {_num(abs(g))}"
                                         for g in parts[1:])
        return [head, f"        {node.expr}.grad = {total}"
                + (f" = {_num(node.grad_in)}" if len(parts) > 1 else "")]
    sends = [f"{_num(g)} -> [{j}]"
             for j, g in zip(node.inputs, node.grads_out, strict=False) if j is not None]
    return [head, f"        receives d{y}/d(out) = {_num(node.grad_in)}",
            *(f"        local: {line}" for line in node.local),
            *([f"        sends {', '.join(sends)}"] if sends else [])]
