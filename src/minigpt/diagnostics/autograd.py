"""Autograd by example: differentiate a small formula with PyTorch and explain every step.

    report = explain("x**2 + 3*x + 1", {"x": 2.0})   # value 11, dy/dx = 7
    text = format_report(report)                      # for a terminal

`parse_expr` reads the formula with `ast` and accepts only numbers, variable names, + - * / **,
unary + and -, parentheses and one-argument calls to the functions in FUNCTIONS; anything else is
a MiniGPTError naming what is not allowed. Nothing is ever passed to `eval`: the checked tree is
evaluated node by node with torch operations on float64 scalars.

`explain` then calls `y.backward()` and reports, for each node of the backward graph PyTorch
built (from `y.grad_fn` down to the `AccumulateGrad` leaves), the local derivative it applies,
with numbers read from the tensors the node saved for the backward pass (`_saved_self`,
`_saved_other`, `_saved_exponent`, `_saved_result`), the gradient it received and the gradients
it sent on; and it checks every gradient against a central finite difference.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from minigpt.errors import MiniGPTError

FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "exp": torch.exp, "log": torch.log,
    "sqrt": torch.sqrt, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
    "abs": torch.abs,
}
_BINARY = {ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul, ast.Div: torch.div}
_SYMBOLS = {
    ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
    ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&", ast.Not: "not", ast.Invert: "~",
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
MAX_LENGTH = 1000
_ALLOWED = "numbers, variables, + - * / **, parentheses and " + ", ".join(FUNCTIONS)


@dataclass(frozen=True)
class Expr:
    """A checked formula: its normalised text, its syntax tree and its variables in order of
    first appearance. Build it with `parse_expr`."""

    text: str
    tree: ast.expr
    variables: tuple[str, ...]

    def evaluate(self, values: Mapping[str, torch.Tensor | float],
                 strict: bool = True) -> torch.Tensor:
        """The formula's value as a float64 0-d tensor, built with torch operations (so autograd
        records them when a value requires grad). strict: a MiniGPTError at the first
        sub-expression whose value is not finite (division by zero, log of 0, overflow)."""
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise MiniGPTError(f"no value for variable {missing[0]!r}: give one, "
                               f"e.g. {missing[0]}=2.0")
        return _evaluate(self.tree, values, strict)


def parse_expr(text: str) -> Expr:
    """Check `text` against the whitelist and return it as an Expr; never executes anything."""
    if not isinstance(text, str) or not text.strip():
        raise MiniGPTError("the expression is empty: give a formula such as x**2 + 3*x + 1")
    if len(text) > MAX_LENGTH:
        raise MiniGPTError(f"the expression is {len(text)} characters long; "
                           f"at most {MAX_LENGTH} are allowed")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        reason = getattr(e, "msg", None) or "not a formula"
        raise MiniGPTError(f"cannot read the expression {text.strip()!r}: {reason}") from None
    variables: list[str] = []
    try:
        _check(tree, variables)
    except RecursionError:
        raise MiniGPTError("the expression is nested too deeply") from None
    return Expr(_text(tree), tree, tuple(variables))


def _check(node: ast.AST, variables: list[str]) -> None:
    """Raise MiniGPTError unless `node` is built only from whitelisted pieces; collect the
    variable names into `variables` in order of first appearance."""
    if isinstance(node, ast.Constant):
        _check_constant(node)
    elif isinstance(node, ast.Name):
        _check_name(node.id)
        if node.id not in variables:
            variables.append(node.id)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY and not isinstance(node.op, ast.Pow):
            raise MiniGPTError(f"operator {_symbol(node.op)!r} is not allowed; use {_ALLOWED}")
        _check(node.left, variables)
        _check(node.right, variables)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.UAdd, ast.USub)):
            raise MiniGPTError(f"operator {_symbol(node.op)!r} is not allowed; use {_ALLOWED}")
        _check(node.operand, variables)
    elif isinstance(node, ast.Call):
        _check_call(node)
        _check(node.args[0], variables)
    else:
        raise MiniGPTError(f"{_describe(node)} is not allowed; use {_ALLOWED}")


def _check_constant(node: ast.Constant) -> None:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MiniGPTError(f"the constant {value!r} is not allowed: only real numbers are")


def _check_name(name: str) -> None:
    if name in FUNCTIONS:
        raise MiniGPTError(f"{name!r} is a function: call it with one argument, as {name}(x)")
    if not _NAME.match(name):
        raise MiniGPTError(f"the variable name {name!r} is not allowed: use letters, digits "
                           "and _, starting with a letter")


def _check_call(node: ast.Call) -> None:
    if not isinstance(node.func, ast.Name):
        raise MiniGPTError(f"calling {ast.unparse(node.func)!r} is not allowed; "
                           f"the functions are {', '.join(FUNCTIONS)}")
    name = node.func.id
    if name not in FUNCTIONS:
        raise MiniGPTError(f"the function {name!r} is not allowed; "
                           f"the functions are {', '.join(FUNCTIONS)}")
    if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
        raise MiniGPTError(f"{name}() takes exactly one argument, as {name}(x)")


def _symbol(op: ast.AST) -> str:
    return _SYMBOLS.get(type(op), type(op).__name__)


def _describe(node: ast.AST) -> str:
    """A short name for a disallowed piece of syntax, for the error message."""
    kinds = {
        ast.Attribute: "attribute access", ast.Lambda: "lambda", ast.Subscript: "indexing",
        ast.Compare: "comparison", ast.BoolOp: "and/or", ast.IfExp: "if-else",
        ast.NamedExpr: "assignment (:=)", ast.Starred: "*unpacking",
    }
    kind = kinds.get(type(node))
    if kind is None:
        kind = type(node).__name__.lower()
    try:
        return f"{kind} ({ast.unparse(node)[:40]})"
    except Exception:  # unparse is only for the message; never let it hide the real error
        return kind


def _evaluate(node: ast.expr, values: Mapping[str, torch.Tensor | float],
              strict: bool) -> torch.Tensor:
    """Evaluate a checked tree; tag each new grad_fn with the sub-expression it computes."""
    if isinstance(node, ast.Constant):
        return torch.tensor(float(node.value), dtype=torch.float64)
    if isinstance(node, ast.Name):
        return torch.as_tensor(values[node.id], dtype=torch.float64)
    operands = _operands(node)
    args = [_evaluate(a, values, strict) for a in operands]
    result = _apply(node, args)
    if result.grad_fn is not None and "expr" not in result.grad_fn.metadata:
        tensors = [a for a, t in zip(operands, args, strict=True)
                   if t.requires_grad or not _is_exponent(node, a)]
        result.grad_fn.metadata["expr"] = _text(node)
        result.grad_fn.metadata["inputs"] = tuple(_text(a) for a in tensors)
    if strict and not bool(torch.isfinite(result)):
        _raise_nonfinite(node, args, result, values)
    return result


def _text(node: ast.expr) -> str:
    """The formula as the lesson writes it: x**2 + 3*x + 1 (spaces only around + and -)."""
    return re.sub(r" (\*\*|\*|/) ", r"\1", ast.unparse(node))


def _is_exponent(node: ast.expr, operand: ast.expr) -> bool:
    """A constant exponent is passed to torch.pow as a number: it is not an input of the node."""
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and operand is node.right


def _operands(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    return [node.args[0]]  # ast.Call


def _apply(node: ast.expr, args: list[torch.Tensor]) -> torch.Tensor:
    """One torch operation for one checked node. A constant exponent is passed as a number,
    as in `x**2`, so PyTorch records PowBackward0 (it saves the exponent)."""
    if isinstance(node, ast.BinOp):
        left, right = args
        if isinstance(node.op, ast.Pow):
            return torch.pow(left, right if right.requires_grad else right.item())
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        return torch.neg(args[0]) if isinstance(node.op, ast.USub) else args[0]
    return FUNCTIONS[node.func.id](args[0])


def _raise_nonfinite(node: ast.expr, args: list[torch.Tensor], result: torch.Tensor,
                     values: Mapping[str, torch.Tensor | float]) -> None:
    point = ", ".join(f"{k}={_num(float(torch.as_tensor(v).detach()))}"
                      for k, v in values.items())
    is_div = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
    if is_div and float(args[1].detach()) == 0:
        raise MiniGPTError(f"division by zero in {_text(node)!r} at {point}")
    raise MiniGPTError(f"{_text(node)!r} is not finite ({float(result.detach())}) at {point}")


@dataclass(frozen=True)
class GradNode:
    """One node of the backward graph, numbered in topological order (y.grad_fn is 0).

    op: the grad_fn class name (PowBackward0, ..., AccumulateGrad); expr: the sub-expression
    whose gradient it computes (for AccumulateGrad, the variable); local: one line per input
    that needs a gradient, its local derivative with numbers; inputs: for each of the node's
    next_functions, the index of that node (None for a constant); grad_in: the gradient it
    received, d y / d(expr); grads_out: the gradient it sent along each input (None for none).
    """

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


@dataclass(frozen=True)
class AutogradReport:
    """What `explain` found: y's value, dy/dv for each variable, the backward graph (topological
    order, y.grad_fn first) and the finite-difference checks."""

    expr: str
    at: dict[str, float]
    value: float
    gradients: dict[str, float]
    graph: tuple[GradNode, ...]
    checks: tuple[GradCheck, ...]

    @property
    def max_abs_error(self) -> float:
        return max((c.abs_error for c in self.checks), default=0.0)


def explain(expr_text: str = "x**2 + 3*x + 1", at: Mapping[str, float] | None = None,
            h: float = 1e-6) -> AutogradReport:
    """Evaluate `expr_text` at the point `at` (default {"x": 2.0}, the lesson's), run
    `y.backward()` and explain it; see the module docstring. h: the relative finite-difference
    step (the step for variable v is h * max(1, |v|))."""
    expr = parse_expr(expr_text)
    point = _point(expr, {"x": 2.0} if at is None else at)
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in point.items()}
    y = expr.evaluate(leaves)
    order = _topological(y.grad_fn)
    local = _local_table(order, {id(t): k for k, t in leaves.items()})  # before backward()
    seen = _record_gradients(order)  # frees the saved tensors
    y.backward()
    gradients = {k: _leaf_grad(k, t, point) for k, t in leaves.items()}
    graph = _graph_nodes(order, local, seen)
    checks = tuple(_finite_difference(expr, point, k, gradients[k], h) for k in point)
    return AutogradReport(expr.text, point, float(y.detach()), gradients, graph, checks)


def _point(expr: Expr, at: Mapping[str, float]) -> dict[str, float]:
    """The values of expr's variables, in expr's order, checked: all given, none unknown,
    finite numbers."""
    if not expr.variables:
        raise MiniGPTError(f"{expr.text!r} has no variables: there is nothing to differentiate")
    for name in expr.variables:
        if name not in at:
            raise MiniGPTError(f"no value for variable {name!r}: give one, e.g. {name}=2.0")
    for name in at:
        if name not in expr.variables:
            raise MiniGPTError(f"unknown variable {name!r}: {expr.text!r} uses only "
                               f"{', '.join(expr.variables)}")
    point = {}
    for name in expr.variables:
        value = at[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MiniGPTError(f"the value of {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise MiniGPTError(f"the value of {name} must be finite, got {value}")
        point[name] = float(value)
    return point


def _topological(root) -> list:
    """The grad_fn nodes reachable from root, each before the nodes it feeds gradients to
    (reverse post-order of a depth-first walk over next_functions); shared nodes once."""
    if root is None:
        return []
    order, done, stack = [], set(), [(root, False)]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            order.append(fn)
            continue
        if fn in done:
            continue
        done.add(fn)
        stack.append((fn, True))
        stack.extend((nxt, False) for nxt, _ in reversed(fn.next_functions)
                     if nxt is not None and nxt not in done)
    return order[::-1]


def _record_gradients(order: list) -> dict:
    """Hook every node so the backward pass leaves, per node, (grad received, grads sent)."""
    seen: dict = {}
    for fn in order:
        def hook(grads_out, grads_in, fn=fn):  # torch names them (grad_inputs, grad_outputs)
            seen[fn] = (_float(grads_in[0]) if grads_in else None,
                        tuple(_float(g) for g in grads_out))
        fn.register_hook(hook)
    return seen


def _float(t: torch.Tensor | None) -> float | None:
    return None if t is None else float(t)


def _leaf_grad(name: str, leaf: torch.Tensor, point: Mapping[str, float]) -> float:
    grad = 0.0 if leaf.grad is None else float(leaf.grad)
    if not math.isfinite(grad):
        where = ", ".join(f"{k}={_num(v)}" for k, v in point.items())
        raise MiniGPTError(f"the gradient dy/d{name} is not finite ({grad}) at {where}")
    return grad


def _local_table(order: list, names: dict[int, str]) -> dict:
    """For each node: (the expression it differentiates, its local-derivative lines). Must run
    before backward(), which frees the tensors the nodes saved."""
    index = {fn: i for i, fn in enumerate(order)}
    table = {}
    for fn in order:
        if type(fn).__name__ == "AccumulateGrad":
            name = names.get(id(fn.variable), "?")
            table[fn] = (name, (f"leaf {name}: adds up the gradients that reach it "
                                f"into {name}.grad",))
        else:
            table[fn] = (fn.metadata.get("expr", "?"), _local_derivatives(fn, index))
    return table


def _graph_nodes(order: list, local: dict, seen: dict) -> tuple[GradNode, ...]:
    index = {fn: i for i, fn in enumerate(order)}
    graph = []
    for i, fn in enumerate(order):
        grad_in, grads_out = seen.get(fn, (None, ()))
        inputs = tuple(None if nxt is None else index[nxt] for nxt, _ in fn.next_functions)
        expr, lines = local[fn]
        graph.append(GradNode(i, type(fn).__name__, expr, lines, inputs, grad_in, grads_out))
    return tuple(graph)


def _saved(fn, name: str) -> float | None:
    """A scalar torch saved on `fn` for the backward pass, or None where it saved none."""
    try:
        value = getattr(fn, f"_saved_{name}")
    except (AttributeError, RuntimeError):  # not saved by this node, or already freed
        return None
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


def _local_derivatives(fn, index: dict) -> tuple[str, ...]:
    """One line per differentiable input: d(out)/d(input) = formula = number. A long
    sub-expression is written as the number of its node, [j]."""
    name = type(fn).__name__
    texts = fn.metadata.get("inputs", ())
    rule = _RULES.get(name)
    if rule is None or len(texts) != len(fn.next_functions):
        return (f"{name}: applies its local derivative by the chain rule",)
    out = _short(fn.metadata.get("expr", "?"), index.get(fn))
    short = [_short(t, None if nxt is None else index.get(nxt))
             for (nxt, _), t in zip(fn.next_functions, texts, strict=True)]
    s = {k: _saved(fn, k) for k in ("self", "other", "exponent", "result", "alpha")}
    lines = []
    for i, (nxt, _) in enumerate(fn.next_functions):
        if nxt is None:
            continue
        formula, value = rule(i, short, s)
        number = "" if value is None or formula == _num(value) else f" = {_num(value)}"
        lines.append(f"{_d(out, short[i])} = {formula}{number}")
    return tuple(lines)


def _short(text: str, node: int | None, limit: int = 24) -> str:
    """The text, or the node reference [node] when the text is longer than `limit`."""
    return text if len(text) <= limit or node is None else f"[{node}]"


def _p(text: str) -> str:
    """Parenthesise a sub-expression unless it is a name, a number, a node reference or a
    function call."""
    return text if _atomic(text) else f"({text})"


def _atomic(text: str) -> bool:
    if re.fullmatch(r"[\w.]+|\[\d+\]", text):
        return True
    if not re.match(r"\w+\(", text):
        return False
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch == ")":
            return i == len(text) - 1  # the call's own parenthesis closes the text
    return False


def _d(out: str, wrt: str) -> str:
    """d(out)/dwrt, as a person writes it: d(x**2)/dx, d[3]/d(x + 1), d[0]/d[2]."""
    top = out if out.startswith("[") else f"({out})"
    bottom = wrt if re.fullmatch(r"\w+|\[\d+\]", wrt) else f"({wrt})"  # dx, d[2], d(x*y)
    return f"d{top}/d{bottom}"


def _opt(f: Callable[..., float], *xs: float | None) -> float | None:
    """f(*xs), or None when a saved value is missing or the arithmetic fails."""
    if any(x is None for x in xs):
        return None
    try:
        return f(*xs)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _add(i, t, s):
    return ("1", 1.0) if i == 0 else _alpha(s["alpha"], 1)


def _sub(i, t, s):
    return ("1", 1.0) if i == 0 else _alpha(s["alpha"], -1)


def _alpha(alpha, sign):
    a = 1.0 if alpha is None else alpha
    return ("-1" if sign < 0 else "1", sign * a) if a == 1 else (f"{sign}*alpha", sign * a)


def _mul(i, t, s):
    return (t[1], s["other"]) if i == 0 else (t[0], s["self"])


def _div(i, t, s):
    a, b = _p(t[0]), _p(t[1])
    if i == 0:
        return f"1/{b}", _opt(lambda b: 1 / b, s["other"])
    return f"-{a}/{b}**2", _opt(lambda a, b: -a / b**2, s["self"], s["other"])


def _pow0(i, t, s):
    n = s["exponent"]
    if n is None:
        formula = "n*a**(n - 1)"
    elif n - 1 == 1:
        formula = f"{_num(n)}*{_p(t[0])}"
    else:
        formula = f"{_num(n)}*{_p(t[0])}**{_p(_num(n - 1))}"
    return formula, _opt(lambda a, n: n * a ** (n - 1), s["self"], n)


def _pow1(i, t, s):
    a, b = _p(t[0]), _p(t[1])
    if i == 0:
        return f"{b}*{a}**({t[1]} - 1)", _opt(lambda a, b: b * a ** (b - 1), s["self"],
                                              s["exponent"])
    return f"{a}**{b}*log({t[0]})", _opt(lambda r, a: r * math.log(a), s["result"], s["self"])


def _unary(formula: str, f: Callable[[float], float], saved: str):
    """A rule for a one-argument function; formula names its argument {a}."""
    def rule(i, t, s):
        return formula.format(a=t[0], pa=_p(t[0])), _opt(f, s[saved])
    return rule


_RULES = {
    "AddBackward0": _add, "SubBackward0": _sub, "MulBackward0": _mul, "DivBackward0": _div,
    "PowBackward0": _pow0, "PowBackward1": _pow1,
    "NegBackward0": lambda i, t, s: ("-1", -1.0),
    "SinBackward0": _unary("cos({a})", math.cos, "self"),
    "CosBackward0": _unary("-sin({a})", lambda a: -math.sin(a), "self"),
    "TanBackward0": _unary("1 + tan({a})**2", lambda r: 1 + r * r, "result"),
    "ExpBackward0": _unary("exp({a})", lambda r: r, "result"),
    "LogBackward0": _unary("1/{pa}", lambda a: 1 / a, "self"),
    "SqrtBackward0": _unary("1/(2*sqrt({a}))", lambda r: 1 / (2 * r), "result"),
    "TanhBackward0": _unary("1 - tanh({a})**2", lambda r: 1 - r * r, "result"),
    "SigmoidBackward0": _unary("sigmoid({a})*(1 - sigmoid({a}))", lambda r: r * (1 - r),
                               "result"),
    "ReluBackward0": _unary("1 if {a} > 0 else 0", lambda r: 1.0 if r > 0 else 0.0, "result"),
    "AbsBackward0": _unary("sign({a})", lambda a: float((a > 0) - (a < 0)), "self"),
}


def _finite_difference(expr: Expr, point: Mapping[str, float], name: str, grad: float,
                       h: float) -> GradCheck:
    step = h * max(1.0, abs(point[name]))
    with torch.no_grad():
        up = float(expr.evaluate({**point, name: point[name] + step}, strict=False))
        down = float(expr.evaluate({**point, name: point[name] - step}, strict=False))
    numeric = (up - down) / (2 * step)
    error = abs(numeric - grad) if math.isfinite(numeric) else math.inf
    return GradCheck(name, grad, numeric, error, step)


def _num(value: float | None) -> str:
    """A number as a person writes it: 11, 7, 0.5, 1.41421, 1e-12."""
    if value is None:
        return "?"
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def format_report(report: AutogradReport) -> str:
    """The report as text for a terminal: value, gradients, the backward graph node by node
    (what each received, its local derivative, what it sent where) and the checks."""
    y = "f" if "y" in report.at else "y"  # the output's name, unless a variable has it
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
    lines += [_format_check(c, y) for c in report.checks]
    return "\n".join(lines)


def _format_node(node: GradNode, graph: tuple[GradNode, ...], y: str) -> list[str]:
    lines = [f"  [{node.index}] {node.op:<18} {node.expr}"]
    if node.op == "AccumulateGrad":
        parts = [g for other in graph for j, g in zip(other.inputs, other.grads_out,
                                                      strict=False)
                 if j == node.index and g is not None]
        total = "".join(("" if k == 0 else " - " if g < 0 else " + ")
                        + _num(abs(g) if k else g) for k, g in enumerate(parts))
        if len(parts) > 1:
            total += f" = {_num(node.grad_in)}"
        lines.append(f"        {node.expr}.grad = {total or _num(node.grad_in)}")
        return lines
    lines.append(f"        receives d{y}/d(out) = {_num(node.grad_in)}")
    lines += [f"        local: {line}" for line in node.local]
    sends = [f"{_num(g)} -> [{j}]" for j, g in zip(node.inputs, node.grads_out, strict=False)
             if j is not None]
    if sends:
        lines.append(f"        sends {', '.join(sends)}")
    return lines


def _format_check(c: GradCheck, y: str) -> str:
    tolerance = 1e-5 * max(1.0, abs(c.autograd))
    verdict = "ok" if c.abs_error <= tolerance else "MISMATCH (a kink or a jump near here?)"
    return (f"  d{y}/d{c.variable}: autograd {_num(c.autograd)}, numeric {c.numeric:.10g}, "
            f"|error| {c.abs_error:.2g} (h = {c.h:.2g})  {verdict}")
