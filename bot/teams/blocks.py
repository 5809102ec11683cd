"""Adaptive Card building blocks shared by the renderer (`render.py`) and the digest layout
(`digest_card.py`): the template binder, buttons, text, records, the size of a card.

The card layouts are JSON templates in `cards/` (data, not code). A template is a card with
placeholders, bound from a reply:

- a string that is exactly `"${name}"` becomes the value `name` (any JSON: text, list, object);
  inside a list, a placeholder bound to a list is spliced in, and one bound to nothing is dropped;
  an object property bound to nothing (None or an empty list) is left out;
- `"${name}"` inside a longer string is replaced by the value as text;
- an object with `"$when": "${name}"` is left out when `name` is empty.

Values are inserted, never read as templates again, so text typed by a user cannot reach the
binder. Every button is an `Action.Execute` (verb + data) with an `Action.Submit` fallback
carrying the same data, so Teams clients with and without Universal Actions both work.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

from bot.resources import cards_folder

TEMPLATES = cards_folder()
#: SPEC §4: a card stays well under the Teams message limit.
MAX_CARD_BYTES = 36_864
CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"

# Verbs of the bot's buttons; bot/teams/card_actions.py handles each. Data is untrusted on return.
VERB_PAGE = "page"  # data: command (a listing command line, e.g. "products --page 2")
VERB_FORM_SUBMIT = "form.submit"  # data: command, form_id, dry_run + the inputs
VERB_APPROVE = "approval.approve"  # data: request_id + input `reason`
VERB_REJECT = "approval.reject"  # data: request_id + input `reason`
VERB_APPROVAL_REFRESH = "approval.refresh"  # data: request_id
#: Keys of button data that are not command fields.
CONTROL_KEYS = frozenset({"verb", "command", "form_id", "request_id"})

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DROP = object()

MAX_TEXT = 4_000  # characters of one text block before it is cut

#: U+2060 WORD JOINER: no line break here. Put after a hyphen (or another character after
#: which lines may break: / ? ) ] } * + | !) inside a word (TEAMS-SEATS, --dry-run,
#: CONTOSO-01), a browser or phone would otherwise break the word there when the line is full.
#: The grammar drops it again from text pasted back from a card.
WORD_JOINER = "\u2060"
#: The place after such a character, not at the end of a word (a constant replacement: re.sub
#: then copies instead of expanding a template per match, which made `usage` render 3× slower).
_INNER_HYPHEN = re.compile(r"(?<=[-/?)\]}+|!])(?=[^\s\u2060])")
#: Figures and their unit stay on one line: "67 %", "5 days".
NBSP = "\u00a0"


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
            if bound is DROP or bound is None:
                continue
            if isinstance(item, str) and _PLACEHOLDER.fullmatch(item) and isinstance(bound, list):
                out.extend(bound)
            else:
                out.append(bound)
        return out
    if isinstance(node, dict):
        when = node.get("$when")
        if when is not None and _empty(bind(when, data)):
            return DROP
        result: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$when":
                continue
            bound = bind(value, data)
            if bound is DROP:
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


# ----- words ---------------------------------------------------------------------------


def cut(text: str, limit: int) -> str:
    """`text` at most `limit` characters, an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unbreakable(text: str) -> str:
    """`text` with a word joiner after every hyphen inside a word, so no line break falls
    inside TEAMS-SEATS or --dry-run (markdown list dashes are left alone)."""
    return _INNER_HYPHEN.sub(WORD_JOINER, text)


def figure(value: int | float | None) -> str:
    """A count as people read it: 1,000 (— when there is none)."""
    if type(value) is int:
        return f"{value:,}"
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def percent(share: float) -> str:
    """A share (0..1) as "67 %", figure and sign on one line."""
    return f"{100 * share:.0f}{NBSP}%"


# ----- elements ------------------------------------------------------------------------


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


class _Unbroken(dict):  # type: ignore[type-arg]
    """A text block made by `text`: its text is already `unbreakable`, so `unbroken` passes it
    by without copying it (a usage card has hundreds: walking them was most of its render)."""

    __slots__ = ()


def text(value: str, **extra: Any) -> dict[str, Any]:
    """A wrapping TextBlock (cut at MAX_TEXT characters), no word broken at a hyphen."""
    return _Unbroken(
        {"type": "TextBlock", "text": unbreakable(cut(value, MAX_TEXT)), "wrap": True, **extra}
    )


def heading(value: str, color: str = "Default") -> dict[str, Any]:
    """A section heading, with a separator line above it."""
    return text(value, weight="Bolder", size="Medium", color=color, spacing="Large", separator=True)


def record(
    title: str, detail: str = "", *, color: str = "Default", first: bool = False
) -> dict[str, Any]:
    """One record of a list: a title line and a subtle detail line under it."""
    items = [text(title, color=color, spacing="None")]
    if detail:
        items.append(text(detail, isSubtle=True, size="Small", spacing="None"))
    block: dict[str, Any] = {"type": "Container", "items": items, "spacing": "Medium"}
    if not first:
        block["separator"] = True
    return block


def cell(value: str, *, bold: bool = False, right: bool = False) -> dict:
    """A table cell holding one wrapping text."""
    block: dict[str, Any] = {"type": "TextBlock", "text": cut(value, 300) or " ", "wrap": True}
    if bold:
        block["weight"] = "Bolder"
    if right:
        block["horizontalAlignment"] = "Right"
    return {"type": "TableCell", "items": [block]}


# ----- the card as sent ----------------------------------------------------------------


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


def card_json(card: Mapping[str, Any]) -> str:
    """The card as compact JSON: what is sent (made once for a rendered Card). orjson: a
    50-row table encodes in a tenth of the time `json.dumps` takes."""
    if isinstance(card, Card) and card.json is not None:
        return card.json
    return orjson.dumps(card).decode()


def card_size(card: Mapping[str, Any]) -> int:
    """Bytes of the card as compact JSON with non-ASCII escaped (\\u2060): what is sent."""
    return sent_size(card_json(card))


def sent_size(encoded: str | bytes) -> int:
    """Bytes of JSON text once its non-ASCII characters are escaped, as they are sent."""
    text = encoded.decode() if isinstance(encoded, bytes) else encoded
    return len(text.encode("ascii", "backslashreplace"))


def unbroken(node: Any) -> Any:
    """The card with `unbreakable` applied to every text people read (text blocks, text runs,
    facts); button data, inputs and ids are left exactly as they are."""
    # Every card passes through here: scalars and text blocks made by `text` are taken as
    # they are, without a call per value.
    if isinstance(node, list):
        return [
            unbroken(item)
            if isinstance(item, (dict, list)) and type(item) is not _Unbroken
            else item
            for item in node
        ]
    if not isinstance(node, dict) or type(node) is _Unbroken:
        return node
    readable: tuple[str, ...] = ("text",) if node.get("type") in _TEXT_KINDS else ()
    if "type" not in node:
        readable = ("title", "value")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, str):
            out[key] = unbreakable(value) if key in readable else value
        elif key in _AS_SENT or not isinstance(value, (dict, list)):
            out[key] = value
        else:
            out[key] = unbroken(value)
    return out


_TEXT_KINDS = frozenset({"TextBlock", "TextRun"})
#: Left exactly as they are: what comes back from a click, inputs' choices, ids.
_AS_SENT = frozenset({"data", "choices", "verb", "id", "refresh", "msteams"})
