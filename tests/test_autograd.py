"""minigpt.diagnostics.autograd: the safe formula parser and `explain`, checked against
independently written torch functions (torch.autograd.grad) and central finite differences."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from minigpt.diagnostics import autograd
from minigpt.diagnostics.autograd import (
    FUNCTIONS,
    OPS,
    explain,
    format_report,
    output_name,
    parse_expr,
)
from minigpt.errors import MiniGPTError

# formulas with an independently written torch function of the same variables, in order
HAND_WRITTEN = [
    ("x**2 + 3*x + 1", lambda x: x**2 + 3 * x + 1),
    ("-x**2", lambda x: -(x**2)),  # ** binds tighter than unary minus
    ("2**x**0.5", lambda x: 2 ** (x**0.5)),  # ** is right-associative
    ("x - y - z", lambda x, y, z: (x - y) - z),
    ("x/y/z", lambda x, y, z: (x / y) / z),
    ("x*y + sin(x)*cos(y)", lambda x, y: x * y + torch.sin(x) * torch.cos(y)),
    ("x**y", lambda x, y: torch.pow(x, y)),
    ("log(x)*sqrt(y) - exp(-z)/tan(z)",
     lambda x, y, z: torch.log(x) * torch.sqrt(y) - torch.exp(-z) / torch.tan(z)),
    ("sigmoid(x*y) + tanh(z - x) + relu(y - 0.1) + abs(z - 3)",
     lambda x, y, z: torch.sigmoid(x * y) + torch.tanh(z - x) + torch.relu(y - 0.1)
     + torch.abs(z - 3)),
    ("+x - -y", lambda x, y: x + y),
    ("(x + 1)*(x + 1)*(x + 1)", lambda x: (x + 1) ** 3),
]


# every operation of OPS written independently ("**n": a power with a number exponent)
ORACLES = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b, "**": lambda a, b: a**b, "**n": lambda a, n: a**n,
    "neg": lambda a: -a, "sin": lambda a: torch.sin(a), "cos": lambda a: torch.cos(a),
    "tan": lambda a: torch.tan(a), "exp": lambda a: torch.exp(a), "log": lambda a: torch.log(a),
    "sqrt": lambda a: torch.sqrt(a), "tanh": lambda a: torch.tanh(a),
    "sigmoid": lambda a: 1 / (1 + torch.exp(-a)), "relu": lambda a: torch.clamp(a, min=0),
    "abs": lambda a: torch.where(a < 0, -a, a),
}
# each operation alone as a formula of x (and y)
ALONE = {"+": "x + y", "-": "x - y", "*": "x*y", "/": "x/y", "**": "x**y", "**n": "x**3",
         "neg": "-x", **{f: f"{f}(x)" for f in FUNCTIONS}}


def _grads(fn, point: dict[str, float]) -> dict[str, float]:
    """The oracle: torch.autograd.grad of an independently written function."""
    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in point.values()]
    grads = torch.autograd.grad(fn(*leaves), leaves)
    return {k: float(g) for k, g in zip(point, grads, strict=True)}


def _central(fn, point: dict[str, float], name: str, h: float = 1e-6) -> float:
    """The second oracle: a central difference of the independently written function."""
    def at(v: float) -> float:
        args = {**point, name: v}
        return float(fn(*(torch.tensor(a, dtype=torch.float64) for a in args.values())))
    return (at(point[name] + h) - at(point[name] - h)) / (2 * h)


def _random_expr(rng: random.Random, variables: list[str], depth: int):
    """A random formula as (text, function), built side by side, defined for all reals."""
    if depth == 0 or rng.random() < 0.25:
        if rng.random() < 0.7:
            i = rng.randrange(len(variables))
            return variables[i], lambda *v, i=i: v[i]
        c = round(rng.uniform(0.5, 3.0), 2)
        return str(c), lambda *v, c=c: torch.tensor(c, dtype=torch.float64)
    (a, fa), (b, fb) = (_random_expr(rng, variables, depth - 1) for _ in range(2))
    choice = rng.randrange(10)
    table = [
        (f"({a}) + ({b})", lambda *v: fa(*v) + fb(*v)),
        (f"({a}) - ({b})", lambda *v: fa(*v) - fb(*v)),
        (f"({a})*({b})", lambda *v: fa(*v) * fb(*v)),
        (f"({a})/(2 + ({b})**2)", lambda *v: fa(*v) / (2 + fb(*v) ** 2)),
        (f"sin({a})", lambda *v: torch.sin(fa(*v))),
        (f"cos({a})*tanh({b})", lambda *v: torch.cos(fa(*v)) * torch.tanh(fb(*v))),
        (f"sigmoid({a})", lambda *v: torch.sigmoid(fa(*v))),
        (f"log(1 + ({a})**2)", lambda *v: torch.log(1 + fa(*v) ** 2)),
        (f"sqrt(1 + ({a})**2)", lambda *v: torch.sqrt(1 + fa(*v) ** 2)),
        (f"exp(tanh({a}))", lambda *v: torch.exp(torch.tanh(fa(*v)))),
    ]
    return table[choice]


def _hand_written_cases():
    """HAND_WRITTEN, each at a point of its own in [0.4, 1.4], where every formula is defined."""
    cases = []
    for text, fn in HAND_WRITTEN:
        rng = random.Random(text)
        point = {v: round(rng.uniform(0.4, 1.4), 3) for v in parse_expr(text).variables}
        cases.append((text, fn, point))
    return cases


def _random_cases(n: int, seed: int = 1234):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        variables = ["x", "y", "z"][: rng.randint(1, 3)]
        text, fn = _random_expr(rng, variables, depth=3)
        used = parse_expr(text).variables
        if len(used) != len(variables):
            continue  # the oracle takes every variable; the formula must use them all
        point = {v: round(rng.uniform(-2, 2), 3) for v in variables}
        cases.append((text, fn, point))
    return cases


def test_the_lessons_example():
    report = explain()
    assert report.expr == "x**2 + 3*x + 1" and report.at == {"x": 2.0}
    assert report.value == 11.0
    assert report.gradients == {"x": 7.0}
    ops = [n.op for n in report.graph]
    assert sorted(ops) == sorted(["AddBackward0", "AddBackward0", "MulBackward0",
                                  "PowBackward0", "AccumulateGrad"])
    assert ops[0] == "AddBackward0" and ops[-1] == "AccumulateGrad"
    pow_node = next(n for n in report.graph if n.op == "PowBackward0")
    assert pow_node.local == ("d(x**2)/dx = 2*x = 4",)
    assert pow_node.grads_out == (4.0,)
    mul_node = next(n for n in report.graph if n.op == "MulBackward0")
    assert mul_node.local == ("d(3*x)/dx = 3",)
    leaf = report.graph[-1]
    assert leaf.expr == "x" and leaf.grad_in == 7.0
    assert report.checks[0].abs_error < 1e-6 and report.checks[0].numeric == pytest.approx(7)
    text = format_report(explain("x**2 + 3*x + 1", {"x": 2}))  # the report shows all of it
    assert "y = 11" in text
    assert "dy/dx = 7" in text
    assert "d(x**2)/dx = 2*x = 4" in text
    assert "x.grad = 3 + 4 = 7" in text or "x.grad = 4 + 3 = 7" in text
    assert "ok" in text.splitlines()[-1]
    assert all(len(line) <= 120 for line in text.splitlines()[1:])


def test_graph_is_topological_and_each_variable_is_one_leaf():
    report = explain("x*y + sin(x)*y**2 - x", {"x": 0.3, "y": -1.2})
    for node in report.graph:
        assert all(j is None or j > node.index for j in node.inputs)  # inputs come later
    leaves = [n.expr for n in report.graph if n.op == "AccumulateGrad"]
    assert sorted(leaves) == ["x", "y"]
    # what each leaf received is what the nodes feeding it sent, summed (the chain rule)
    for leaf in (n for n in report.graph if n.op == "AccumulateGrad"):
        sent = sum(g for n in report.graph for j, g in zip(n.inputs, n.grads_out, strict=False)
                   if j == leaf.index and g is not None)
        assert sent == pytest.approx(leaf.grad_in, abs=1e-12)
        assert leaf.grad_in == pytest.approx(report.gradients[leaf.expr], abs=1e-12)


def test_output_is_called_f_when_y_is_a_variable_and_a_bare_variable_has_gradient_one():
    text = format_report(explain("x*y", {"x": 2, "y": 5}))
    assert "df/dx = 5" in text and "df/dy = 2" in text
    report = explain("x", {"x": 3.5})
    assert report.value == 3.5 and report.gradients == {"x": 1.0} and report.graph == ()
    assert "no operation" in format_report(report)


@pytest.mark.parametrize("text, fn, point", [*_hand_written_cases(), *_random_cases(25)],
                         ids=[*(t for t, _ in HAND_WRITTEN), *(f"random{i}" for i in range(25))])
def test_formulas_match_the_oracles(text, fn, point):
    report = explain(text, point)
    assert set(report.gradients) == set(point)
    assert report.value == pytest.approx(
        float(fn(*(torch.tensor(v, dtype=torch.float64) for v in point.values()))), rel=1e-12)
    for name, grad in _grads(fn, point).items():
        assert report.gradients[name] == pytest.approx(grad, rel=1e-10, abs=1e-12)
        assert report.gradients[name] == pytest.approx(_central(fn, point, name), rel=1e-5,
                                                       abs=1e-6)
    assert report.max_abs_error < 1e-5
    for check in report.checks:
        assert check.abs_error <= 1e-5 * max(1.0, abs(check.autograd))


def test_parse_keeps_the_variables_in_order_of_appearance():
    assert parse_expr("z*x + y - x").variables == ("z", "x", "y")
    assert parse_expr("x ** 2").text == "x**2"


# rejections whose message must also say "not allowed" and name what is not
NOT_ALLOWED = {"__import__('os')": "'__import__' is not allowed",
               "os.system('ls')": "'os.system' is not allowed", "x.real": "attribute access",
               "lambda: 1": "lambda", "foo(x)": "'foo' is not allowed",
               "x // 2": "'//' is not allowed"}


@pytest.mark.parametrize("text", [
    *NOT_ALLOWED, "__import__('pathlib').Path({sentinel!r}).touch()",
    "open({sentinel!r}, 'w')",
    "exec(\"open({sentinel!r}, 'w')\")",
    "(lambda: open({sentinel!r}, 'w'))()",
    "x.__class__",
    "sin.__globals__",
    "[open({sentinel!r}, 'w') for x in [1]]",
    "x[0]", "x % 2", "x @ x", "x if x else 1", "x < 1", "x and 1", "(x := 2)",
    "'text'", "1j", "True", "sin(x, 2)", "sin(x=1)", "sin(*x)", "sin", "_x + 1",
    "", "   ", "x +", "x" * 1001,
])
def test_rejected_formulas_raise_one_line_errors_and_run_nothing(text, tmp_path):
    sentinel = tmp_path / "ran"
    text = text.replace("{sentinel!r}", repr(str(sentinel)))
    for call in (lambda: parse_expr(text), lambda: explain(text, {"x": 1.0})):
        with pytest.raises(MiniGPTError) as info:
            call()
        assert "\n" not in str(info.value) and str(info.value)
        if text in NOT_ALLOWED:
            assert "not allowed" in str(info.value) and NOT_ALLOWED[text] in str(info.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("text, at, fragment", [
    ("x**2", {"x": 1.0, "z": 2.0}, "unknown variable 'z'"),
    ("x*y", {"x": 1.0}, "no value for variable 'y'"),
    ("a*b", None, "no value for variable 'a'"),  # (the lesson's x = 2 is no default for a, b)
    ("x*y", None, "no value for variable 'y'"),
    ("1/(x - 2)", {"x": 2.0}, "division by zero in '1/(x - 2)'"),
    ("x/0", {"x": 1.0}, "division by zero"),
    ("log(x)", {"x": -1.0}, "'log(x)' is not finite"),
    ("exp(x)", {"x": 1000.0}, "not finite"),
    ("sqrt(x)", {"x": 0.0}, "gradient dy/dx is not finite"),
    ("2*3", {}, "no variables"),
    ("x", {"x": "2"}, "must be a number"),
    ("x", {"x": float("nan")}, "must be finite"),
    ("x + 1" + "0" * 400, {"x": 1.0}, "is too large for a float"),
    ("1e400*x", {"x": 1.0}, "a constant in the expression is too large for a float"),
    # what a learner writes on paper: said how Python writes it
    ("2x", {"x": 1.0}, "multiplication is written out: 2*x, not 2x"),
    ("3x**2 + 1", {"x": 1.0}, "multiplication is written out"),
    ("2(x + 1)", {"x": 1.0}, "for a product write 2*(x + 1)"),
    ("(x + 1)(x - 1)", {"x": 1.0}, "for a product write (x + 1)*(x - 1)"),
    ("x(x + 1)", {"x": 1.0}, "for a product write x*(x + 1)"),
    ("x² + 1", {"x": 1.0}, "a power is written x**2, not x²"),
    # a starred argument is no one argument: said as such (not 'syntax *x'), and no product
    ("sin(*x)", {"x": 1.0}, "sin() takes exactly one argument"),
    # the point as given, not rounded through float32 (y=0, x=inf)
    ("x/y", {"x": 1.0, "y": 1e-200}, "at x=1, y=1e-200"),
    ("sqrt(x - 1e300)", {"x": 1e300}, "at x=1e+300"),
])
def test_user_errors_are_one_line_minigpt_errors(text, at, fragment):
    with pytest.raises(MiniGPTError) as info:
        explain(text, at)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_kink_is_reported_not_hidden():
    """At abs's kink the central difference (0) agrees with torch's subgradient by symmetry, and
    the line said 'ok', a derivative confirmed where there is none: the one-sided slopes, which
    stay apart however small h is, say so (relu's too, whose 0.5 was called a MISMATCH)."""
    report = explain("abs(x)", {"x": 0.0})
    assert report.gradients == {"x": 0.0}  # torch's choice of subgradient at the kink
    assert math.isclose(report.checks[0].numeric, 0.0, abs_tol=1e-9)
    assert report.checks[0].kink == (-1.0, 1.0)  # abs's slopes, by hand
    line = format_report(report).splitlines()[-1]
    assert "no derivative to check, slope -1 on the left, 1 on the right" in line
    assert not line.endswith("ok") and "MISMATCH" not in line
    report = explain("relu(x)", {"x": 0.0})
    assert report.gradients == {"x": 0.0}  # torch's subgradient; the difference says 0.5
    assert math.isclose(report.checks[0].numeric, 0.5) and report.checks[0].kink == (0.0, 1.0)
    report = explain("relu(x)", {"x": 1e-9})  # beside the kink: a small enough h sees slope 1
    assert report.checks[0].numeric == pytest.approx(1.0) and report.checks[0].kink is None
    assert format_report(report).endswith("ok")


@pytest.mark.parametrize(("text", "at"), [
    ("x**1.5", {"x": 0.0}),  # defined for x >= 0 only: autograd's 0 is the slope from the right
    ("x**x", {"x": 0.0}),    # 0**0 = 1, and nan for every x < 0
    ("log(x)", {"x": 1e-40}),  # inside the domain, nearer its edge than the smallest step
])
def test_where_every_difference_is_nan_the_check_says_so_not_mismatch(text, at):
    """y is not a number on one side of x for every step tried: the difference has nothing to
    say, so the line says why it checked nothing; neither 'ok' nor a MISMATCH blamed on a kink
    (autograd's 0 for x**1.5 at 0 is right)."""
    report = explain(text, at)
    assert math.isnan(report.checks[0].numeric)  # the premise: no estimate at all
    line = format_report(report).splitlines()[-1]
    assert "not a number" in line and "MISMATCH" not in line and not line.endswith("ok")


def test_a_difference_of_a_thousandth_is_a_mismatch():
    """x**2 + 3*x + 1 at 2: autograd's 7, against a numeric slope 1e-3 away (a relative error
    of 1.4e-4, far above float64 finite-difference noise) or 1e-9 away (noise)."""
    report = explain("x**2 + 3*x + 1", {"x": 2})
    check = report.checks[0]
    assert check.autograd == 7.0  # 2x + 3, by hand

    def with_numeric(numeric):
        off = dataclasses.replace(check, numeric=numeric, abs_error=abs(numeric - 7.0))
        return format_report(dataclasses.replace(report, checks=(off,)))

    assert "MISMATCH" in with_numeric(7.001).splitlines()[-1]
    assert with_numeric(7.0 + 1e-9).splitlines()[-1].endswith("ok")


@pytest.mark.parametrize(("text", "at", "exact"), [
    ("log(x)", {"x": 1e-4}, 1e4),             # a fixed h of 1e-6 is 1 % of x: curvature shows
    ("sqrt(x)", {"x": 1e-5}, 0.5 / 1e-5**0.5),
    ("1/x", {"x": 1e-3}, -1e6),
    ("sin(x)", {"x": 1e6}, math.cos(1e6)),    # a large x: h relative to it, rounding stays small
    ("x**3", {"x": 0.0}, 0.0),
    ("x**-1", {"x": 2.0}, -0.25),  # 2 ± h rounds alike for every h below 1e-8: no chance win
    ("x**2", {"x": 1e12}, 2e12),  # h relative to x: a step of 0.1 is under a thousand ulps
    # beside the edge of the domain (x > 0), closer than the smallest step of 1e-12: every
    # x - h was outside it (nan), and a correct gradient was called a MISMATCH
    ("log(x)", {"x": 1e-13}, 1e13),
    ("sqrt(x)", {"x": 1e-14}, 0.5 / 1e-14**0.5),
    ("exp(x)", {"x": 1e-300}, 1.0),  # a step relative to a tiny x alone rounds exp(x ± h) to 1
])
def test_the_finite_difference_picks_its_step_and_agrees_where_autograd_is_right(text, at, exact):
    report = explain(text, at)
    assert report.gradients["x"] == pytest.approx(exact, rel=1e-9, abs=1e-12)
    assert report.checks[0].numeric == pytest.approx(exact, rel=1e-5, abs=1e-7)
    assert "MISMATCH" not in format_report(report)
    if text == "x**-1":  # the best step's error, not that of a step too small (2e-8)
        assert report.checks[0].abs_error < 1e-9


def test_the_output_is_named_after_a_name_the_variables_do_not_take():
    assert output_name(["x"]) == "y" and output_name(["y", "x"]) == "f"
    assert output_name(["f", "y"]) == "g" and output_name(["f", "g", "y", "y0"]) == "y1"
    text = format_report(explain("f*y", {"f": 2, "y": 3}))
    assert text.startswith("g = f*y") and "dg/df = 3" in text and "dg/dy = 2" in text
    with pytest.raises(MiniGPTError, match=r"the gradient df/dy is not finite"):
        explain("sqrt(y)", {"y": 0.0})


def test_every_operation_has_an_oracle_and_no_private_saved_tensors_are_read():
    assert set(ORACLES) == set(OPS) == set(ALONE)
    assert "_saved_" not in Path(autograd.__file__).read_text()


@pytest.mark.parametrize("op", list(OPS))
def test_each_operation_s_local_derivatives_match_torch_autograd_grad(op):
    """Each rule of OPS at five points, then the operation alone explained: both against the
    independently written oracle, through torch.autograd.grad."""
    oracle, rules = ORACLES[op], OPS[op][1]
    checked = 0
    for point in [(0.7, 1.9), (1.3, -0.6), (2.4, 3.0), (-0.8, 2.0), (-1.7, -0.3)]:
        values = point[: oracle.__code__.co_argcount]
        tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True)
                   for v in values[: len(rules)]]  # the exponent of "**n" stays a number
        grads = torch.autograd.grad(oracle(*tensors, *values[len(rules):]), tensors)
        for (_, rule), grad in zip(rules, grads, strict=True):
            if math.isfinite(grad):
                assert rule(*values) == pytest.approx(float(grad), rel=1e-12, abs=1e-15)
                checked += 1
    assert checked >= 3 * len(rules)
    point = {"x": 0.7, "y": 1.9} if "y" in ALONE[op] else {"x": 0.7}
    fn = (lambda x: ORACLES[op](x, 3.0)) if op == "**n" else ORACLES[op]
    report, expected = explain(ALONE[op], point), _grads(fn, point)
    local = report.graph[0].local
    assert len(local) == len(point)
    for line in local:  # d(x*y)/dx = y = 1.9
        wrt, number = line.split(" = ")[0].rsplit("/d", 1)[1], line.rsplit(" = ", 1)[1]
        assert float(number) == pytest.approx(expected[wrt], rel=1e-5, abs=1e-9)


