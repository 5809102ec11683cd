"""The reconcile card (bot.teams.drift_card): valid Adaptive Card 1.5 with Universal Actions,
its buttons work through the card door (bot.teams.card_actions.run_action), one effect a click,
"all of a kind" shows a dry run that offers to go ahead with exactly it; rendered by the
official renderer in Chromium at 400 px and full width (screenshots in test-artifacts/cards/)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.commands.dispatch import run_text
from bot.commands.reconcile import DriftReport
from bot.commands.reply import Changed
from bot.domain import numbers
from bot.domain.models import JobAction, ProvisioningJob
from bot.teams.card_actions import run_action
from bot.teams.render import render
from tests import cardcheck
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support import licensing_env as env
from tests.support.graph_env import trust_fakes
from tests.support.licensing_env import OPS, upn
from tests.support.provisioning_env import e164

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeIdentityProvider, FakeGraph]]:
    trust_fakes(monkeypatch)
    with env.fakes() as pair:
        yield pair


def actions(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "Action.Execute":
            found.append(node)
        for value in node.values():
            found.extend(actions(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(actions(value))
    return found


def texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        # As a reader sees it: without the joiners that keep numbers and codes unbroken.
        own = (
            [node["text"].replace("\u2060", "").replace("\xa0", " ")]
            if node.get("type") == "TextBlock"
            else []
        )
        return own + [t for v in node.values() for t in texts(v)]
    if isinstance(node, list):
        return [t for v in node for t in texts(v)]
    return []


def screenshots(card: dict[str, Any], name: str) -> dict[str, Any]:
    """Render at 400 px (a phone, a narrow pane) and at full width; the renderer's report."""
    reason = cardcheck.renderer_unavailable_reason()
    if reason:
        pytest.skip(reason)
    out = cardcheck.ARTIFACTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for width, full in ((400, 400), (450, 1000)):
        source = out / f"{name}-{full}.json"
        source.write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
        proc = subprocess.run(
            [
                "node", str(cardcheck.RENDER_SCRIPT), "--out", str(out),
                "--chromium", str(cardcheck.chromium_path()),
                "--width", str(width), "--full-width", str(full), str(source),
            ],
            cwd=cardcheck.RENDER_DIR, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode in (0, 1), proc.stderr
        found = json.loads(proc.stdout)
        report[full] = next(v for k, v in found.items() if k.endswith(source.name))
        assert Path(report[full]["screenshot"]).is_file()
    return report


async def test_the_drift_card_and_its_buttons(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=6)
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        await env.drifted(graph, client)
        await numbers.assign_number(OPS, e164(8), upn(4))  # a second one missing in Teams
        reply = await run_text("reconcile ACME-01", ctx)
        assert isinstance(reply, DriftReport)
        card = dict(render(reply))
        cardcheck.validate_card(card)
        assert cardcheck.universal_action_problems(card) == []
        words = "\n".join(texts(card))
        assert "7 differences between Teams and the ledger" in words
        assert f"{e164(4)}: assigned to {upn(4)} in Teams, available in the ledger" in words
        assert "None" not in words and "{" not in words
        buttons = actions(card)
        missing = [d for d in reply.data["runs"][0]["differences"] if d["number"] == e164(1)][0]
        [teams_button] = [
            b for b in buttons if b["data"].get("id") == missing["id"] and b["title"] == "Fix Teams"
        ]
        first, _ = await run_action(teams_button["verb"], dict(teams_button["data"]), ctx)
        assert isinstance(first, Changed) and first.ok, first
        again, _ = await run_action(teams_button["verb"], dict(teams_button["data"]), ctx)
        assert again.ok and "already" in (getattr(again, "text", "") + again.title).lower()
        jobs = await ProvisioningJob.filter(e164=e164(1), action=JobAction.ASSIGN).count()
        assert jobs == 1  # two clicks, one job
        [ledger_button] = [
            b
            for b in buttons
            if b["data"].get("id") == missing["id"] and b["title"] == "Fix ledger"
        ]
        other, _ = await run_action(ledger_button["verb"], dict(ledger_button["data"]), ctx)
        assert not other.ok and "already fixed" in json.dumps(other.__dict__, default=str)

        # All of a kind: a dry run first, which offers to go ahead with exactly it.
        [all_teams] = [
            b for b in buttons if b["title"].startswith("All ") and "Teams" in b["title"]
        ]
        assert all_teams["data"]["kind"] == "number-missing-in-teams"
        preview, _ = await run_action(all_teams["verb"], dict(all_teams["data"]), ctx)
        assert isinstance(preview, DriftReport), preview
        assert preview.title.startswith("Dry run — nothing changed: 1 of 1")
        assert "giving" in preview.text and "(job" not in preview.text  # rolled back: no id
        assert await ProvisioningJob.filter(e164=e164(8)).count() == 0
        preview_card = dict(render(preview))
        cardcheck.validate_card(preview_card)
        [go] = actions(preview_card)
        assert go["title"] == "Go ahead" and "dry_run" not in go["data"]
        done, _ = await run_action(go["verb"], dict(go["data"]), ctx)
        assert done.ok and await ProvisioningJob.filter(e164=e164(8)).count() == 1

    for name, shown in (("drift", card), ("drift-fix-all", preview_card)):
        for width, found in screenshots(shown, name).items():
            assert found["errors"] == [], (name, width, found)
