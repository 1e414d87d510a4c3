"""Import structure of the package, read from the source with `ast` (nothing is imported): every
`import` counts, at module level or inside a function, since a function-local import only delays
a cycle to the first call."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "uwav"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The uwav modules one import statement depends on."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: resolve against the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        # `from a import b` imports the module a.b if there is one, else takes b from a.
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for name in names:
        while name and name not in modules:  # `import a.b.c` of a non-uwav or unknown name
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """uwav module -> the uwav modules it imports. The `__init__` of the packages above an imported
    module, which Python runs first, is left out: it is a dependency of every submodule, and
    counting it would make every package that imports its own submodules a cycle."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= _imported(node, module, path.name == "__init__.py", modules)
        graph[module] = targets - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_graph_sees_function_local_imports() -> None:
    graph = import_graph()
    assert "uwav.synthetic.media" in graph["uwav.synthetic.synthesize"]  # imported inside synth_main
    assert "uwav.features.official" in graph["uwav.synthetic.store_import"]


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _imports_between(importers: tuple[str, ...], imported: str) -> set[tuple[str, str]]:
    return {
        (module, target)
        for module, targets in import_graph().items()
        if any(_in(module, package) for package in importers)
        for target in targets
        if _in(target, imported)
    }


def test_datasets_never_import_features() -> None:
    assert _imports_between(("uwav.datasets",), "uwav.features") == set()


def test_readers_and_encoders_never_import_the_synthetic_world() -> None:
    assert _imports_between(("uwav.datasets", "uwav.features"), "uwav.synthetic") == set()


def test_cycles_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_stage_module_imports_another() -> None:
    """What several stages read lives in `uwav.stages.inputs` / `uwav.stages.tables`; a stage
    module importing another would pull that stage's code into its own fingerprint."""
    from uwav.stages.planner import STAGES

    stage_modules = {f"uwav.stages.{stage}" for stage in STAGES}
    offending = {
        (module, target)
        for module, targets in import_graph().items()
        if module in stage_modules
        for target in targets & stage_modules
    }
    assert offending == set()


def test_the_labels_package_loads_no_feature_store() -> None:
    """`uwav.labels` (which the HAN's losses and training import) once re-exported the released
    pseudo-label reader, whose feature readers load zarr: ~0.3 s on every import for nothing."""
    code = "import sys, uwav.labels; print(sorted(m for m in sys.modules if m.split('.')[0] == 'zarr' or m == 'uwav.features.store'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
