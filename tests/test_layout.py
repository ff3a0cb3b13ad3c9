"""The layout rules of docs/architecture.md, checked on the source: no import cycle among the
package's modules (imports inside functions counted too), the one-way order of the inference
front end (`video` <- `visualize`, `predict` <- `segmenter` <- `inference`), and scripts in
tools/ and benchmarks/ that import the installed package only (no `sys.path` edits)."""

from __future__ import annotations

import ast
from pathlib import Path

from model_fixtures import REPO

ROOT = Path(REPO)


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "maskspine").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    for path in (ROOT / "cli").glob("*.py"):
        found[f"maskspine.cli.{path.stem}".removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `path` imports, at the top or inside functions; `from pkg import
    module` counts as the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            named = submodules & set(modules)
            found |= named or ({node.module} & set(modules))
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & set(modules)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dependency in sorted(graph[name]):
            if state.get(dependency) == 1:
                cycles.append(stack[stack.index(dependency) :] + [dependency])
            elif dependency not in state:
                visit(dependency, [*stack, dependency])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_inference_front_end_imports_one_way():
    graph = _graph()
    front = {"predict", "video", "visualize", "segmenter", "inference"}
    uses = {m: {d.split(".")[-1] for d in graph[f"maskspine.{m}"]} & front for m in front}
    assert uses["video"] == set()  # input and output only
    assert uses["visualize"] == {"video"}
    assert uses["predict"] == set()  # running the model: neither video nor drawing
    assert uses["segmenter"] == {"predict", "visualize"}
    assert uses["inference"] == {"predict", "segmenter", "video", "visualize"}


def test_tools_and_benchmarks_import_the_installed_package_only():
    """No script puts this repository (the package, tests/, benchmarks/, tools/) on
    `sys.path`; the only edits allowed add the original tensorflow/tpu checkout (`TPUSRC`),
    whose code two scripts run."""
    offenders = []
    for folder in ("tools", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for line in text.splitlines():
                if "sys.path" in line and "ROOT" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
            if "sys.path" in text and "TPUSRC" not in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
