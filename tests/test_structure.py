"""The house's rules, checked: imports point one way (no cycle inside minigpt; the core never
imports the diagnostics), every module says what it is, and importing minigpt does no work."""

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import minigpt

PACKAGE = Path(minigpt.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The minigpt modules a file imports, anywhere in it (function-level imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # from minigpt import x
    return {name for name in found if name.startswith("minigpt")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_cycle_and_the_core_never_imports_the_diagnostics():
    edges = graph()
    for name, deps in edges.items():
        if not name.startswith("minigpt.diagnostics") and name not in ("minigpt.cli",
                                                                        "minigpt.__main__"):
            assert not {d for d in deps if d.startswith("minigpt.diagnostics")}, name
    edges["minigpt"] = set()  # the package's __init__ gathers the API: it imports everything
    try:
        TopologicalSorter(edges).prepare()
    except CycleError as cycle:
        # graphlib lists each module before the one that imports it
        raise AssertionError(f"import cycle: {' -> '.join(reversed(cycle.args[1]))}") from None


# docs/architecture.md's layers, top down: a module imports from its own layer and those below
LAYERS = [
    "__main__ cli",
    "diagnostics",
    "trainer run clock signals console",
    "step schedule evaluate model sample optim checkpoint export performance plan precision data "
    "corpus records tokenizer config distributed environment files errors",
    "lesson",
]


def test_the_layers_of_the_architecture_page():
    def layer(module: str) -> int:
        part = module.split(".")[1] if "." in module else "minigpt"
        return next(i for i, names in enumerate(LAYERS) if part in names.split())

    for name, deps in graph().items():
        if name != "minigpt":
            assert all(layer(d) >= layer(name) for d in deps if d != "minigpt"), name


def test_every_module_starts_with_a_docstring():
    for path in PACKAGE.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), path


def test_importing_minigpt_does_no_work(tmp_path):
    """No file written, no data read, nothing from the diagnostics or matplotlib loaded."""
    code = ("import sys, minigpt; "
            "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', "
            "'minigpt.diagnostics', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"MINIGPT_DATA_DIR": str(tmp_path / "cache"),
                                            "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


def test_dir_lists_each_public_name_once_and_no_helper():
    """A name asked for is kept in the module's globals: dir() listed it twice after, and
    listed importlib and WHERE, which are no part of the API."""
    import minigpt

    minigpt.MiniGPT  # noqa: B018 (asked once: now in globals() too)
    names = dir(minigpt)
    assert len(names) == len(set(names)) and set(minigpt.__all__) <= set(names)
    assert not {"importlib", "WHERE"} & set(names) and "__version__" in names
