"""The import graph of `bot/`: no cycle (module-level or deferred imports alike), and no
module imports another's private names (`_helper`)."""

from __future__ import annotations

import ast
from pathlib import Path

BOT = Path(__file__).resolve().parents[1] / "bot"


def _module(path: Path) -> str:
    parts = path.relative_to(BOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module → [(imported bot module, names imported from it)], every import in the file."""
    modules = {_module(p): p for p in BOT.rglob("*.py")}
    graph: dict[str, list[tuple[str, list[str]]]] = {m: [] for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                target, names = node.module, [a.name for a in node.names]
                if target.split(".")[0] != "bot":
                    continue
                # `from bot.teams import render` imports the module bot.teams.render.
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                graph[name] += [(s, []) for s in subs]
                if target in modules:
                    graph[name].append(
                        (target, [n for n in names if f"{target}.{n}" not in modules])
                    )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "bot" and alias.name in modules:
                        graph[name].append((alias.name, []))
    return graph


def _cycles(graph: dict[str, list[tuple[str, list[str]]]]) -> list[list[str]]:
    edges = {
        m: sorted({t for t, _ in deps if t != m and not m.startswith(t + ".")})
        for m, deps in graph.items()
    }
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, []):
            if state.get(t) == 1:
                found.append([*stack[stack.index(t) :], t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycle_inside_bot() -> None:
    assert _cycles(_imports()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    graph = {"bot.a": [("bot.b", [])], "bot.b": [("bot.c", [])], "bot.c": [("bot.a", [])]}
    assert _cycles(graph) == [["bot.a", "bot.b", "bot.c", "bot.a"]]


def test_no_private_name_is_imported_from_another_module() -> None:
    private = {
        (module, target, name)
        for module, deps in _imports().items()
        for target, names in deps
        for name in names
        if name.startswith("_") and not name.startswith("__")
    }
    assert private == set()
