"""Reply → Adaptive Card 1.5: the one renderer of everything the bot says in Teams.

Narrow first: every card reads at 360–450 px (Teams on a phone, a chat beside a meeting) and
uses the room Teams gives at full width (`msteams.width: Full`). Lists are one block per record
(a title line and a subtle detail line), never tables wider than a phone; no word breaks at a
hyphen (see `blocks.unbreakable`). The building blocks and the template binder are in
`bot/teams/blocks.py`, the digest's layout in `bot/teams/digest_card.py`. A card stays under
MAX_CARD_BYTES of JSON: long lists are cut (with a note) rather than sent too big.
"""

from __future__ import annotations

import functools
import json
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from bot.commands.reconcile import DriftReport
from bot.commands.reply import (
    Approval,
    Changed,
    Digest,
    Error,
    Form,
    FormField,
    Message,
    Progress,
    Reply,
    Table,
    Usage,
)
from bot.commands.words import target_name, would
from bot.teams.blocks import (
    CONTENT_TYPE,
    CONTROL_KEYS,
    MAX_CARD_BYTES,
    MAX_TEXT,
    NBSP,
    VERB_APPROVAL_REFRESH,
    VERB_APPROVE,
    VERB_FORM_SUBMIT,
    VERB_PAGE,
    VERB_REJECT,
    Card,
    bind,
    card_json,
    card_size,
    cut,
    execute,
    figure,
    heading,
    percent,
    record,
    sent_size,
    template,
    text,
    unbroken,
)
from bot.teams.digest_card import digest_card

__all__ = [
    "CONTENT_TYPE",
    "CONTROL_KEYS",
    "MAX_CARD_BYTES",
    "VERB_APPROVAL_REFRESH",
    "VERB_APPROVE",
    "VERB_FORM_SUBMIT",
    "VERB_PAGE",
    "VERB_REJECT",
    "Card",
    "attachment",
    "bind",
    "card_json",
    "card_size",
    "dumps",
    "execute",
    "render",
    "show",
    "template",
]

MAX_LIST_ITEMS = 50  # per list in a progress card
BAR_WIDTH = 24  # characters of a progress bar (fits 360 px with its percentage)


def _label(key: str) -> str:
    return key.replace("_", " ").replace("-", " ").capitalize()


