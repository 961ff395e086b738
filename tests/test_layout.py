"""The package layout's arrows point one way: domain <- store <- runtime <- web <- daemon <- cli.

A module may import its own package and the packages below it, never one above: the Runtime
knows nothing of HTTP, the web layer nothing of the daemon that configures it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "runtimed"

#: What each part of the package may import from runtimed (besides itself).
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "store": {"domain"},
    "runtime": {"domain", "store"},
    "web": {"domain", "store", "runtime"},
    "daemon": {"domain", "store", "runtime", "web"},
    "cli": {"domain", "store", "runtime", "web", "daemon"},
}


def part_of(module: Path) -> str:
    relative = module.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(module: Path) -> set[str]:
    """The top-level parts of runtimed that ``module`` imports."""
    package = module.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = (*base, *(node.module.split(".") if node.module else ()))
            else:
                target = tuple((node.module or "").split("."))
            names = [target] if len(target) > 1 else [(*target, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [tuple(alias.name.split(".")) for alias in node.names]
        else:
            continue
        found.update(name[1] for name in names if name[0] == "runtimed" and len(name) > 1)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if part_of(p) in ALLOWED)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_what_lies_below_it(module):
    part = part_of(module)
    upward = imported_parts(module) - ALLOWED[part] - {part, "__version__"}
    assert not upward, f"{module.relative_to(PACKAGE)} ({part}) imports {sorted(upward)}"


def test_every_part_of_the_package_is_placed_in_the_layout():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert parts <= set(ALLOWED), parts - set(ALLOWED)
