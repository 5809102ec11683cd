"""Imports point down only: teams / CLI / scheduler → commands → domain and auth.

Only `bot/teams/` and `app.py` may import the Bot Framework SDK, so it can be swapped (for the
Microsoft 365 Agents SDK) by touching those alone; the domain never imports a web or bot
framework, so the ledger is tested and used without them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOT_FRAMEWORK_SDK = ("botbuilder", "botframework", "msrest")


def imports(path: Path) -> set[str]:
    """Every absolute module name `path` imports, at any depth (function-level ones too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "migrations" not in p.parts)


def starts(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_only_the_teams_edge_and_app_import_the_bot_framework_sdk() -> None:
    allowed = {ROOT / "app.py", *sources("bot/teams")}
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imports(path) if starts(m, BOT_FRAMEWORK_SDK)
        )
        for path in sources("bot")
        if path not in allowed
    }
    assert {k: v for k, v in offenders.items() if v} == {}


LAYERS = {
    # folder: modules it must not import
    "bot/domain": (
        "bot.auth",
        "bot.commands",
        "bot.teams",
        "bot.scheduler",
        "bot.__main__",
        "app",
        "bot.app",
        "aiohttp",
        "msal",
        "requests",
        *BOT_FRAMEWORK_SDK,
    ),
    "bot/auth": ("bot.commands", "bot.teams", "bot.scheduler", "bot.__main__", "app", "bot.app"),
    "bot/commands": (
        "bot.teams",
        "bot.scheduler",
        "bot.__main__",
        "app",
        "bot.app",
        *BOT_FRAMEWORK_SDK,
    ),
}


@pytest.mark.parametrize("folder", list(LAYERS))
def test_imports_point_down(folder: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imports(path) if starts(m, LAYERS[folder]))
        for path in sources(folder)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_imports() -> None:
    # The check itself works: the edge does import the SDK, and the app imports the edge.
    assert any(starts(m, BOT_FRAMEWORK_SDK) for m in imports(ROOT / "bot/teams/edge.py"))
    assert "bot.teams.edge" in imports(ROOT / "bot/app.py")
