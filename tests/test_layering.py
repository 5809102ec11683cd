"""Imports point down only (STYLE.md): teams and the CLI → commands → domain/auth.

Only `bot/teams/` and `app.py` may import the Bot Framework SDK (botbuilder, botframework,
msrest), so it can be swapped for its successor by touching those alone; `bot/domain` imports
neither the SDK nor an HTTP client (aiohttp, msal, requests), so the ledger runs without a bot.
Imports are read with `ast` (every `import`, also inside functions and under TYPE_CHECKING),
not grepped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "bot").rglob("*.py"), ROOT / "app.py"])
BOT_FRAMEWORK = ("botbuilder", "botframework", "msrest")
#: The Microsoft 365 Agents SDK (FUSION_EDGE=agents).
AGENTS_SDK = ("microsoft_agents",)
#: What both edges share: no SDK in them (bot/teams/agents_edge.py, bot/teams/edge.py use them).
EDGE_NEUTRAL = (
    "bot/teams/inbound.py",
    "bot/teams/proactive.py",
    "bot/teams/gate.py",
    "bot/teams/render.py",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, package: str) -> set[str]:
    """Every module `source` imports, as absolute dotted names; `package` is the package the
    source lives in (for relative imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{module}" if module else base
            found.add(module)
            # `from bot.domain import ledger` may import the module bot.domain.ledger.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def file_imports(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports(path.read_text(encoding="utf-8"), package)


def within(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """File → the forbidden modules it imports, for the files that import any."""
    bad = {relative(p): sorted(m for m in file_imports(p) if within(m, forbidden)) for p in files}
    return {path: found for path, found in bad.items() if found}


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def in_layer(*prefixes: str) -> list[Path]:
    return [p for p in SOURCES if relative(p).startswith(prefixes)]


EDGE = ("bot/teams/", "app.py", "bot/app.py")


def test_the_sources_are_found() -> None:
    names = {relative(p) for p in SOURCES}
    assert {
        "app.py",
        "bot/__main__.py",
        "bot/domain/ledger.py",
        "bot/commands/dispatch.py",
    } <= names
    assert in_layer("bot/teams/")


def test_only_the_teams_edge_imports_the_bot_framework_sdk() -> None:
    rest = [p for p in SOURCES if not relative(p).startswith(EDGE)]
    assert offenders(rest, BOT_FRAMEWORK) == {}
    # The edge does use it: the check above looks at the right names.
    assert offenders(in_layer(*EDGE), BOT_FRAMEWORK)


def test_only_the_teams_edge_imports_the_agents_sdk() -> None:
    rest = [p for p in SOURCES if not relative(p).startswith(EDGE)]
    assert offenders(rest, AGENTS_SDK) == {}
    assert offenders(in_layer("bot/teams/agents_edge.py"), AGENTS_SDK)


def test_what_both_edges_share_imports_neither_sdk() -> None:
    shared = in_layer(*EDGE_NEUTRAL)
    assert len(shared) == len(EDGE_NEUTRAL)
    assert offenders(shared, (*BOT_FRAMEWORK, *AGENTS_SDK)) == {}


def test_the_domain_imports_no_sdk_and_no_http_client() -> None:
    forbidden = (*BOT_FRAMEWORK, *AGENTS_SDK, "aiohttp", "msal", "requests")
    assert offenders(in_layer("bot/domain/"), forbidden) == {}


@pytest.mark.parametrize(
    ("layer", "above"),
    [
        (
            "bot/domain/",
            (
                "bot.auth",
                "bot.commands",
                "bot.teams",
                "bot.scheduler",
                "bot.__main__",
                "app",
                "bot.app",
            ),
        ),
        (
            "bot/auth/",
            ("bot.commands", "bot.teams", "bot.scheduler", "bot.__main__", "app", "bot.app"),
        ),
        ("bot/commands/", ("bot.teams", "bot.scheduler", "bot.__main__", "app", "bot.app")),
    ],
)
def test_imports_point_down(layer: str, above: tuple[str, ...]) -> None:
    assert offenders(in_layer(layer), above) == {}


def test_the_reader_sees_every_kind_of_import() -> None:
    source = (
        "import botbuilder.core as bb\n"
        "from aiohttp import web\n"
        "from ..teams import render\n"
        "from . import ledger\n"
        "from .usage import in_use\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from bot.commands.registry import Context\n"
        "def later():\n"
        "    import botframework.connector\n"
    )
    found = imports(source, "bot.domain")
    assert {
        "botbuilder.core",
        "aiohttp",
        "aiohttp.web",
        "bot.teams",
        "bot.teams.render",
        "bot.domain.ledger",
        "bot.domain.usage",
        "bot.commands.registry",
        "botframework.connector",
    } <= found
    assert within("botbuilder.core", BOT_FRAMEWORK) and not within("botbuilderish", BOT_FRAMEWORK)


INTERNALS = "bot/teams/botbuilder_internals.py"
#: botbuilder's private hooks and undocumented attributes the bot repairs or sets.
PRIVATE_NAMES = {
    "metadataCache",
    "_serialize",
    "_create_invoke_response",
    "_get_adaptive_card_invoke_value",
    "_create_adaptive_card_invoke_error_response",
}


def private_reaches(path: Path) -> list[str]:
    """What `path` touches of botbuilder's or msrest's internals: names with a leading
    underscore imported from them, and the known private hooks and attributes (used or
    overridden)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and within(node.module or "", BOT_FRAMEWORK):
            found += [a.name for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            found.append(node.attr)
        elif isinstance(node, ast.FunctionDef) and node.name in PRIVATE_NAMES:
            found.append(node.name)
    return found


def test_botbuilder_internals_are_reached_from_one_module_only() -> None:
    reaching = {relative(p): private_reaches(p) for p in SOURCES}
    assert {path: names for path, names in reaching.items() if names and path != INTERNALS} == {}
    # The check sees them where they are, and the module says why for each.
    internals = ROOT / INTERNALS
    assert set(private_reaches(internals)) >= PRIVATE_NAMES | {"_OpenIdMetadata"}
    assert offenders([internals], AGENTS_SDK) == {}
    used_by_agents = file_imports(ROOT / "bot/teams/agents_edge.py")
    assert "bot.teams.botbuilder_internals" not in used_by_agents