def show(value: Any) -> str:
    """A value as an administrator reads it: words, never a Python literal."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return figure(value)
    if isinstance(value, dict):
        return ", ".join(f"{_label(str(k)).lower()} {show(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(show(v) for v in value) or "none"
    return str(value)


def change_facts(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    """One fact per field: "Allocated: 90 → 100" (only the value where it did not change)."""
    old, new = before or {}, after or {}
    facts = []
    for key in dict.fromkeys([*old, *new]):
        was, now = old.get(key), new.get(key)
        if was is None and now is None:
            continue
        if key in old and key in new and was != now:
            facts.append((_label(key), f"{show(was)} → **{show(now)}**"))
        elif key in new:
            facts.append((_label(key), show(now)))
        else:
            facts.append((_label(key), f"{show(was)} → —"))
    return facts


def _facts(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"title": cut(str(k), 100), "value": cut(show(v), 1000)} for k, v in pairs]


# ----- one function per reply type -----------------------------------------------------


def _message(reply: Message) -> dict:
    return bind(
        template("message"),
        {
            "tone": "good"
            if reply.data and isinstance(reply.data, dict) and reply.data.get("duplicate")
            else "accent",
            "title": reply.title,
            "text": cut(reply.text, MAX_TEXT),
            "facts": _facts(reply.facts),
        },
    )


#: Columns whose values say what they are on their own: shown without their heading.
_PLAIN_COLUMNS = {"kind", "status", "state", "type", "mode", "country/type", "via", "change"}


def _row_record(columns: list[str], row: list[str], first: bool) -> dict[str, Any]:
    """A row of a list as a record: its first cell the title, the rest a detail line."""
    cells = list(row) + [""] * (len(columns) - len(row))
    title_at = 0
    if len(columns) > 1 and columns[1].strip().lower() == "name" and cells[1].strip():
        title_at = 1  # a person's or a thing's name reads before its id
    title = cells[title_at].strip()
    parts = []
    for i, (name, value) in enumerate(zip(columns, cells, strict=False)):
        value = value.strip()
        if i == title_at or not value or value == "—":
            continue
        if i == 0 or name.strip().lower() in _PLAIN_COLUMNS:
            parts.append(value)
        else:
            parts.append(f"{name.strip().lower()} {value}")
    return record(f"**{title}**" if title else " ", " · ".join(parts), first=first)


_TONE_COLOR = {"good": "Good", "warning": "Warning", "attention": "Attention"}


def _records(reply: Table, keep: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    group = None
    if reply.records is not None:
        for i, r in enumerate(reply.records[:keep]):
            if r.group and r.group != group:
                group = r.group
                out.append(heading(r.group))
            out.append(
                record(
                    r.title,
                    r.detail,
                    color=_TONE_COLOR.get(r.tone, "Default"),
                    first=i == 0 or bool(r.group and out and out[-1].get("separator")),
                )
            )
        return out
    for i, row in enumerate(reply.rows[:keep]):
        out.append(_row_record(reply.columns, row, first=i == 0))
    return out


def _paging(reply: Table | Usage | Digest) -> tuple[str, list[dict]]:
    if reply.pages <= 1:
        return "", []
    paging = f"Page {reply.page} of {reply.pages}"
    actions = []
    if reply.next_command:
        paging += f" · next: `{reply.next_command}`"
        actions.append(execute("Next page", VERB_PAGE, {"command": reply.next_command}))
    return paging, actions


def _table(reply: Table, keep_rows: int | None) -> dict:
    total = len(reply.records) if reply.records is not None else len(reply.rows)
    keep = total if keep_rows is None else keep_rows
    shown = min(keep, total)
    notes = [reply.note] if reply.note else []
    if shown < total:
        notes.append(
            f"{total - shown} more are not shown here (the card would be too large); "
            "narrow the list or use the CLI with --json."
        )
    paging, actions = _paging(reply)
    return bind(
        template("table"),
        {
            "title": reply.title,
            "count": f"{shown:,}{NBSP}shown" if shown and reply.pages > 1 else "",
            "rows": _records(reply, keep),
            "note": cut("\n\n".join(notes), MAX_TEXT),
            "paging": paging,
            "actions": actions,
        },
    )


def _figure_grid(pairs: list[tuple[str, str]], columns: int = 4) -> dict[str, Any]:
    """Figures side by side, the label above each: four columns fit 360 px. Fewer pairs than
    columns leave empty columns, so that figures line up with the grid above."""
    return {
        "type": "ColumnSet",
        "spacing": "Small",
        "columns": [
            {
                "type": "Column",
                "width": "stretch",
                "items": [_label_block(label), text(value, weight="Bolder", spacing="None")],
            }
            for label, value in pairs
        ]
        + [{"type": "Column", "width": "stretch"}] * (columns - len(pairs)),
    }


@functools.cache
def _label_block(label: str) -> dict[str, Any]:
    """The label of a figure: the same few words on every product of a usage card, so made
    once and shared (a rendered card is never changed; see `blocks.Card`)."""
    return text(label, isSubtle=True, size="Small", spacing="None")


USAGE_LEGEND = (
    "**Unallocated**: capacity not yet allocated to a subscription. **In use**: what "
    "subscriptions consume (numbers held, users with a number, trunk channels, licenses "
    "assigned). **Free**: allocated but not in use. **Utilisation**: allocated ÷ capacity."
)


def _usage(reply: Usage, keep: int | None = None) -> dict:
    from bot.domain.digests import OPEN_LICENSE_CAPACITY

    products = reply.products if keep is None else reply.products[:keep]
    body: list[dict[str, Any]] = []
    for u in products:
        open_capacity = u.capacity >= OPEN_LICENSE_CAPACITY
        share = "open capacity" if open_capacity else f"{percent(u.utilisation)} allocated"
        if open_capacity:
            # Nothing to run out of: one line, no figure grid.
            body.append(
                record(
                    f"**{u.name}**",
                    f"open capacity · {figure(u.allocated)} allocated · {figure(u.in_use)} in use"
                    + "".join(
                        f" · {s.code}: {figure(s.allocated)} allocated, {figure(s.in_use)} in use"
                        for s in u.subscriptions[:5]
                    ),
                    first=not body,
                )
            )
            continue
        block: list[dict[str, Any]] = [
            {
                "type": "ColumnSet",
                "spacing": "None",
                "columns": [
                    {
                        "type": "Column",
                        "width": "stretch",
                        "items": [text(f"**{u.name}**", spacing="None")],
                    },
                    {
                        "type": "Column",
                        "width": "auto",
                        "verticalContentAlignment": "Center",
                        "items": [
                            text(share, isSubtle=True, size="Small", spacing="None", wrap=False)
                        ],
                    },
                ],
            },
            # Four figures fit a phone. Where Teams gives the width it also shows free and
            # utilisation under them; a client without responsive layout shows that row too.
            _figure_grid(
                [
                    ("Capacity", figure(u.capacity)),
                    ("Allocated", figure(u.allocated)),
                    ("Unallocated", figure(u.unallocated)),
                    ("In use", figure(u.in_use)),
                ]
            ),
            {
                **_figure_grid(
                    [
                        ("Free", figure(u.allocated - u.in_use)),
                        ("Utilisation", percent(u.utilisation)),
                    ]
                ),
                "targetWidth": "atLeast:Standard",
            },
        ]
        subs = [
            f"**{s.code}**: {figure(s.allocated)} allocated, {figure(s.in_use)} in use, "
            f"{figure(s.free)} free"
            for s in u.subscriptions
        ]
        block += [text(line, size="Small", spacing="None") for line in subs]
        container: dict[str, Any] = {"type": "Container", "items": block, "spacing": "Medium"}
        if body:
            container["separator"] = True
        body.append(container)
    notes = [reply.note] if reply.note else []
    if len(products) < len(reply.products):
        notes.append(
            f"{len(reply.products) - len(products)} more products are not shown here (the card "
            "would be too large); use `usage PRODUCT` or the CLI with --json."
        )
    paging, actions = _paging(reply)
    return bind(
        template("table"),
        {
            "title": reply.title,
            "count": "",
            "rows": body
            + (
                [text(USAGE_LEGEND, isSubtle=True, size="Small", separator=True, spacing="Large")]
                if products
                else []
            ),
            "note": cut("\n\n".join(notes), MAX_TEXT),
            "paging": paging,
            "actions": actions,
        },
    )


def _changed(reply: Changed) -> dict:
    facts = [("Target", target_name(reply.target))] if reply.target else []
    body = reply.text if reply.text and reply.text not in reply.title else ""
    title = reply.title
    actions = []
    if reply.dry_run:
        # The badge says it is a dry run; the title says what the change would do.
        for prefix in ("Dry run — nothing changed: ", "Dry run — "):
            title = title.removeprefix(prefix)
        title = would(title)
        if reply.go_ahead:
            command, fields = reply.go_ahead
            actions.append(
                execute(
                    "Go ahead",
                    VERB_FORM_SUBMIT,
                    {
                        **fields,
                        "command": command,
                        # A fresh id: clicking twice makes the change once.
                        "form_id": secrets.token_urlsafe(12),
                        "dry_run": False,
                    },
                    style="positive",
                )
            )
        if reply.form is not None:
            inputs: list[dict] = []
            for field in reply.form.fields:
                inputs.extend(_input(field, None))
            actions.append(
                {
                    "type": "Action.ShowCard",
                    "title": "Change values",
                    "card": {
                        "type": "AdaptiveCard",
                        "body": inputs,
                        "actions": _form_actions(reply.form),
                    },
                }
            )
    return bind(
        template("changed"),
        {
            "tone": "warning" if reply.dry_run else "good",
            "badge": "DRY RUN — nothing was changed yet" if reply.dry_run else "",
            "title": title,
            "text": cut(body, MAX_TEXT),
            "facts": _facts(facts + change_facts(reply.before, reply.after)),
            "actions": actions,
        },
    )


def _error(reply: Error) -> dict:
    usage = [
        {
            "type": "TextBlock",
            "text": cut(line, 500),
            "fontType": "Monospace",
            "wrap": True,
            "spacing": "Small",
        }
        for line in (reply.usage or "").splitlines()
        if line.strip()
    ][:20]
    return bind(
        template("error"),
        {"title": reply.title, "text": cut(reply.text, MAX_TEXT), "usage": usage},
    )


def _input(field: FormField, error: str | None) -> list[dict]:
    common: dict[str, Any] = {"id": field.name, "label": field.label, "isRequired": field.required}
    if field.required:
        common["errorMessage"] = f"{field.label} is required"
    if field.kind == "number":
        element = {"type": "Input.Number", **common, "min": 0}
        if field.value not in (None, ""):
            try:
                element["value"] = float(str(field.value).replace(",", ""))
            except ValueError:
                element = {"type": "Input.Text", **common, "value": str(field.value)}
    elif field.kind == "choice":
        choices = [{"title": cut(t, 100), "value": v} for t, v in field.choices]
        element = {"type": "Input.ChoiceSet", **common, "choices": choices, "style": "compact"}
        if not choices:
            # Nothing to pick from yet: let the value be typed.
            element = {"type": "Input.Text", **common}
        if field.value not in (None, ""):
            element["value"] = str(field.value)
    elif field.kind == "toggle":
        element = {
            "type": "Input.Toggle",
            **common,
            "title": field.label,
            "value": "true" if str(field.value).lower() == "true" else "false",
        }
        element.pop("isRequired", None)
        element.pop("errorMessage", None)
    else:
        element = {"type": "Input.Text", **common, "maxLength": 500}
        if field.value not in (None, ""):
            element["value"] = str(field.value)
    if field.placeholder and element["type"] in {"Input.Text", "Input.Number", "Input.ChoiceSet"}:
        element["placeholder"] = field.placeholder
    out = [element]
    if error:
        out.append(
            {
                "type": "TextBlock",
                "text": cut(error, 500),
                "color": "Attention",
                "size": "Small",
                "wrap": True,
                "spacing": "None",
            }
        )
    return out


def _form(reply: Form) -> dict:
    names = {f.name for f in reply.fields}
    general = [msg for key, msg in reply.errors.items() if key not in names]
    inputs: list[dict] = []
    for field in reply.fields:
        inputs.extend(_input(field, reply.errors.get(field.name)))
    return bind(
        template("form"),
        {
            "title": reply.title,
            "usage": reply.usage.splitlines()[0] if reply.usage else "",
            "problem": cut(" ".join(general), MAX_TEXT),
            "inputs": inputs,
            "actions": _form_actions(reply),
        },
    )


def _form_actions(form: Form) -> list[dict]:
    data = {"command": form.command, "form_id": form.form_id}
    return [
        execute("Submit", VERB_FORM_SUBMIT, {**data, "dry_run": False}, style="positive"),
        execute("Dry run", VERB_FORM_SUBMIT, {**data, "dry_run": True}),
    ]


_APPROVAL_LOOK = {
    # status: (container style, badge, badge colour)
    "pending": ("warning", "APPROVAL NEEDED", "Warning"),
    "approved": ("good", "APPROVED", "Good"),
    "rejected": ("attention", "REJECTED", "Attention"),
    "expired": ("emphasis", "EXPIRED", "Default"),
    "failed": ("attention", "APPROVED BUT NOT CARRIED OUT", "Attention"),
}


def _approval(reply: Approval, actionable: bool = True) -> dict:
    tone, badge, color = _APPROVAL_LOOK.get(
        reply.status, ("emphasis", reply.status.upper(), "Default")
    )
    facts: list[tuple[str, str]] = [
        ("Requested by", reply.requester),
        ("Request", reply.short_id or reply.request_id),
    ]
    if reply.status == "pending":
        if reply.expires_at:
            facts.append(("Expires", reply.expires_at))
    elif reply.status == "expired":
        facts.append(("Expired", reply.expires_at or reply.decided_at or ""))
    else:
        facts.append(("Decided by", reply.decided_by or "—"))
        facts.append(("Decided at", reply.decided_at or "—"))
    if reply.reason and reply.reason not in reply.text:
        # Said once: a reject's answer that already quotes its reason does not repeat it.
        facts.append(("Reason" if reply.status != "failed" else "Why", reply.reason))
    pending = reply.status == "pending"
    data = {"request_id": reply.request_id}
    # A refusal (or a failed request) is shown in red; the outcome of an approval in green.
    notice_color = "Default"
    if not reply.ok:
        notice_color = "Attention"
    elif reply.status == "approved":
        notice_color = "Good"
    inputs = (
        [
            {
                "type": "Input.Text",
                "id": "reason",
                "label": "Reason (optional)",
                "maxLength": 500,
                "placeholder": "Why you approve or reject",
            }
        ]
        if pending and actionable
        else []
    )
    actions = (
        [
            execute("Approve", VERB_APPROVE, data, style="positive"),
            execute("Reject", VERB_REJECT, data, style="destructive"),
        ]
        if inputs
        else []
    )
    refresh = (
        {
            "action": {
                "type": "Action.Execute",
                "verb": VERB_APPROVAL_REFRESH,
                "data": {"verb": VERB_APPROVAL_REFRESH, **data},
            }
        }
        if pending
        else None
    )
    return bind(
        template("approval"),
        {
            "tone": tone,
            "badge": badge,
            "badge_color": color,
            "title": reply.summary or reply.title,
            "notice": cut(reply.text, MAX_TEXT),
            "notice_color": notice_color,
            "facts": _facts(change_facts(reply.before, reply.after) + facts),
            "inputs": inputs,
            "actions": actions,
            "refresh": refresh,
        },
    )


def _items(title: str, lines: list[str], color: str) -> list[dict]:
    """A titled list: one text block per line (markdown lists overflow the renderer's box)."""
    if not lines:
        return []
    shown = lines[:MAX_LIST_ITEMS]
    out = [text(title, weight="Bolder", color=color, spacing="Medium")]
    out += [text(cut(line, 200), spacing="None") for line in shown]
    if len(lines) > len(shown):
        out.append(text(f"… and {len(lines) - len(shown):,} more", spacing="None", isSubtle=True))
    return out


def _progress(reply: Progress) -> dict:
    total = max(reply.total, reply.done, 1)
    done = min(reply.done, total)
    failed = len(reply.failed)
    if not reply.finished:
        tone = "accent"
    elif failed:
        tone = "warning" if reply.succeeded else "attention"
    else:
        tone = "good"
    bar_color = "Accent"
    if failed and not reply.succeeded:
        bar_color = "Attention"
    elif reply.finished:
        bar_color = "Good"
    filled = round(BAR_WIDTH * done / total)
    bar = "█" * filled + "░" * (BAR_WIDTH - filled) + f"  {done * 100 // total}{NBSP}%"
    state = "done" if reply.finished else "working…"
    counts = (
        f"{reply.done} of {reply.total} {state} · "
        f"{len(reply.succeeded)} succeeded · {failed} failed"
    )
    lists = _items("Succeeded", reply.succeeded, "Good") + _items(
        "Failed", [f"{item}: {why}" for item, why in reply.failed], "Attention"
    )
    return bind(
        template("progress"),
        {
            "tone": tone,
            "title": reply.title,
            "counts": counts,
            "bar": bar,
            "bar_color": bar_color,
            "text": cut(reply.text, MAX_TEXT),
            "lists": lists,
        },
    )


# A placeholder no text can contain (random per process), for `dumps`.
_PLACE = f"@@card-{uuid.uuid4().hex}-"


def dumps(value: Any) -> str:
    """`json.dumps(value)`, with every rendered Card inside it written as the JSON it was
    measured as when rendered, instead of being encoded a second time."""
    cards: list[Card] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Card) and node.json is not None:
            cards.append(node)
            return f"{_PLACE}{len(cards) - 1}"
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    text = json.dumps(swap(value), default=str)
    for i, card in enumerate(cards):
        text = text.replace(f'"{_PLACE}{i}"', card.json or "null", 1)
    return text


