"""The reconcile card: per subscription, each difference between the tenant and the ledger in
words, with its two buttons — "Fix Teams" (make Teams match the ledger: a provisioning job) and
"Fix ledger" (make the ledger match Teams: a ledger change, refused with the rule it would
break) — and, per kind, "all of them" buttons that first show a dry run whose card offers to go
ahead with exactly what it showed.

Moments are in the project's words ("2 Dec 04:13 UTC, 5 minutes ago", bot.commands.words), in
the reader's time zone when the actor has one. Every button title reads whole at 400 px: a kind
with more than one open difference has one "Fix all N" button that opens its two directions.

Buttons are form submissions of `reconcile fix` / `reconcile fix-all` (bot.teams.card_actions
runs them through the command gate, with the form id as idempotency key: a second click has no
effect).
The card reads at 360–450 px: one difference a block, the buttons under it, short titles.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.commands.reconcile import SHOWN, DriftReport
from bot.commands.words import relative, when
from bot.domain.models import DriftKind
from bot.domain.reconcile import KIND_WORDS
from bot.teams.blocks import VERB_FORM_SUBMIT, execute
from bot.teams.blocks import cut as _cut

LEGEND = (
    "Fix Teams: Teams is made to match the ledger. Fix ledger: the ledger is made to match Teams."
)


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": _cut(text, 2000), "wrap": True, **extra}


def _submit(title: str, command: str, form_id: str, fields: dict[str, Any], **kw: Any) -> dict:
    return execute(
        title,
        VERB_FORM_SUBMIT,
        {"command": command, "form_id": form_id[:64], **fields},
        **kw,
    )


def _fix_buttons(drift: dict[str, Any]) -> dict[str, Any]:
    did = drift["id"]
    return {
        "type": "ActionSet",
        "spacing": "Small",
        "actions": [
            _submit("Fix Teams", "reconcile fix", f"drift-{did}-teams", {"id": did, "to": "teams"}),
            _submit(
                "Fix ledger", "reconcile fix", f"drift-{did}-ledger", {"id": did, "to": "ledger"}
            ),
        ],
    }


def _all_buttons(run: int, kind: str, count: int) -> dict[str, Any]:
    """One short button, "Fix all 2", opening the two directions under it (each a dry run
    first): a title that reads whole at 400 px, the same "Fix Teams" / "Fix ledger" words as
    each difference's buttons."""

    def one(side: str, title: str) -> dict[str, Any]:
        return _submit(
            title,
            "reconcile fix-all",
            f"fixall-{run}-{kind}-{side}-dry",
            {"run": run, "kind": kind, "to": side, "dry_run": True},
        )

    words = KIND_WORDS[DriftKind(kind)]
    return {
        "type": "ActionSet",
        "spacing": "Small",
        "actions": [
            {
                "type": "Action.ShowCard",
                "title": f"Fix all {count}",
                "card": {
                    "type": "AdaptiveCard",
                    "body": [
                        _text(
                            f"All {count} open “{words}”, one way. Each button first shows "
                            "a dry run; nothing changes until you go ahead.",
                            spacing="None",
                        )
                    ],
                    "actions": [one("teams", "Fix Teams"), one("ledger", "Fix ledger")],
                },
            }
        ],
    }


def _moment(iso: str, zone: str | None) -> str:
    """ "2 Dec 04:13 UTC, 5 minutes ago" in the reader's time zone (UTC when unknown)."""
    at = datetime.fromisoformat(iso)
    ago = relative(at)
    return f"{when(at, zone)}, {'just now' if ago == 'now' else ago}"


def _difference(drift: dict[str, Any], zone: str | None) -> dict[str, Any]:
    items: list[dict[str, Any]] = [_text(drift["description"], spacing="None")]
    if drift["state"] == "open":
        items.append(_fix_buttons(drift))
    else:
        side = "Teams" if drift["fixed_to"] == "teams" else "the ledger"
        at = f" ({_moment(drift['fixed_at'], zone)})" if drift.get("fixed_at") else ""
        items.append(
            _text(f"Fixed in {side} by {drift['fixed_by']}{at}.", isSubtle=True, spacing="None")
        )
    return {"type": "Container", "spacing": "Medium", "separator": True, "items": items}


