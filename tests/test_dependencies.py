"""Dependencies (issue 15): every package the bot's code imports is declared in pyproject.toml,
and the lock files pin versions that the declared ranges (floors above published
vulnerabilities) admit, for the same set of packages."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import importlib.util
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared(extra: str | None = None) -> dict[str, Requirement]:
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    if extra:
        found += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return {canonicalize_name(r.name): r for r in found}


@cache
def owners() -> dict[Path, str]:
    """Installed file → the distribution that installed it."""
    found: dict[Path, str] = {}
    for dist in metadata.distributions():
        for file in dist.files or ():
            found[Path(dist.locate_file(file)).resolve()] = canonicalize_name(dist.metadata["Name"])
    return found


def distribution_of(module: str) -> str | None:
    """The distribution providing `module` (None: the standard library or this project)."""
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:size]))
        except (ImportError, ValueError):
            continue
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        origin = Path(spec.origin).resolve()
        if ROOT in origin.parents and ".venv" not in origin.parts:
            return None  # the project itself
        return owners().get(origin)
    return None


def imported_modules() -> set[str]:
    found: set[str] = set()
    for path in [*(ROOT / "bot").rglob("*.py"), ROOT / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return {m for m in found if m.split(".")[0] not in sys.stdlib_module_names}


def test_every_imported_package_is_declared() -> None:
    wanted = declared()
    missing = {}
    for module in sorted(imported_modules()):
        dist = distribution_of(module)
        if dist is not None and dist not in wanted:
            missing[module] = dist
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            name, _, rest = line.partition("==")
            found[canonicalize_name(name)] = rest.split()[0].rstrip(";\\")
    return found


@pytest.mark.parametrize(
    ("lock", "extra"), [("requirements.lock", None), ("requirements-dev.lock", "test")]
)
def test_the_lock_pins_what_pyproject_admits(lock: str, extra: str | None) -> None:
    pinned = pins(ROOT / lock)
    for name, requirement in declared(extra).items():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        assert name in pinned, f"{name} is declared but not in {lock}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, outside {requirement.specifier}"
        )


def test_the_dev_lock_agrees_with_the_deployment_lock() -> None:
    deployed, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    assert {n: v for n, v in dev.items() if n in deployed} == deployed
