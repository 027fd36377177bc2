"""The package's import graph, read from its source: the runtime never imports the offline
preparation (`bridgegap_jax.prepare`, which the runtime only runs as a command), no module
imports itself through others (an import cycle), and no wing imports one on a higher floor."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "bridgegap_jax"
PREPARE = "bridgegap_jax.prepare"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, at its top or inside a function."""
    name, targets = module_name(path), []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets += [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # `from module import function`: the module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported(path, modules) for path in paths}


def is_prepare(module: str) -> bool:
    return module == PREPARE or module.startswith(PREPARE + ".")


def test_the_graph_is_read():  # the two tests below would pass on an empty graph
    graph = import_graph()
    assert "bridgegap_jax.data.catalog" in graph["bridgegap_jax.prepare.cli"]
    assert "bridgegap_jax.run.trainer" in graph["bridgegap_jax.main"]  # an import inside a function


def test_the_runtime_never_imports_the_preparation():
    offenders = {
        module: sorted(filter(is_prepare, targets))
        for module, targets in import_graph().items()
        if not is_prepare(module) and any(map(is_prepare, targets))
    }
    assert offenders == {}


def test_the_package_has_no_import_cycle():
    graph, done, path = import_graph(), set(), []

    def visit(module):  # depth first; a module met again on the current path closes a cycle
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


# The floors of the package, lowest first: a module imports its own floor or lower ones, never higher.
# prepare/ and bench/ stand beside the runtime: each may use the wings, none of the wings uses them.
FLOORS = {
    "base": 0,
    "model": 1,
    "data": 1,
    "run": 2,
    "explain": 3,
    "prepare": 3,
    "bench": 3,
    "main": 4,
    "predict": 4,
    "export": 4,
    "report": 4,
}


def wing(module: str) -> str:
    """bridgegap_jax.run.steps -> run; the package's own __init__ -> ''."""
    return module.split(".")[1] if "." in module else ""


def floor(module: str) -> int:
    return FLOORS[wing(module)] if wing(module) else 0


def test_every_module_sits_on_a_floor():
    unplaced = sorted({wing(module) for module in import_graph()} - set(FLOORS) - {""})
    assert unplaced == []


def test_no_import_points_to_a_higher_floor():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if floor(target) > floor(module)
    )
    assert upward == []


def test_model_and_data_stand_apart():  # the model reads no data code, the data no model code
    crossing = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if {wing(module), wing(target)} == {"model", "data"}
    )
    assert crossing == []


def test_the_top_of_the_package_is_small():
    entries = [p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 12, sorted(entries)
