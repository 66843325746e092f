"""Data flows one way through the package: config → graph → calibrate → quantize → evaluate → engine (workspace,
measure, record) → search → report / track → jobs → api → cli. A module may import from its own layer or below,
never above; this test reads every module's imports (including those inside functions) to hold that."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autoquant"

# Lower number = lower layer. Keys are module paths relative to the package, matched by longest prefix.
LAYERS = {
    "errors": 0, "fileio": 0, "versions": 0, "usercode": 0, "progress": 0, "config": 0,
    "graph": 1, "data": 1, "runtime": 1,
    "calibrate": 2,
    "quantize": 3,
    "evaluate": 4, "finetune": 4,
    "sources": 5, "zoo": 5, "workspace": 5, "measure": 5, "record": 5, "engine": 5,
    "search": 6,
    "report": 7, "track": 7, "jobs": 8,
    "api": 9, "cli": 10, "__init__": 10,
}  # fmt: skip


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"module autoquant.{module} has no layer: add it to LAYERS")


def imports(rel: Path, source: str) -> set[str]:
    """autoquant modules imported by the module at `rel` (relative to the package) whose text is `source`."""
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(source)):
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
                          else ".".join(target))  # fmt: skip
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("autoquant.")}
    return {m for m in found if m}


def test_no_module_imports_from_a_layer_above_it():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        module = ".".join(rel.parts if rel.name != "__init__" else rel.parts[:-1]) or "__init__"
        if module.startswith("search_spaces"):
            continue
        for target in imports(path.relative_to(PACKAGE), path.read_text()):
            if layer(target) > layer(module):
                violations.append(f"autoquant.{module} (layer {layer(module)}) imports autoquant.{target} "
                                  f"(layer {layer(target)})")  # fmt: skip
    assert violations == []


def test_the_checker_sees_imports_and_a_violation():
    """The contract test above must be able to fail: relative, absolute and in-function imports are seen."""
    source = "from ..cli import main\nimport autoquant.jobs.search\ndef f():\n    from . import layers\n"
    assert imports(Path("graph/x.py"), source) == {"cli", "jobs.search", "graph.layers"}
    assert layer("graph.layers") < layer("cli")
    assert imports(Path("jobs/search.py"), (PACKAGE / "jobs" / "search.py").read_text()) >= {"engine", "search.study"}
