"""The layering rules of docs/architecture.md, read off the import statements (ast, no imports executed)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "actors", "envs", "learner")
# package -> packages it must not import
FORBIDDEN = {"learner": {"services", "actors", "envs"}, "envs": {"services", "actors"}, "actors": {"services"}}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def _files(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


def test_lower_layers_do_not_import_upper_ones():
    bad = []
    for pkg, banned in FORBIDDEN.items():
        for f in _files(pkg):
            for mod, _, line in _imports(f):
                if mod.split(".")[0] in banned:
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_private_import_across_packages():
    bad = []
    for pkg in PACKAGES:
        for f in _files(pkg):
            for mod, names, line in _imports(f):
                top = mod.split(".")[0]
                if top in PACKAGES and top != pkg and any(n.startswith("_") for n in names):
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {names} from {mod}")
    assert not bad, "\n".join(bad)
