"""The local try-out, end to end: the demo catalog, and the Microsoft 365 Agents Playground
driving the real bot in headless Chromium inside a loopback-only network namespace.

The browser test needs `unshare` (root, or unprivileged user namespaces), Debian's
chromium, node and the pinned node modules of tests/e2e (`make node-deps`). Without them it is
skipped, unless FUSION_REQUIRE_BROWSER=1 (CI), where it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot import demo
from bot.domain import ledger
from bot.domain.change import Origin, verify_chain
from bot.domain.models import AuditEvent, ProductKind
from bot.domain.usage import usage_report

ROOT = Path(__file__).resolve().parent.parent
E2E = ROOT / "tests" / "e2e"
PLAYGROUND_CLI = E2E / "node_modules" / "@microsoft" / "m365agentsplayground" / "cli.js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Who the Playground says is typing (its default user, Alex Wilber): the bot's only dev admin.
PLAYGROUND_USER = "00000000-0000-0000-0000-0000000000020"
RUN_TIMEOUT = 150
NPM_CI_TIMEOUT = 300

SEED_ORIGIN = Origin(demo.OPERATOR, "demo seed", "cli", correlation_id="test-demo-seed")


# ----- the demo catalog ----------------------------------------------------------------------


def _snapshot(report: list[Any]) -> list[dict[str, Any]]:
    return [u.as_json() for u in report]


async def test_demo_seed_fills_every_kind_and_a_second_run_changes_nothing(database: str) -> None:
    await demo.seed(SEED_ORIGIN)
    first = _snapshot(await usage_report())
    events = await AuditEvent.all().count()

    lines = await demo.seed(SEED_ORIGIN)

    assert _snapshot(await usage_report()) == first
    assert await AuditEvent.all().count() == events
    assert not [line for line in lines if line.startswith("added")]
    assert {u["kind"] for u in first} == {k.value for k in ProductKind}
    by_name = {u["name"]: u for u in first}
    contoso_numbers = {s["code"]: s for s in by_name["GB-GEO-NUMBERS"]["subscriptions"]}
    assert contoso_numbers["CONTOSO-01"] == {
        "code": "CONTOSO-01",
        "allocated": 80,
        "in_use": 3,
        "free": 77,
    }
    assert by_name["SIP-CHANNELS"]["in_use"] == 20
    assert (await verify_chain())[0]


async def test_demo_seed_tops_allocations_up_but_never_lowers_them(database: str) -> None:
    await demo.seed(SEED_ORIGIN)
    await ledger.release(SEED_ORIGIN, 30, "TEAMS-SEATS", "CONTOSO-01")
    await ledger.allocate(SEED_ORIGIN, 5, "SIP-CHANNELS", "NORTHWIND-01")

    await demo.seed(SEED_ORIGIN)

    held = {(s.code, u.name): s.allocated for u in await usage_report() for s in u.subscriptions}
    assert held[("CONTOSO-01", "TEAMS-SEATS")] == 60
    assert held[("NORTHWIND-01", "SIP-CHANNELS")] == 25


def test_demo_command_seeds_the_configured_database_once(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite://{tmp_path / 'demo.sqlite3'}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            text=True,
            capture_output=True,
            timeout=120,
            check=False,
        )

    first, second = run("-m", "bot.demo"), run("-m", "bot.demo")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "added    product TEAMS-SEATS" in first.stdout
    assert not [line for line in second.stdout.splitlines() if line.startswith("added")]
    usage = run("-m", "bot", "--json", "usage")
    assert usage.returncode == 0, usage.stderr
    seats = next(u for u in json.loads(usage.stdout) if u["name"] == "TEAMS-SEATS")
    assert seats["allocated"] == 105


# ----- the Playground, end to end ------------------------------------------------------------


def _unshare_prefix() -> list[str]:
    # --pid with --kill-child: whatever happens to the script, everything it started dies with it.
    base = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    return base if os.geteuid() == 0 else [base[0], "--user", "--map-root-user", *base[1:]]


def _ensure_node_modules() -> None:
    if PLAYGROUND_CLI.is_file() or shutil.which("npm") is None:
        return
    done = subprocess.run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=E2E,
        text=True,
        capture_output=True,
        timeout=NPM_CI_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci in tests/e2e failed:\n{done.stdout}\n{done.stderr}")


def _missing() -> str | None:
    for tool in ("unshare", "node"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    _ensure_node_modules()
    if not PLAYGROUND_CLI.is_file():
        return "the Playground's node modules are missing and npm is not installed (make node-deps)"
    probe = subprocess.run(
        [*_unshare_prefix(), "true"], capture_output=True, text=True, timeout=20, check=False
    )
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.strip() or probe.returncode}"
    return None


@pytest.fixture
def playground_tools() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("FUSION_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the Playground test is required (FUSION_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(f"Agents Playground end-to-end test needs more tools: {reason}")


STEPS = [
    {
        "name": "help",
        "send": "help",
        "expect": ["Catalog", "product add", "Allocations", "allocate", "usage"],
    },
    {
        "name": "product-add",
        "send": "product add FR-GEO-NUMBERS --kind numbers --country FR --capacity 250"
        " --sku NUM-FR-GEO",
        "expect": ["FR-GEO-NUMBERS", "250", "NUM-FR-GEO"],
    },
    {
        "name": "allocate",
        "send": "allocate 40 FR-GEO-NUMBERS to CONTOSO-01",
        "expect": ["FR-GEO-NUMBERS", "CONTOSO-01", "40"],
    },
    {
        "name": "typo",
        "send": "allocate 5 FR-GEO-NUMBER to CONTOSO-01",
        "expect": ["Did you mean", "FR-GEO-NUMBERS"],
    },
    {"name": "usage", "send": "usage", "expect": ["Usage", "FR-GEO-NUMBERS", "GB-GEO-NUMBERS"]},
]


def _cells(card_text: str) -> list[str]:
    """A card's visible text as the sequence of its non-empty lines (table cells included)."""
    return [line.strip() for line in card_text.splitlines() if line.strip()]