def test_local_formulas_read_as_the_lesson_writes_them():
    report = explain("x**3 + x/y + 2**y", {"x": 2, "y": 4})
    lines = [line for node in report.graph for line in node.local]
    for line in ("d(x**3)/dx = 3*x**2 = 12", "d(x/y)/dx = 1/y = 0.25",
                 "d(x/y)/dy = -x/y**2 = -0.125", "d(2**y)/dy = 2**y*log(2) = 11.0904"):
        assert line in lines
    assert {n.op for n in report.graph} >= {"PowBackward0", "PowBackward1", "DivBackward0"}


@pytest.mark.parametrize("text", ["x*x", "x - x", "x**x", "sin(x)/sin(x)"])
def test_an_operand_used_twice_gets_a_local_line_per_use_that_says_which(text):
    """d(x*x)/dx is 2x, not x: each line is the derivative by one operand, the other held, and
    two lines both headed d(x*x)/dx = x = 3 (or d(x - x)/dx = 1 and = -1) said the untrue."""
    node = explain(text, {"x": 3.0}).graph[0]
    heads = [line.split(" = ")[0] for line in node.local]
    assert len(heads) == 2 and heads[0] != heads[1], node.local


@pytest.mark.parametrize(("text", "x"), [("relu(x)", 0.0), ("abs(x)", 0.0),
                                         ("sigmoid(x)", -40.0), ("sigmoid(x)", 40.0)])
