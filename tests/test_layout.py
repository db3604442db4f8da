"""The package's layout: no import cycle, every module says what it holds, a small public API.

The import graph is read from the source (every ``import`` statement in every scope, function
bodies included), so a lazy import inside a function counts like one at the top. Imports under
``if TYPE_CHECKING:`` are left out: they exist only for the type checker and never run. Names
loaded with ``importlib`` are not edges: that is how the criteria registry loads its built-in
plug-ins by name, the plug-ins importing the registry and not the other way round.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import autoprune

PACKAGE = Path(autoprune.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_modules(name: str, path: Path, type_level: bool = False) -> set[str]:
    """The autoprune modules ``name`` imports, anywhere in its code; TYPE_CHECKING blocks too
    with ``type_level``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_level:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "autoprune")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] == "autoprune":
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    found.add(child if child in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return {m for m in found if m in MODULES}


GRAPH = {name: _imported_modules(name, path) for name, path in MODULES.items()}
# With the imports that exist only for the type checker: a reader meets those circles too.
TYPE_GRAPH = {name: _imported_modules(name, path, True) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_package_has_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_even_for_the_type_checker() -> None:
    cycles = _cycles(TYPE_GRAPH)
    assert not cycles, "type-level import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_policy_is_plain_data() -> None:
    """Reading, checking and writing a policy file loads neither torch nor torch-pruning."""
    code = (
        "import sys\n"
        "from autoprune.policy import Policy\n"
        "p = Policy.from_yaml('model: {name: resnet20, num_classes: 10, input_shape: [1, 28, 28]}\\n'\n"
        "                     'groups: {conv1: {rate: 0.3, criterion: fpgm}}\\n')\n"
        "assert Policy.from_yaml(p.to_yaml()) == p and p.retrain.epochs == 1.0\n"
        "p.validate_against(p.model, ['conv1'])\n"
        "heavy = [m for m in ('torch', 'torch_pruning') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above would catch a cycle (here a made-up one through three modules)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_groups_sits_at_the_bottom_of_the_engine() -> None:
    """What a group is must not depend on what is done with groups."""
    engine = {
        "autoprune.budget",
        "autoprune.criteria",
        "autoprune.depth",
        "autoprune.macs",
        "autoprune.prune",
        "autoprune.space",
        "autoprune.policy",
    }
    assert not GRAPH["autoprune.groups"] & engine
    for user in ("autoprune.budget", "autoprune.depth", "autoprune.space", "autoprune.prune"):
        assert not GRAPH[user] & {"autoprune.prune"} - {user}, f"{user} imports surgery"


def test_the_engine_knows_nothing_of_optuna_or_ray() -> None:
    """``evaluate`` and everything it uses can run without the search service."""
    service = {
        m
        for m in MODULES
        if m.startswith(("autoprune.executors", "autoprune.runner", "autoprune.study"))
    }
    service |= {"autoprune.export", "autoprune.sampler", "autoprune.prepare"}
    seen: set[str] = set()
    todo = ["autoprune.evaluate"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH[module])
    assert not seen & service
    for module in seen:
        source = MODULES[module].read_text()
        assert "import optuna" not in source and "import ray" not in source, module


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_holds(name: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, f"{name} needs a first docstring line"


@pytest.mark.slow  # fresh interpreter: make test runs it
def test_public_api_is_lazy() -> None:
    """``import autoprune`` loads none of torch, Optuna or Ray; a public name loads on use."""
    code = (
        "import sys, autoprune\n"
        "heavy = [m for m in ('torch', 'optuna', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(autoprune.search) and callable(autoprune.criteria.register)\n"
        "assert sorted(autoprune.__all__) == sorted(n for n in autoprune.__all__ if hasattr(autoprune, n))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_docstring_example_runs(
    trained_base: Path,
    warm_sensitivity: Path,
    tmp_path: Path,
    autoprune_home: Path,
    run_python: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """The package docstring's example, run as written in a fresh interpreter.

    The embedded default's base checkpoint is put where the example's search looks for it
    (instead of training one), then the example must search, save, reload, re-evaluate,
    replay and load a checkpoint, and its numbers must agree with each other.
    """
    doc = autoprune.__doc__ or ""
    lines = doc.split("::\n\n", 1)[1].splitlines()
    end = next(i for i, line in enumerate(lines) if line and not line.startswith("    "))
    example = "\n".join(line[4:] for line in lines[:end]).strip()
    assert "autoprune.search(" in example and "autoprune.replay(" in example
    assert example in (PACKAGE.parent / "README.md").read_text(), "README shows another example"
    cached = autoprune_home / "base" / "resnet20-mnist5k.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(trained_base.read_bytes())
    check = (
        "\nimport torch\n"
        "assert best.macs_ratio <= 0.5\n"
        "assert abs(metrics.macs_ratio - best.macs_ratio) < 1e-9, (metrics.macs_ratio, best.macs_ratio)\n"
        "assert abs(result.macs_ratio - best.macs_ratio) < 1e-9\n"
        "assert 0.0 <= result.test_accuracy <= 1.0\n"
        "assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)\n"
        "print('example ok')\n"
    )
    proc = run_python(example + check, timeout=600)
    assert "example ok" in proc.stdout
    assert "sensitivity: pruning" not in proc.stdout, "the session's cached curves were read"
    assert (tmp_path / "pruned.pt").is_file() and (tmp_path / "best.yaml").is_file()
