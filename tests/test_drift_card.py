"""The reconcile card (bot.teams.drift_card): valid Adaptive Card 1.5 with Universal Actions,
its buttons work through the card door (bot.teams.card_actions.run_action), one effect a click,
"all of a kind" shows a dry run that offers to go ahead with exactly it; rendered by the
official renderer in Chromium at 400 px and full width (screenshots in test-artifacts/cards/)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.commands.dispatch import run_text
from bot.commands.reconcile import DriftReport, run_view
from bot.commands.reply import Changed
from bot.domain import numbers
from bot.domain.models import JobAction, ProvisioningJob, ReconcileRun
from bot.domain.reconcile import drifts_of
from bot.teams.card_actions import run_action
from bot.teams.render import render
from tests import cardcheck
from tests.cardcheck.schema import iter_actions
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


def shown_cards(card: dict[str, Any], name: str) -> dict[str, Any]:
    """The card, and the card each of its ShowCard buttons opens (rendered on their own: the
    renderer draws them closed)."""
    found = {name: card}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "Action.ShowCard":
                sub = {"version": "1.5", "msteams": {"width": "Full"}, **node["card"]}
                found[f"{name}-open-{len(found)}"] = sub
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(card.get("body"))
    return found


def screenshots(cards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Render at 400 px (a phone, a narrow pane) and at full width (1000 px); screenshots
    `<name>-400.png` and `<name>-1000.png` in test-artifacts/cards/; the renderer's report.
    What a reader would see broken — a word across lines, anything overflowing, a button
    title cut — fails the test."""
    reason = cardcheck.renderer_unavailable_reason()
    if reason:
        pytest.skip(reason)
    report = cardcheck.render_cards(cards, cardcheck.ARTIFACTS_DIR, widths=(400, 1000))
    for name, entry in report.items():
        assert entry["errors"] == [], (name, entry["errors"])
        for width in ("400", "1000"):
            assert Path(entry["widths"][width]["screenshot"]).is_file()
    assert cardcheck.layout_problems(report) == {}
    return report


async def test_the_drift_card_and_its_buttons(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    async with env.drifted_tenant(idp, graph) as (ctx, client):
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
        # Moments in the project's words (bot.commands.words), never an ISO stamp.
        assert re.search(
            r"Read from the tenant \d{1,2} [A-Z][a-z]{2} \d\d:\d\d UTC, "
            r"(just now|\d+ \w+ ago) \(\d+ Graph calls\)",
            words,
        ), words
        assert not re.search(r"\d{4}-\d\d-\d\d", words)
        buttons = actions(card)
        # Every title reads whole (none ends in an ellipsis that looks like a cut one).
        titles = [b["title"] for b in buttons] + [
            a["title"] for a in iter_actions(card) if a.get("type") == "Action.ShowCard"
        ]
        assert not [t for t in titles if t.endswith(("…", "..."))], titles
        assert "Fix all 2" in titles
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
            b
            for b in buttons
            if b["data"]["command"] == "reconcile fix-all" and b["data"]["to"] == "teams"
        ]
        assert all_teams["title"] == "Fix Teams" and all_teams["data"]["dry_run"] is True
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

        # A difference fixed shows who and when, in the reader's time zone.
        ctx.actor = replace(ctx.actor, timezone="America/New_York")
        zoned = await run_text("reconcile ACME-01", ctx)
        assert isinstance(zoned, DriftReport) and zoned.zone == "America/New_York"
        zoned_card = dict(render(zoned))
        zoned_words = "\n".join(texts(zoned_card))
        assert re.search(r"from the tenant \d{1,2} [A-Z][a-z]{2} \d\d:\d\d E[SD]T, ", zoned_words)
        # The first run again (as a card updated after its fixes would show it).
        first_run = reply.data["runs"][0]["run"]
        run = await ReconcileRun.get(id=first_run)
        view = run_view(run, await drifts_of(run.id))
        fixed_card = dict(
            render(
                DriftReport(
                    title="After the fixes",
                    sections=[view],
                    data={"runs": [view]},
                    zone="America/New_York",
                )
            )
        )
        fixed_words = "\n".join(texts(fixed_card))
        assert re.search(
            r"Fixed in Teams by .+ \(\d{1,2} [A-Z][a-z]{2} \d\d:\d\d E[SD]T, "
            r"(just now|\d+ \w+ ago)\)\.",
            fixed_words,
        ), fixed_words

    screenshots(
        shown_cards(card, "drift")
        | shown_cards(preview_card, "drift-fix-all")
        | shown_cards(fixed_card, "drift-fixed")
    )