def test_at_a_kink_the_local_derivative_is_the_one_autograd_took(text, x):
    """At 0 relu and abs have no slope; torch sends 0 there: the number the local line shows
    must be what the node sent, not the slope of one side. Far out, sigmoid's slope is what
    torch's s*(1 - s) gives: 4.2e-18 at -40 (a rule through tanh(x/2)**2 rounded it to 0)."""
    node = explain(text, {"x": x}).graph[0]
    sent = node.grads_out[0]
    assert float(node.local[0].rsplit(" = ", 1)[1]) == pytest.approx(sent, rel=1e-5, abs=0)
    assert sent == 0.0 or text == "sigmoid(x)"


def test_a_leaf_s_gradient_sum_keeps_the_signs_of_what_it_was_sent():
    """x - x**2 at 2: x receives 1 and -4; the line adds them up to its .grad, -3."""
    report = explain("x - x**2", {"x": 2})
    line = next(ln for ln in format_report(report).splitlines() if "x.grad = " in ln)
    total, result = line.split("x.grad = ")[1].rsplit(" = ", 1)
    sent = [float(t) for t in total.replace(" - ", " + -").split(" + ")]
    assert sorted(sent) == [-4.0, 1.0] and sum(sent) == float(result) == report.gradients["x"]


def test_a_call_raised_to_a_power_is_not_parenthesised_and_large_numbers_are_short():
    lines = [line for node in explain("sin(x)**3", {"x": 0.5}).graph for line in node.local]
    assert lines[0].startswith("d(sin(x)**3)/d(sin(x)) = 3*sin(x)**2 = ")
    text = format_report(explain("x*y", {"x": 1e10, "y": 1e10}))
    assert "value       f = 1e+20" in text  # (not 21 digits)


