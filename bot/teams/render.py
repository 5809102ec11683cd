"""Reply → Adaptive Card 1.5: the one renderer of everything the bot says in Teams.

The card layouts are JSON templates in `cards/` (data, not code). A template is a card with
placeholders, bound from the Reply:

- a string that is exactly `"${name}"` becomes the value `name` (any JSON: text, list, object);
  inside a list, a placeholder bound to a list is spliced in, and one bound to nothing is dropped;
  an object property bound to nothing (None or an empty list) is left out;
- `"${name}"` inside a longer string is replaced by the value as text;
- an object with `"$when": "${name}"` is left out when `name` is empty.

Values are inserted, never read as templates again, so text typed by a user cannot reach the
binder. Every button is an `Action.Execute` (verb + data) with an `Action.Submit` fallback
carrying the same data, so Teams clients with and without Universal Actions both work. A card
stays under MAX_CARD_BYTES of JSON: long lists are cut (with a note) rather than sent too big.
"""

from __future__ import annotations

import functools
import json
import re
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
)
from bot.resources import cards_folder

TEMPLATES = cards_folder()
#: SPEC §4: a card stays well under the Teams message limit.
MAX_CARD_BYTES = 36_864
CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"

# Verbs of the bot's buttons; bot/teams/cards.py handles each. Data is untrusted on return.
VERB_PAGE = "page"  # data: command (a listing command line, e.g. "products --page 2")
VERB_FORM_SUBMIT = "form.submit"  # data: command, form_id, dry_run + the inputs
VERB_APPROVE = "approval.approve"  # data: request_id + input `reason`
VERB_REJECT = "approval.reject"  # data: request_id + input `reason`
VERB_APPROVAL_REFRESH = "approval.refresh"  # data: request_id
#: Keys of button data that are not command fields.
CONTROL_KEYS = frozenset({"verb", "command", "form_id", "request_id"})

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NUMERIC = re.compile(r"[-+]?[\d,.]+%?")
_DROP = object()

MAX_TEXT = 4_000  # characters of one text block before it is cut
MAX_CELL = 300
MAX_LIST_ITEMS = 50  # per list in a progress card
BAR_WIDTH = 30  # characters of a progress bar


# ----- the template binder -------------------------------------------------------------


@functools.cache
def _template_text(name: str) -> str:
    return (TEMPLATES / f"{name}.json").read_text(encoding="utf-8")


def template(name: str) -> Any:
    """A fresh copy of the template `cards/<name>.json`."""
    return json.loads(_template_text(name))


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {} or value is False


def bind(node: Any, data: Mapping[str, Any]) -> Any:
    """Fill a template's placeholders from `data` (see the module docstring)."""
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:
            return data.get(whole.group(1))
        return _PLACEHOLDER.sub(lambda m: _as_text(data.get(m.group(1))), node)
    if isinstance(node, list):
        out: list[Any] = []
        for item in node:
            bound = bind(item, data)
            if bound is _DROP or bound is None:
                continue
            if isinstance(item, str) and _PLACEHOLDER.fullmatch(item) and isinstance(bound, list):
                out.extend(bound)
            else:
                out.append(bound)
        return out
    if isinstance(node, dict):
        when = node.get("$when")
        if when is not None and _empty(bind(when, data)):
            return _DROP
        result: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$when":
                continue
            bound = bind(value, data)
            if bound is _DROP:
                continue
            if (
                isinstance(value, str)
                and _PLACEHOLDER.fullmatch(value)
                and (bound is None or bound == [])
            ):
                continue
            result[key] = bound
        return result
    return node


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)


# ----- building blocks -----------------------------------------------------------------


def execute(title: str, verb: str, data: Mapping[str, Any], style: str | None = None) -> dict:
    """A button: Action.Execute with the same data in an Action.Submit fallback."""
    payload = {"verb": verb, **data}
    action: dict[str, Any] = {
        "type": "Action.Execute",
        "title": title,
        "verb": verb,
        "data": payload,
    }
    fallback: dict[str, Any] = {"type": "Action.Submit", "title": title, "data": payload}
    if style:
        action["style"] = style
        fallback["style"] = style
    action["fallback"] = fallback
    return action


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(text: str, *, bold: bool = False, mono: bool = False, right: bool = False) -> dict:
    if len(text) > MAX_CELL:
        text = _cut(text, MAX_CELL)
    block = {"type": "TextBlock", "text": text or " ", "wrap": True}
    if bold:
        block["weight"] = "Bolder"
    if mono:
        block["fontType"] = "Monospace"
    if right:
        block["horizontalAlignment"] = "Right"
    return {"type": "TableCell", "items": [block]}


def _label(key: str) -> str:
    return key.replace("_", " ").replace("-", " ").capitalize()


