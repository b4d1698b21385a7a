"""Architecture: imports point down (DESIGN.md "Layers"), no import cycles, and pictures take
what they draw rather than a trainer.

The layers and the forbidden imports are import-linter contracts in ``pyproject.toml``
(``[tool.importlinter]``); CI runs them with ``lint-imports`` and so does this file. The
cycle check below is independent of those contracts: it looks at every module of
``src/vilab``, lazy imports inside functions included.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import torch
from importlinter.cli import lint_imports

from vilab.build import build_family
from vilab.plots import density2d
from vilab.targets import BananaFamily

ROOT = Path(__file__).resolve().parents[1]


def import_cycles(graph: grimp.ImportGraph, package: str = "vilab") -> list[list[str]]:
    """The import cycles among the modules of ``package``: every strongly connected
    component of the module graph with more than one module (Tarjan's algorithm), each as
    a closed chain ``[a, b, …, a]`` of direct imports, shortest first."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] == package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w.split(".")[0] != package:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or v not in component:
                component.add(stack.pop())
            if len(component) > 1:
                components.append(component)

    for m in modules:
        if m not in index:
            visit(m)
    cycles = []
    for component in components:
        start = min(component)
        back = min(
            (
                graph.find_shortest_chain(w, start) or ()
                for w in graph.find_modules_directly_imported_by(start)
                if w in component
            ),
            key=len,
        )
        cycles.append([start, *back])
    return sorted(cycles, key=len)


def test_import_linter_contracts_are_kept() -> None:
    """Layers, acyclic siblings and the forbidden imports of ``pyproject.toml``; the report
    (which import breaks which contract) is in the captured output."""
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, "import-linter contracts broken: see the captured stdout above"


def test_no_import_cycle_between_modules_of_vilab() -> None:
    graph = grimp.build_graph("vilab", cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles in src/vilab:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_import_cycles_finds_a_cycle_and_names_its_imports() -> None:
    """The checker itself: a two-module cycle and a three-module one, on a toy graph."""
    graph = grimp.ImportGraph()
    for m in ("vilab", "vilab.a", "vilab.b", "vilab.c", "vilab.d", "vilab.e", "torch"):
        graph.add_module(m)
    for importer, imported in [
        ("vilab.a", "vilab.b"),
        ("vilab.b", "vilab.a"),
        ("vilab.c", "vilab.d"),
        ("vilab.d", "vilab.e"),
        ("vilab.e", "vilab.c"),
        ("vilab.e", "torch"),
        ("vilab.a", "vilab.c"),
    ]:
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [
        ["vilab.a", "vilab.b", "vilab.a"],
        ["vilab.c", "vilab.d", "vilab.e", "vilab.c"],
    ]
    graph.remove_import(importer="vilab.b", imported="vilab.a")
    assert import_cycles(graph) == [["vilab.c", "vilab.d", "vilab.e", "vilab.c"]]


def test_plot_run_draws_a_family_and_a_target_without_a_trainer(tmp_path, monkeypatch) -> None:
    """plots sit below train: ``plot_run`` takes the family, the target, the records and
    the contexts, and draws a target family at the first context it is given."""
    drawn: list[str] = []
    true_density = density2d.plot_true_density
    monkeypatch.setattr(
        density2d,
        "plot_true_density",
        lambda ax, target, box: drawn.append(target.name) or true_density(ax, target, box),
    )
    torch.manual_seed(0)
    family = build_family("mean_field", dim=2, context_dim=1).double()
    records = [{"step": s, "bound": -3.0 + s, "kl": 2.0 - s} for s in range(3)]
    density2d.plot_run(family, BananaFamily(), records, tmp_path, eval_contexts=[0.8, 1.2])
    assert drawn and set(drawn) == {"banana_family[c=0.8]"}
    for name in ["true_density", "learned_density", "layers", "training", "summary"]:
        assert (tmp_path / f"{name}.png").is_file(), name


# -- no type tests on families outside families/ and flows/ ------------------------------------
def family_classes() -> set[str]:
    """The names of the classes that :mod:`vilab.families` and :mod:`vilab.flows` define."""
    import importlib
    import inspect
    import pkgutil

    names = set()
    for package in ("vilab.families", "vilab.flows"):
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if inspect.isclass(obj) and obj.__module__.startswith(package):
                    names.add(name)
    return names


def family_type_tests(source: str, classes: set[str]) -> list[tuple[int, str]]:
    """``(line, class)`` of every ``isinstance(x, C)`` / ``issubclass`` / ``type(x) is C`` in
    ``source`` whose C (or a member of a tuple or ``A | B`` of them) is one of ``classes``."""
    import ast

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Name):
            return [node.id]
        if isinstance(node, ast.Attribute):
            return [node.attr]
        if isinstance(node, ast.Tuple):
            return [n for e in node.elts for n in names(e)]
        if isinstance(node, ast.BinOp):
            return names(node.left) + names(node.right)
        return []

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
            "isinstance",
            "issubclass",
        ):
            hit = [n for n in names(node.args[1]) if n in classes] if len(node.args) > 1 else []
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
            is_type = getattr(node.left.func, "id", None) == "type"
            hit = [n for c in node.comparators for n in names(c) if n in classes and is_type]
        else:
            continue
        found += [(node.lineno, n) for n in hit]
    return found


def test_no_module_outside_families_and_flows_type_tests_a_family() -> None:
    """What a trainer, an evaluation or a picture needs of a family is part of the Family
    contract (DESIGN.md §8): no module outside families/ and flows/ branches on its type."""
    classes = family_classes()
    src = ROOT / "src" / "vilab"
    offenders = []
    for path in sorted(src.rglob("*.py")):
        if path.relative_to(src).parts[0] in ("families", "flows"):
            continue
        for line, name in family_type_tests(path.read_text(), classes):
            offenders.append(f"{path.relative_to(src)}:{line} {name}")
    assert not offenders, "family type tests outside families/ and flows/:\n" + "\n".join(offenders)


def test_the_type_test_check_finds_a_planted_one() -> None:
    classes = family_classes()
    assert {"SemiImplicit", "FlowFamily", "AtContext", "IAF"} <= classes
    planted = (
        "def f(family, flow):\n"
        "    if isinstance(family, SemiImplicit):\n"
        "        return 1\n"
        "    if isinstance(flow, (int, vilab.flows.iaf.IAF)) or isinstance(flow, Planar | str):\n"
        "        return 2\n"
        "    return type(family) is FlowFamily\n"
    )
    found = family_type_tests(planted, classes)
    assert sorted(found) == [(2, "SemiImplicit"), (4, "IAF"), (4, "Planar"), (6, "FlowFamily")]
    assert family_type_tests("isinstance(x, torch.Tensor)\n", classes) == []