def _row(cells: list[str], first: str, width: int) -> list[str]:
    assert first in cells, f"{first!r} not in the card: {cells}"
    at = cells.index(first)
    return cells[at : at + width]


@pytest.mark.browser
@pytest.mark.slow
def test_playground_drives_the_bot_in_headless_chromium(
    playground_tools: None, artifacts: Path, tmp_path: Path, fusion_edge: str
) -> None:
    # Written under tmp_path, then copied to test-artifacts/playground/: runs side by side in
    # one working tree do not trample on each other's files.
    out = tmp_path / "out"
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps(STEPS))
    database_url = f"sqlite://{tmp_path / 'playground.sqlite3'}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FUSION_DEV_ADMINS": PLAYGROUND_USER,
        "PLAYGROUND_PYTHON": sys.executable,
        "PLAYGROUND_WORKDIR": str(tmp_path / "work"),
        "FUSION_EDGE": fusion_edge,  # each edge in turn (tests/support/teams_fixtures.py)
    }
    shots = "playground" if fusion_edge == "botbuilder" else f"playground-{fusion_edge}"

    try:
        run = subprocess.run(
            [*_unshare_prefix(), str(E2E / "playground.sh"), "drive", str(steps), str(out)],
            cwd=tmp_path,
            env=env,
            text=True,
            capture_output=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        out.mkdir(exist_ok=True)
        (out / "run.log").write_text(run.stdout + run.stderr)
    finally:
        shutil.rmtree(artifacts / shots, ignore_errors=True)
        if out.is_dir():
            shutil.copytree(out, artifacts / shots, dirs_exist_ok=True)
    assert run.returncode == 0, (
        f"the Playground run failed; see {artifacts / 'playground'}:\n{run.stdout}\n{run.stderr}"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and [s["name"] for s in summary["steps"]] == [s["name"] for s in STEPS]
    cards = {s["name"]: _cells(s["card"].replace("\u2060", "")) for s in summary["steps"]}
    # Every card as the Playground shows it (about 446 px): no word broken, nothing sideways.
    assert {s["name"]: s["layout"] for s in summary["steps"] if s["layout"]} == {}

    # Shown in the chat: the product as added, the allocation before → after, the usage grid.
    assert _row(cards["product-add"], "Capacity", 2) == ["Capacity", "250"]
    assert "0 → 40" in " ".join(cards["allocate"])
    # Usage: the product, its share, then capacity, allocated, unallocated and in use.
    fr = _row(cards["usage"], "FR-GEO-NUMBERS", 10)
    assert fr[1] == "16\u00a0% allocated", fr
    assert fr[2:10] == ["Capacity", "250", "Allocated", "40", "Unallocated", "210", "In use", "0"]
    assert "CONTOSO-01: 40 allocated, 0 in use, 40 free" in cards["usage"]
    gb = _row(cards["usage"], "GB-GEO-NUMBERS", 10)  # the demo seed
    assert gb[3] == "500" and gb[5] == "100" and gb[9] == "3", gb

    # And in the ledger: one allocation, audited as a chat change by the Playground's user.
    cli = _cli(database_url, tmp_path)
    fr = next(u for u in cli("--json", "usage", "FR-GEO-NUMBERS"))
    assert (fr["allocated"], fr["subscriptions"]) == (
        40,
        [{"code": "CONTOSO-01", "allocated": 40, "in_use": 0, "free": 40}],
    )
    event = next(
        e
        for e in cli("--json", "audit", "--limit", "20")
        if e["action"] == "allocation.allocate" and "FR-GEO-NUMBERS" in e["target"]
    )
    assert (event["source"], event["actor_id"]) == ("chat", PLAYGROUND_USER)
    assert event["correlation_id"]  # the activity id of the Playground's message
    for name in ("conversation", *(f"{i:02d}-{s['name']}" for i, s in enumerate(STEPS, 1))):
        assert (out / f"{name}.png").stat().st_size > 1000


def _cli(database_url: str, cwd: Path) -> Callable[..., Any]:
    def run(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "bot", *args],
            cwd=cwd,
            text=True,
            capture_output=True,
            env={**os.environ, "DATABASE_URL": database_url},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return run
