"""The core is pure computation: no Ray, boto3 or network imports (DESIGN, HATS-style layers)."""

import ast
from pathlib import Path

FORBIDDEN = {"ray", "boto3", "botocore", "requests", "urllib", "http", "socket", "astroquery"}
CORE = Path(__file__).resolve().parents[1] / "ray_app" / "core"


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_core_imports_nothing_from_the_outside_world():
    files = sorted(CORE.glob("*.py"))
    assert files
    bad = {(f.name, m) for f in files for m in _imports(f) if m in FORBIDDEN}
    assert not bad, f"ray_app/core must stay pure computation: {sorted(bad)}"