def test_a_local_derivative_the_arithmetic_cannot_give_is_a_question_mark():
    """d(x**y)/dy = x**y*log(x) at x = 0: log(0) is a domain error, though autograd sends 0
    (PyTorch takes 0**y's derivative in y to be 0 for y >= 0)."""
    report = explain("x**y", {"x": 0.0, "y": 2.0})
    assert report.graph[0].local == ("d(x**y)/dx = y*x**(y - 1) = 0",
                                     "d(x**y)/dy = x**y*log(x) = ?")
    assert report.gradients == {"x": 0.0, "y": 0.0}


@pytest.fixture(params=[1000, 3000, 20000], ids=lambda n: f"recursionlimit={n}")
def recursion_limit(request):
    """Python's default, the limit importing IPython sets, and one far above both."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(request.param)
    yield request.param
    sys.setrecursionlimit(before)


@pytest.mark.parametrize("text", ["-" * 999 + "x", "x" + "**x" * 333,
                                  "-" * autograd.MAX_DEPTH + "x",
                                  "x" + " + x" * autograd.MAX_DEPTH],
                         ids=["minus", "powers", "one-too-deep", "a-sum-one-term-too-long"])
def test_an_expression_within_the_length_limit_but_nested_too_deeply_is_one_line(
        text, recursion_limit):
    """A fixed depth limit refuses these, whatever Python's recursion limit is: it once rested
    on RecursionError, and a kernel that had imported IPython (limit 3000) parsed the powers."""
    with pytest.raises(MiniGPTError) as info:
        parse_expr(text)
    # (a sum is a chain of + that Python's ast nests: the message says so, and what it allows)
    assert str(info.value) == ("the expression is nested too deeply: at most "
                               f"{autograd.MAX_DEPTH} levels, each operator of a chain one more "
                               f"(x + x + ... + x: at most {autograd.MAX_DEPTH} terms)")


@pytest.mark.parametrize("text", ["-" * (autograd.MAX_DEPTH - 1) + "x",
                                  "x" + "**x" * (autograd.MAX_DEPTH - 1),
                                  "x" + " + x" * (autograd.MAX_DEPTH - 1)],
                         ids=["minus", "powers", "sum"])
def test_an_expression_at_the_depth_limit_is_explained_under_the_default_recursion_limit(text):
    """The deepest expression allowed goes through every recursive step (the checks, the torch
    evaluation, the backward-graph walk and the report) with Python's default limit."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        report = explain(text, {"x": 1.0})
        text_report = format_report(report)
    finally:
        sys.setrecursionlimit(before)
    # 99 minuses; 1**1**...**1; the sum of MAX_DEPTH x's (the terms the message promises)
    expected = -1.0 if text.startswith("-") else autograd.MAX_DEPTH if "+" in text else 1.0
    assert report.value == expected and "dy/dx" in text_report