def render(reply: Reply, *, actionable: bool = True) -> Card:
    """The Adaptive Card (1.5, as a dict) for a reply; never over MAX_CARD_BYTES.

    `actionable=False` leaves the Approve / Reject buttons off a pending approval (the view of
    someone who may not decide it).
    """
    encoded = None
    if isinstance(reply, (Table, Usage)):
        shape = _table if isinstance(reply, Table) else _usage
        keep = (
            len(reply.products)
            if isinstance(reply, Usage)
            else len(reply.records if reply.records is not None else reply.rows)
        )
        card = unbroken(shape(reply, None))  # type: ignore[arg-type]
        encoded = orjson.dumps(card)
        while sent_size(encoded) > MAX_CARD_BYTES and keep > 0:
            keep = keep * 3 // 4 if keep > 4 else keep - 1
            card = unbroken(shape(reply, keep))  # type: ignore[arg-type]
            encoded = orjson.dumps(card)
    elif isinstance(reply, Changed):
        card = _changed(reply)
    elif isinstance(reply, Error):
        card = _error(reply)
    elif isinstance(reply, Form):
        card = _form(reply)
    elif isinstance(reply, Approval):
        card = _approval(reply, actionable)
    elif isinstance(reply, Progress):
        card = _progress(reply)
    elif isinstance(reply, Digest) and reply.report is not None:
        card = digest_card(reply)  # already unbroken
    elif isinstance(reply, DriftReport):
        from bot.teams.drift_card import drift_card  # its own layout, from the blocks

        card = drift_card(reply)
    elif isinstance(reply, Message):
        card = _message(reply)
    else:
        card = bind(template("message"), {"tone": "accent", "title": reply.title})
    if encoded is None:
        card = unbroken(card)
        encoded = orjson.dumps(card)
    if sent_size(encoded) > MAX_CARD_BYTES:
        # Only pathological input gets here (e.g. thousands of facts): say so in a small card.
        card = bind(
            template("message"),
            {
                "tone": "warning",
                "title": cut(reply.title, 200),
                "text": "This answer is too large for a card. Use the CLI (`python -m bot ... "
                "--json`) or narrow the request.",
            },
        )
        encoded = orjson.dumps(card)
    return Card(card, encoded.decode())


def attachment(card: Mapping[str, Any]) -> dict:
    """The card as a Bot Framework attachment (content type + content)."""
    return {"contentType": CONTENT_TYPE, "content": dict(card)}
