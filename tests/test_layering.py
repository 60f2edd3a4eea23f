"""Imports inside mlx_research/ point downward only, and no modules import each other in a cycle.

Every import statement counts: module level and inside functions, `import a.b`, `from a import b`
and relative `from . import b`. A package may import its own modules, packages of lower layers
(except `FORBIDDEN`) and, within its own layer, only the pairs in `LATERAL`. Cycles are looked
for between modules (inside one package too), with the imports Python runs implicitly (a
package's `__init__` before its modules) and the registry's lookup of a task module by name
(`DYNAMIC_IMPORTS`) as edges: a task importing the registry back would close a cycle.
"""

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = "mlx_research"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS = (  # lowest first; the first part of a module's name below mlx_research/
    (PACKAGE, "errors", "tree", "prng", "config_fields", "config_checks", "testing"),
    ("ops", "nn", "losses", "data", "parallel"),
    ("models", "tools"),
    ("evaluation",),
    ("train",),
    ("main",),
)
LATERAL = {  # (importer, imported) within one layer
    ("config_checks", "errors"): "a failed check raises ConfigError",
    ("config_checks", "config_fields"): "config.model is built from the declared config fields",
    ("nn", "parallel"): "nn.pipelined runs its layers with parallel.pipeline",
}
FORBIDDEN = {  # (importer, imported) although the imported package lies lower
    ("models", "data"): "models take plain arguments, never data objects",
    ("models", "config_checks"): "models take plain arguments, never config objects",
}
DYNAMIC_IMPORTS = {  # module calling importlib.import_module -> package whose modules it loads
    "mlx_research.train.tasks": "mlx_research.train.tasks",
}
OUTSIDE = ("tests", "experiments", "benchmarks")  # the repository's, never imported by the package

LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under `root` (the directory of `package`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_package(module: str, modules: dict[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of `name` that is a module (`a.b.f`, f a function of a.b -> `a.b`)."""
    parts = name.split(".")
    while ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def _imports(module: str, modules: dict[str, Path]) -> list[tuple[int, str, str]]:
    """(line, statement, imported module) of every import of `module` that names the package
    (or one of `OUTSIDE`, returned as their top-level name)."""
    path = modules[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    root_name = module.split(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                     for alias in node.names]
        else:
            continue
        targets = [_resolve(name, modules) if name.split(".")[0] == root_name
                   else name.split(".")[0] for name in names]
        found += [(node.lineno, ast.unparse(node), target) for target in dict.fromkeys(targets)
                  if target.split(".")[0] in (root_name, *OUTSIDE)]
    return found


def _dynamic_imports(module: str, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, call) of every `importlib.import_module(...)` / `__import__(...)` in `module`."""
    tree = ast.parse(modules[module].read_text())
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                calls.append((node.lineno, ast.unparse(node)))
    return calls


def _unit(module: str) -> str:
    """The package (or top-level module) below the root that `module` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layering_violations(root: Path, package: str) -> list[str]:
    """One line per import that breaks the layers: "file:line: statement: why"."""
    modules = _modules(root, package)
    problems = []
    for module, path in modules.items():
        where = f"{path.relative_to(root.parent)}"
        unit = _unit(module)
        if unit not in LAYER:
            problems.append(f"{where}: {unit!r} is in no layer of LAYERS")
            continue
        for line, statement, target in _imports(module, modules):
            if target in OUTSIDE:
                problems.append(f"{where}:{line}: {statement}: the package never imports {target}/")
                continue
            other = _unit(target)
            if other == unit or other not in LAYER:
                continue  # inside one package; a unit in no layer is reported for its own files
            why = None
            if (unit, other) in FORBIDDEN:
                why = FORBIDDEN[unit, other]
            elif LAYER[other] > LAYER[unit]:
                why = f"{other} (layer {LAYER[other]}) lies above {unit} (layer {LAYER[unit]})"
            elif LAYER[other] == LAYER[unit] and (unit, other) not in LATERAL:
                why = f"{unit} and {other} share layer {LAYER[unit]} and the pair is not in LATERAL"
            if why:
                problems.append(f"{where}:{line}: {statement}: {why}")
        for line, call in _dynamic_imports(module, modules):
            if module not in DYNAMIC_IMPORTS:
                problems.append(f"{where}:{line}: {call}: an import by name outside "
                                "DYNAMIC_IMPORTS hides its target from these checks")
    return problems


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: modules its imports run}: the imported module, every package `__init__` on the
    way to it that is not the importer's own ancestor (Python runs those first), and for
    `DYNAMIC_IMPORTS` every module of the package it loads by name."""
    modules = _modules(root, package)
    graph = {module: set() for module in modules}
    for module in modules:
        for _, _, target in _imports(module, modules):
            if target not in modules:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                step = ".".join(parts[:i])
                if step != module and not module.startswith(step + "."):
                    graph[module].add(step)
        if module in DYNAMIC_IMPORTS:
            loaded = DYNAMIC_IMPORTS[module] + "."
            graph[module] |= {m for m in modules if m.startswith(loaded)}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle a depth-first search meets, as [m0, m1, ..., m0]."""
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_imports_point_downward():
    problems = layering_violations(PACKAGE_DIR, PACKAGE)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles(import_graph(PACKAGE_DIR, PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_holds_the_known_edges():
    graph = import_graph(PACKAGE_DIR, PACKAGE)
    assert "mlx_research.train.tasks.nadm" in graph["mlx_research.train.tasks"]  # by name
    assert "mlx_research.evaluation.base" in graph["mlx_research.train.tasks.base"]
    assert "mlx_research.evaluation" in graph["mlx_research.train.tasks.base"]  # its __init__
    assert "mlx_research.errors" in graph["mlx_research.main"]  # imported inside a function


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "mlx_research" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "mlx_research"


def test_the_checks_find_bad_imports_in_a_made_up_package(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "data/__init__.py": "",
        "data/reader.py": """
            def read():
                from ..train import loop  # upward, relative, inside a function
            """,
        "data/other.py": "import experiments.x\n",
        "models/__init__.py": "",
        "models/net.py": "from mlx_research.data import reader\n",  # forbidden although lower
        "tools/__init__.py": "",
        "tools/convert.py": "from mlx_research.models import net\n",  # same layer, not LATERAL
        "widgets.py": "",  # in no layer
        "train/__init__.py": "import importlib\nimportlib.import_module('x')\n",
        "train/loop.py": "from mlx_research import errors\n",
    })
    problems = layering_violations(root, PACKAGE)
    expected = [
        ("mlx_research/data/reader.py:3: from ..train import loop", "train (layer 4) lies above"),
        ("mlx_research/data/other.py:1: import experiments.x", "never imports experiments/"),
        ("mlx_research/models/net.py:1: from mlx_research.data import reader", "never data"),
        ("mlx_research/tools/convert.py:1: from mlx_research.models import net", "LATERAL"),
        ("mlx_research/widgets.py: 'widgets' is in no layer", ""),
        ("mlx_research/train/__init__.py:2: importlib.import_module('x')", "DYNAMIC_IMPORTS"),
    ]
    for where, why in expected:
        assert any(p.startswith(where) and why in p for p in problems), (where, problems)
    assert len(problems) == len(expected), problems


@pytest.mark.parametrize("files, cycle", [
    ({"a.py": "from mlx_research import b\n", "b.py": "def f():\n    import mlx_research.a\n"},
     ["mlx_research.a", "mlx_research.b", "mlx_research.a"]),
    ({"p/__init__.py": "from .x import X\n", "p/x.py": "X = 1\n",  # a package importing its
      "q.py": "from mlx_research.p.x import X\n"}, None),        # modules is no cycle
    ({"train/__init__.py": "", "train/tasks/__init__.py": "import importlib\n",
      "train/tasks/t.py": "from mlx_research.train.config import f\n",
      "train/config.py": "from mlx_research.train.tasks import get_task\n"},
     ["mlx_research.train.config", "mlx_research.train.tasks", "mlx_research.train.tasks.t",
      "mlx_research.train.config"]),  # a task imports the registry back through the config
])
def test_the_cycle_check_on_made_up_packages(tmp_path, files, cycle):
    root = _write(tmp_path, {"__init__.py": "", **files})
    cycles = import_cycles(import_graph(root, PACKAGE))
    assert cycles == ([cycle] if cycle else [])