def show(value: Any) -> str:
    """A value as an administrator reads it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(show(v) for v in value)
    return str(value)


def before_after_rows(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list:
    """Table rows: field | before | after (the after value bold where it changed)."""
    old, new = before or {}, after or {}
    keys = list(dict.fromkeys([*old, *new]))
    if not keys:
        return []
    rows = [
        {
            "type": "TableRow",
            "style": "emphasis",
            "cells": [
                _cell("Field", bold=True),
                _cell("Before", bold=True),
                _cell("After", bold=True),
            ],
        }
    ]
    for key in keys:
        was, now = old.get(key), new.get(key)
        rows.append(
            {
                "type": "TableRow",
                "cells": [
                    _cell(_label(key)),
                    _cell(show(was) if key in old else "—"),
                    _cell(show(now) if key in new else "—", bold=was != now),
                ],
            }
        )
    return rows


def _facts(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"title": _cut(str(k), 100), "value": _cut(show(v), 1000)} for k, v in pairs]


# ----- one function per reply type -----------------------------------------------------


def _message(reply: Message) -> dict:
    return bind(
        template("message"),
        {
            "tone": "good"
            if reply.data and isinstance(reply.data, dict) and reply.data.get("duplicate")
            else "accent",
            "title": reply.title,
            "text": _cut(reply.text, MAX_TEXT),
            "facts": _facts(reply.facts),
        },
    )


_MONO_COLUMNS = {"command", "usage"}


def _table(reply: Table, keep_rows: int | None = None) -> dict:
    rows = reply.rows if keep_rows is None else reply.rows[:keep_rows]
    ncols = len(reply.columns)
    mono = [c.strip().lower() in _MONO_COLUMNS for c in reply.columns]
    columns = []
    for i, name in enumerate(reply.columns):
        cells = [r[i] for r in rows if i < len(r)]
        # Relative widths: room for the longest word (so ids and names do not break), and
        # a share of the longest cell (so long text wraps in a wider column).
        word = max(len(w) for c in [name, *cells] for w in (c.split() or [""]))
        longest = max(len(c) for c in [name, *cells])
        header = min(len(name), 14)  # a short heading stays on one line
        column: dict[str, Any] = {
            "width": max(4, header + 2, min(22, word + 2), min(longest, 40) // 2)
        }
        # Figures align right: said once for the column, not in each of its cells.
        values = [v.strip() for v in cells if v.strip()]
        if values and all(_NUMERIC.fullmatch(v) for v in values):
            column["horizontalCellContentAlignment"] = "Right"
        columns.append(column)
    table_rows = [
        {
            "type": "TableRow",
            "style": "emphasis",
            "cells": [_cell(c, bold=True) for c in reply.columns],
        }
    ]
    # A card is never changed once rendered, so equal cells of one table are one object: a
    # 50-row table has ~300 cells but far fewer different ones ("", "0", repeated codes).
    made: dict[tuple[str, bool], dict] = {}
    for row in rows:
        cells = list(row[:ncols]) + [""] * (ncols - len(row))
        shared = []
        for i, v in enumerate(cells):
            cell = made.get((v, mono[i]))
            if cell is None:
                cell = made[(v, mono[i])] = _cell(v, mono=mono[i])
            shared.append(cell)
        table_rows.append({"type": "TableRow", "cells": shared})
    notes = [reply.note] if reply.note else []
    if keep_rows is not None and keep_rows < len(reply.rows):
        notes.append(
            f"{len(reply.rows) - keep_rows} more rows are not shown here (the card would be too "
            "large); narrow the list or use the CLI with --json."
        )
    actions = []
    paging = ""
    if reply.pages > 1:
        paging = f"Page {reply.page} of {reply.pages}"
        if reply.next_command:
            paging += f" · next: `{reply.next_command}`"
            actions.append(execute("Next page", VERB_PAGE, {"command": reply.next_command}))
    shown = len(rows)
    return bind(
        template("table"),
        {
            "title": reply.title,
            "count": f"{shown} row{'s' if shown != 1 else ''}" if shown else "",
            "columns": columns,
            "rows": table_rows if rows else [],
            "note": _cut("\n\n".join(notes), MAX_TEXT),
            "paging": paging,
            "actions": actions,
        },
    )


def _changed(reply: Changed) -> dict:
    facts = [("Target", reply.target)] if reply.target else []
    text = reply.text if reply.text and reply.text not in reply.title else ""
    title = reply.title
    if reply.dry_run:
        # The badge says it is a dry run; the title says what the change would do.
        for prefix in ("Dry run — nothing changed: ", "Dry run — "):
            title = title.removeprefix(prefix)
    return bind(
        template("changed"),
        {
            "tone": "warning" if reply.dry_run else "good",
            "badge": "DRY RUN — nothing was changed" if reply.dry_run else "",
            "title": title,
            "text": _cut(text, MAX_TEXT),
            "facts": _facts(facts),
            "rows": before_after_rows(reply.before, reply.after),
        },
    )


def _error(reply: Error) -> dict:
    usage = [
        {
            "type": "TextBlock",
            "text": _cut(line, 500),
            "fontType": "Monospace",
            "wrap": True,
            "spacing": "Small",
        }
        for line in (reply.usage or "").splitlines()
        if line.strip()
    ][:20]
    return bind(
        template("error"),
        {"title": reply.title, "text": _cut(reply.text, MAX_TEXT), "usage": usage},
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
        choices = [{"title": _cut(t, 100), "value": v} for t, v in field.choices]
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
                "text": _cut(error, 500),
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
    data = {"command": reply.command, "form_id": reply.form_id}
    return bind(
        template("form"),
        {
            "title": reply.title,
            "usage": reply.usage.splitlines()[0] if reply.usage else "",
            "problem": _cut(" ".join(general), MAX_TEXT),
            "inputs": inputs,
            "actions": [
                execute("Submit", VERB_FORM_SUBMIT, {**data, "dry_run": False}, style="positive"),
                execute("Dry run", VERB_FORM_SUBMIT, {**data, "dry_run": True}),
            ],
        },
    )


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
        ("Request", reply.request_id),
    ]
    if reply.status == "pending":
        if reply.expires_at:
            facts.append(("Expires", reply.expires_at))
    elif reply.status == "expired":
        facts.append(("Expired", reply.expires_at or reply.decided_at or ""))
    else:
        facts.append(("Decided by", reply.decided_by or "—"))
        facts.append(("Decided at", reply.decided_at or "—"))
    if reply.reason:
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
            "notice": _cut(reply.text, MAX_TEXT),
            "notice_color": notice_color,
            "facts": _facts(facts),
            "rows": before_after_rows(reply.before, reply.after),
            "inputs": inputs,
            "actions": actions,
            "refresh": refresh,
        },
    )


def _items(title: str, lines: list[str], color: str) -> list[dict]:
    if not lines:
        return []
    shown = lines[:MAX_LIST_ITEMS]
    text = "\n".join(f"- {_cut(line, 200)}" for line in shown)
    if len(lines) > len(shown):
        text += f"\n- … and {len(lines) - len(shown)} more"
    return [
        {
            "type": "TextBlock",
            "text": title,
            "weight": "Bolder",
            "color": color,
            "spacing": "Medium",
        },
        {"type": "TextBlock", "text": text, "wrap": True, "spacing": "Small"},
    ]


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
    bar = "█" * filled + "░" * (BAR_WIDTH - filled) + f"  {done * 100 // total}%"
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
            "text": _cut(reply.text, MAX_TEXT),
            "lists": lists,
        },
    )


def card_json(card: Mapping[str, Any]) -> str:
    """The card as compact JSON: what is sent (made once for a rendered Card). orjson: a
    50-row table encodes in a tenth of the time `json.dumps` takes."""
    if isinstance(card, Card) and card.json is not None:
        return card.json
    return orjson.dumps(card).decode()


def card_size(card: Mapping[str, Any]) -> int:
    """Bytes of the card as compact JSON in UTF-8: what is sent."""
    return len(card_json(card).encode())


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


class Card(dict):  # type: ignore[type-arg]
    """A rendered Adaptive Card: complete when made and never changed afterwards.

    botbuilder deep-copies every activity it sends (and the invoke response), card included;
    for a card that is never changed a copy is the card itself, so copies share it. `json` is
    the card as JSON, made once when its size was checked; `dumps` sends that.
    """

    __slots__ = ("json",)

    def __init__(self, card: Mapping[str, Any], json_text: str | None = None) -> None:
        super().__init__(card)
        self.json = json_text

    def __deepcopy__(self, memo: dict[int, Any]) -> Card:
        return self


def render(reply: Reply, *, actionable: bool = True) -> Card:
    """The Adaptive Card (1.5, as a dict) for a reply; never over MAX_CARD_BYTES.

    `actionable=False` leaves the Approve / Reject buttons off a pending approval (the view of
    someone who may not decide it).
    """
    encoded = None
    if isinstance(reply, Table):
        card = _table(reply)
        keep = len(reply.rows)
        encoded = orjson.dumps(card)
        while len(encoded) > MAX_CARD_BYTES and keep > 0:
            keep = keep * 3 // 4 if keep > 4 else keep - 1
            card = _table(reply, keep_rows=keep)
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
        from bot.teams.digest_card import digest_card  # own layout (imports this module)

        card = digest_card(reply)
    elif isinstance(reply, DriftReport):
        from bot.teams.drift_card import drift_card  # own layout (imports this module)

        card = drift_card(reply)
    elif isinstance(reply, Message):
        card = _message(reply)
    else:
        card = bind(template("message"), {"tone": "accent", "title": reply.title})
    if encoded is None:
        encoded = orjson.dumps(card)
    if len(encoded) > MAX_CARD_BYTES:
        # Only pathological input gets here (e.g. thousands of facts): say so in a small card.
        card = bind(
            template("message"),
            {
                "tone": "warning",
                "title": _cut(reply.title, 200),
                "text": "This answer is too large for a card. Use the CLI (`python -m bot ... "
                "--json`) or narrow the request.",
            },
        )
        encoded = orjson.dumps(card)
    return Card(card, encoded.decode())


def attachment(card: Mapping[str, Any]) -> dict:
    """The card as a Bot Framework attachment (content type + content)."""
    return {"contentType": CONTENT_TYPE, "content": dict(card)}
