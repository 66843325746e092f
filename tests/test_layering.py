"""The package's shape, held by reading its source:

- data flows one way: config → graph → calibrate → quantize → evaluate → engine (workspace, measure, record) →
  search → report / track → jobs → api → cli; a module imports from its own layer or below, never above;
- no import cycle between modules (type-only imports aside);
- a study's pieces are reached through the search package: nothing outside it imports search's modules;
- modes own their choice: nothing outside quantize/modes/ (and the builder that runs them) imports the static mode,
  and no mode's name is written as a string outside quantize/modes/;
- no module over 400 lines.

Every check reads imports inside functions too, and has a test that shows it can fail."""

from __future__ import annotations

import ast
from pathlib import Path

from autoquant.quantize import registry

PACKAGE = Path(__file__).resolve().parents[1] / "autoquant"
MAX_LINES = 400

# Lower number = lower layer. Keys are module paths relative to the package, matched by longest prefix.
LAYERS = {
    "errors": 0, "fileio": 0, "versions": 0, "machine": 0, "usercode": 0, "progress": 0, "config": 0,
    "graph": 1, "data": 1, "runtime": 1,
    "calibrate": 2,
    "quantize": 3,
    "evaluate": 4, "finetune": 4,
    "sources": 5, "zoo": 5, "workspace": 5, "measure": 5, "record": 5, "engine": 5,
    "search": 6,
    "report": 7, "track": 7, "jobs": 8,
    "api": 9, "cli": 10, "__init__": 10,
}
# The modules that may import the static mode: the modes themselves, and the builder that runs them in order.
STATIC = "quantize.modes.static"
MAY_IMPORT_STATIC = ("quantize.modes", "quantize.build")


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"module autoquant.{module} has no layer: add it to LAYERS")


def _type_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside `if TYPE_CHECKING:` blocks."""
    out = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
                                         or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports(rel: Path, source: str, *, type_only: bool = True) -> set[str]:
    """autoquant modules imported by the module at `rel` (relative to the package) whose text is `source`; without
    `type_only`, those imported under `if TYPE_CHECKING:` are left out."""
    package = list(rel.parts[:-1])
    tree = ast.parse(source)
    skip = set() if type_only else _type_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("autoquant."):
                target = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            for name in names:  # `from . import sources` names a module
                candidate = PACKAGE.joinpath(*target, name)
                found.add(".".join([*target, name]) if candidate.with_suffix(".py").exists() or candidate.is_dir()
                          else ".".join(target))
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("autoquant.")}
    return {m for m in found if m}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        module = ".".join(rel.parts if rel.name != "__init__" else rel.parts[:-1]) or "__init__"
        if not module.startswith("search_spaces"):
            out[module] = path
    return out


def upward(sources: dict[str, tuple[Path, str]]) -> list[str]:
    violations = []
    for module, (rel, text) in sources.items():
        for target in imports(rel, text):
            if layer(target) > layer(module):
                violations.append(f"autoquant.{module} (layer {layer(module)}) imports autoquant.{target} (layer {layer(target)})")
    return violations


def cycles(sources: dict[str, tuple[Path, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module in the import graph (Tarjan)."""
    names = set(sources)

    def resolve(target: str) -> str | None:
        parts = target.split(".")
        return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in names), None)

    graph = {m: {r for t in imports(rel, text, type_only=False) if (r := resolve(t)) and r != m}
             for m, (rel, text) in sources.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def around_search(sources: dict[str, tuple[Path, str]]) -> list[str]:
    """Imports of a module inside search/ from outside it: the search package's own names are the way in."""
    return [f"autoquant.{m} imports autoquant.{t}" for m, (rel, text) in sources.items()
            if not m.startswith("search") for t in imports(rel, text) if t.startswith("search.") and t != "search.trial_attrs"]


def static_imports(sources: dict[str, tuple[Path, str]]) -> list[str]:
    return [f"autoquant.{m} imports the static mode" for m, (rel, text) in sources.items()
            if not m.startswith(MAY_IMPORT_STATIC) and STATIC in imports(rel, text)]


def mode_names(sources: dict[str, tuple[Path, str]], names: tuple[str, ...]) -> list[str]:
    """String constants equal to a mode's name, outside quantize/modes/."""
    out = []
    for module, (_, text) in sources.items():
        if module.startswith("quantize.modes"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in names:
                out.append(f"autoquant.{module}:{node.lineno}: {node.value!r}")
    return out


def package_sources() -> dict[str, tuple[Path, str]]:
    return {m: (p.relative_to(PACKAGE), p.read_text()) for m, p in modules().items()}


def test_no_module_imports_from_a_layer_above_it():
    assert upward(package_sources()) == []


def test_no_import_cycle():
    assert cycles(package_sources()) == []


def test_outside_search_only_the_search_package_is_imported():
    assert around_search(package_sources()) == []


def test_only_the_modes_and_the_builder_know_a_mode():
    sources = package_sources()
    assert static_imports(sources) == []
    assert mode_names(sources, registry.names()) == []


def test_no_module_is_over_400_lines():
    assert [f"{m}: {len(p.read_text().splitlines())}" for m, p in modules().items()
            if len(p.read_text().splitlines()) > MAX_LINES] == []


def test_the_checkers_see_a_violation():
    """The contract tests above must be able to fail: relative, absolute and in-function imports are seen."""
    source = "from ..cli import main\nimport autoquant.jobs.search\ndef f():\n    from . import layers\n"
    assert imports(Path("graph/x.py"), source) == {"cli", "jobs.search", "graph.layers"}
    assert layer("graph.layers") < layer("cli")
    assert imports(Path("jobs/search.py"), (PACKAGE / "jobs" / "search.py").read_text()) >= {"engine", "search"}
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\nfrom .c import Y\n"
    assert imports(Path("a.py"), typed, type_only=False) == {"c"}
    fake = {"a": (Path("a.py"), "from .b import g\n"), "b": (Path("b.py"), "def g():\n    from .a import h\n"),
            "c": (Path("c.py"), "from .search.study import Study\nx = 'static'\n"),
            "search.study": (Path("search/study.py"), ""), "quantize.x": (Path("quantize/x.py"), "from .modes import static\n")}
    assert cycles(fake) == [["a", "b"]]
    assert around_search(fake) == ["autoquant.c imports autoquant.search.study"]
    assert static_imports(fake) == ["autoquant.quantize.x imports the static mode"]
    assert mode_names(fake, ("static",)) == ["autoquant.c:2: 'static'"]