def test_the_length_limit_is_inclusive():
    assert parse_expr("x" + " " * (autograd.MAX_LENGTH - 1)).text == "x"
    with pytest.raises(MiniGPTError, match="at most"):
        parse_expr("x" + " " * autograd.MAX_LENGTH)


def test_the_step_reported_is_the_one_whose_difference_is_reported():
    """The check's h is the step that gave its numeric slope: the central difference of an
    independently written function at that h is the same number (steps a tenth apart give
    slopes that differ, by truncation or by rounding)."""
    for text, fn, at in [("exp(x)", torch.exp, 1.0), ("log(x)", torch.log, 1e-4)]:
        check = explain(text, {"x": at}).checks[0]
        assert check.numeric == pytest.approx(_central(fn, {"x": at}, "x", check.h), rel=1e-14)
        for other in (check.h * 10, check.h / 10):
            assert check.numeric != pytest.approx(_central(fn, {"x": at}, "x", other), rel=1e-14)


# what the local formulas call beyond the functions of FUNCTIONS
FORMULA_NAMES = {"log": math.log, "sign": lambda a: float((a > 0) - (a < 0)),
                 "sigmoid": lambda a: 1 / (1 + math.exp(-a)),
                 **{f: getattr(math, f) for f in FUNCTIONS if hasattr(math, f)}}


