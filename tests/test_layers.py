"""The folder tree is the architecture (HATS-style layers): imports point one way, no cycles.

Every import counts, including the ones inside functions: a lazy import hides a cycle from
Python at start-up but not from a reader.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ray_app"
FORBIDDEN_IN_CORE = {"ray", "boto3", "botocore", "requests", "urllib", "http", "socket",
                     "astroquery"}
# Lowest first; a module may import from its own layer or any layer before it.
LAYERS = ["core", "data", "io", "engine", "pipeline", "service", "survey", "api", "cli"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(top-level name, absolute ray_app module) of every import in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target.split(".")[0], target
            if target.startswith("ray_app"):  # `from . import x` may name a module
                for a in node.names:
                    yield "ray_app", f"{target}.{a.name}"


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for top, target in _imports(path):
            if top != "ray_app":
                continue
            while target and target not in modules:  # `from .x import y` where y is a name
                target = target.rpartition(".")[0]
            if target and target != name and target != "ray_app":
                deps.add(target)
        graph[name] = deps
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def test_core_imports_nothing_from_the_outside_world():
    files = sorted((PACKAGE / "core").glob("*.py"))
    assert files
    bad = {(f.name, top) for f in files for top, _ in _imports(f) if top in FORBIDDEN_IN_CORE}
    assert not bad, f"ray_app/core must stay pure computation: {sorted(bad)}"


def test_only_the_engine_imports_ray():
    allowed = {"engine"}
    serve_wrapper = "ray_app.api.deployment"  # Ray Serve's ingress around the FastAPI app
    bad = sorted(_module_name(p) for p in PACKAGE.rglob("*.py")
                 if any(top == "ray" for top, _ in _imports(p))
                 and _layer(_module_name(p)) not in allowed and _module_name(p) != serve_wrapper)
    assert not bad, f"only ray_app/engine (and the Serve wrapper) may import ray: {bad}"


def test_imports_point_down_the_layers():
    graph = _graph()
    bad = []
    for module, deps in graph.items():
        layer = _layer(module)
        if layer is None:
            continue
        for dep in deps:
            dep_layer = _layer(dep)
            if dep_layer is not None and LAYERS.index(dep_layer) > LAYERS.index(layer):
                bad.append(f"{module} ({layer}) imports {dep} ({dep_layer})")
    assert not bad, "layers: " + "; ".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_every_layer_is_a_folder(layer):
    assert (PACKAGE / layer / "__init__.py").is_file()