def _section(
    view: dict[str, Any], budget: int, zone: str | None
) -> tuple[list[dict[str, Any]], int]:
    diffs = view["differences"]
    total = len(diffs)
    body: list[dict[str, Any]] = [
        _text(
            f"{view['subscription']} · {total} difference{'s' if total != 1 else ''}",
            weight="Bolder",
            size="Medium",
            spacing="Large",
            separator=True,
        ),
    ]
    if not diffs:
        body.append(_text("Teams and the ledger agree.", color="Good", spacing="Small"))
        return body, budget
    for kind in DriftKind:
        group = [d for d in diffs if d["kind"] == kind.value]
        if not group:
            continue
        still_open = [d for d in group if d["state"] == "open"]
        body.append(
            _text(
                f"{KIND_WORDS[kind][:1].upper()}{KIND_WORDS[kind][1:]} ({len(group)})",
                weight="Bolder",
                color="Warning",
                spacing="Medium",
            )
        )
        if len(still_open) > 1:
            body.append(_all_buttons(view["run"], kind.value, len(still_open)))
        for drift in group:
            if budget <= 0:
                break
            body.append(_difference(drift, zone))
            budget -= 1
    shown = sum(1 for b in body if b.get("type") == "Container")
    if shown < total:
        body.append(
            _text(
                f"{total - shown} more not listed here: use the buttons for all of a kind, or "
                f"`reconcile {view['subscription']}` in the CLI with --json.",
                isSubtle=True,
            )
        )
    return body, budget


def drift_card(reply: DriftReport) -> dict[str, Any]:
    data = reply.data if isinstance(reply.data, dict) else {}
    return _report(reply) if "runs" in data else _fix_all(reply)


def _header(title: str, tone: str) -> dict[str, Any]:
    return {
        "type": "Container",
        "style": tone,
        "bleed": True,
        "items": [_text(title, style="heading", size="Large", weight="Bolder")],
    }


def _card(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "msteams": {"width": "Full"},
        "body": body,
    }
    if actions:
        card["actions"] = actions
    return card


def _report(reply: DriftReport) -> dict[str, Any]:
    total = sum(len(v["differences"]) for v in reply.sections)
    body = [_header(reply.title, "warning" if total else "good")]
    if total:
        body.append(_text(LEGEND, isSubtle=True, spacing="Small"))
    budget = SHOWN
    for view in reply.sections:
        section, budget = _section(view, budget, reply.zone)
        body.extend(section)
        calls = view["graph_calls"]
        body.append(
            _text(
                f"Read from the tenant {_moment(view['taken_at'], reply.zone)} "
                f"({calls} Graph call{'s' if calls != 1 else ''}).",
                isSubtle=True,
                size="Small",
            )
        )
    return _card(body, [])


def _fix_all(reply: DriftReport) -> dict[str, Any]:
    refused = bool(reply.facts)
    tone = "warning" if refused else ("accent" if reply.go_ahead else "good")
    body = [_header(reply.title, tone)]
    if reply.text:
        body.append(_text(reply.text, spacing="Small"))
    for label, why in reply.facts:
        body.append(_text(f"**{label}**: {why}", spacing="Small", color="Attention"))
    actions = []
    if reply.go_ahead:
        data = reply.data if isinstance(reply.data, dict) else {}
        run, kind, side = data.get("run"), data.get("kind"), data.get("to")
        actions.append(
            _submit(
                "Go ahead",
                "reconcile fix-all",
                f"fixall-{run}-{kind}-{side}",
                {"run": run, "kind": kind, "to": side},
                style="positive",
            )
        )
    return _card(body, actions)
