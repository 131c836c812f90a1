"""import-linter's contracts in pyproject.toml are the one source of the import rules, and they
cover the whole repository: every module of every package sits in a layer, and the domain's
forbidden list names every runtime dependency (a new one would otherwise be allowed there)."""

from __future__ import annotations

import importlib.metadata
import re

from support import ROOT, import_contract, import_layers

PACKAGES = ("bench", "lifecycle", "projections", "consumers", "schemas")


def modules_to_place() -> set[str]:
    """`lifecycle`'s modules and subpackages one by one; the other packages as a whole."""
    found = {package for package in PACKAGES if package != "lifecycle"}
    for path in (ROOT / "lifecycle").iterdir():
        if path.suffix == ".py" and path.stem != "__init__":
            found.add(f"lifecycle.{path.stem}")
        elif (path / "__init__.py").exists():
            found.add(f"lifecycle.{path.name}")
    return found


def test_every_module_of_every_package_is_in_a_layer() -> None:
    placed = [name for layer in import_layers() for name in layer]
    assert len(placed) == len(set(placed)), "a module in two layers"
    assert set(placed) == modules_to_place()


def test_the_domains_forbidden_list_names_every_runtime_dependency() -> None:
    importable = importlib.metadata.packages_distributions()
    by_distribution: dict[str, set[str]] = {}
    for name, distributions in importable.items():
        for distribution in distributions:
            by_distribution.setdefault(normalise(distribution), set()).add(name)
    requirements = importlib.metadata.requires("lifecycle") or []
    runtime = {
        normalise(re.split(r"[\s\[<>=;!~]", requirement, maxsplit=1)[0])
        for requirement in requirements
        if "extra ==" not in requirement
    }
    imported_as = {name for distribution in runtime for name in by_distribution[distribution]}
    forbidden = set(import_contract("domain")["forbidden_modules"])
    assert imported_as - {"eventsourcing"} <= forbidden  # eventsourcing.* is, but .domain
    assert "eventsourcing.*" in forbidden


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()