@pytest.mark.parametrize("op", list(OPS))
def test_each_local_formula_as_written_computes_the_derivative(op):
    """The formula a local line shows, read as Python at the point, is autograd's derivative of
    the operation (its operands sums, so a missing parenthesis or a wrong sign shows): the
    number beside it is checked elsewhere, the text the learner reads was not."""
    text = re.sub(r"\bx\b", "(x + 0.5)", re.sub(r"\by\b", "(y + 2)", ALONE[op]))
    point = {"x": 0.7, "y": 1.9} if "y" in ALONE[op] else {"x": 0.7}
    operands = [v + (0.5 if k == "x" else 2) for k, v in point.items()]
    fn = (lambda a: ORACLES[op](a, 3.0)) if op == "**n" else ORACLES[op]
    expected = list(_grads(fn, dict(enumerate(operands))).values())
    lines = explain(text, point).graph[0].local
    assert len(lines) == len(expected)
    for line, grad in zip(lines, expected, strict=True):
        formula = line.split(" = ")[1]
        value = eval(formula, {"__builtins__": {}}, {**FORMULA_NAMES, **point})
        assert value == pytest.approx(grad, rel=1e-12), line


def test_a_sub_expression_has_one_name_in_its_own_node_and_in_the_node_it_feeds():
    """Short pieces are written out, long ones as their node's number [j]; either way a piece
    is called the same where its node differentiates it, d(piece)/..., and where the node it
    feeds differentiates by it, .../d(piece), so the reader can follow the chain. Pieces from
    10 to 40 characters cross the length at which the name changes."""
    for n in range(8, 39):
        report = explain(f"sin(x*{'1' * n})", {"x": 0.5})
        sin, mul = report.graph[0], report.graph[1]
        assert sin.inputs[0] == mul.index
        below = sin.local[0].split(" = ")[0].split("/d", 1)[1]
        own = mul.local[0].split("/d", 1)[0][1:]
        assert below.strip("()") == own.strip("()"), (n, sin.local, mul.local)
