"""The package layout's arrows point one way: domain <- store <- runtime <- (agents, web) <- daemon <- cli,
and client <- cli.

A module may import its own package and the packages below it, never one above: the Runtime
knows nothing of HTTP, the web layer nothing of the daemon that configures it. The terminal
client stands beside the server: it shares the domain and the JSON shapes (the codec and the
web schemas), and nothing else of it.
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
    "agents": {"domain", "runtime"},
    "web": {"domain", "store", "runtime"},
    "daemon": {"domain", "store", "runtime", "agents", "web"},
    "client": {"domain", "store", "web"},
    "cli": {"domain", "store", "runtime", "agents", "web", "daemon", "client"},
}

#: Of the parts ``client`` may import, the only modules it may use: the shared JSON shapes.
CLIENT_SHARES: dict[str, tuple[str, ...]] = {
    "store": ("runtimed", "store", "codec"),
    "web": ("runtimed", "web", "schemas"),
}

#: Third-party packages only one part of runtimed may import: the ACP SDK and its pydantic, and the
#: openai library of the built-in chat agent.
CONFINED: dict[str, str] = {"acp": "agents", "pydantic": "agents", "openai": "agents"}


def part_of(module: Path) -> str:
    relative = module.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_names(module: Path) -> set[tuple[str, ...]]:
    """The dotted names ``module`` imports, split into their parts (relative imports resolved)."""
    package = module.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = (*base, *(node.module.split(".") if node.module else ()))
            else:
                target = tuple((node.module or "").split("."))
            found.update([target] if len(target) > 1 else [(*target, alias.name) for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(tuple(alias.name.split(".")) for alias in node.names)
    return found


def imported_parts(module: Path) -> set[str]:
    """The top-level parts of runtimed that ``module`` imports."""
    return {name[1] for name in imported_names(module) if name[0] == "runtimed" and len(name) > 1}


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if part_of(p) in ALLOWED)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_what_lies_below_it(module):
    part = part_of(module)
    upward = imported_parts(module) - ALLOWED[part] - {part, "__version__"}
    assert not upward, f"{module.relative_to(PACKAGE)} ({part}) imports {sorted(upward)}"


CLIENT_MODULES = sorted((PACKAGE / "client").rglob("*.py"))


@pytest.mark.parametrize("module", CLIENT_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_client_shares_only_the_codec_and_the_schemas_with_the_server(module):
    strays = []
    for name in imported_names(module):
        if name[0] == "runtimed" and len(name) > 1 and name[1] in CLIENT_SHARES:
            shared = CLIENT_SHARES[name[1]]
            if name[: len(shared)] != shared:
                strays.append(".".join(name))
    assert not strays, f"{module.relative_to(PACKAGE)} imports {sorted(strays)}"


def test_every_part_of_the_package_is_placed_in_the_layout():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert parts <= set(ALLOWED), parts - set(ALLOWED)


@pytest.mark.parametrize("module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_acp_sdk_and_its_pydantic_stay_inside_agents(module):
    packages = {name[0] for name in imported_names(module)}
    strays = {package for package, part in CONFINED.items() if package in packages and part_of(module) != part}
    assert not strays, f"{module.relative_to(PACKAGE)} imports {sorted(strays)}"
