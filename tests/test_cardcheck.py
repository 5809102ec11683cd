"""Proves that the card-checking harness (tests/cardcheck) catches what it must.

Schema tests are pure Python.  Renderer tests need node, `npm ci` in tests/cardcheck/render and
Chromium; they are skipped when those are missing unless CARDCHECK_REQUIRE_RENDERER=1 (CI sets
it, so a broken renderer setup fails the build instead of silently skipping).
"""

from __future__ import annotations

import copy
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft6Validator

try:
    from tests import cardcheck
    from tests.cardcheck import schema as cc_schema
except ModuleNotFoundError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import cardcheck  # type: ignore[no-redef, unused-ignore]
    from cardcheck import schema as cc_schema  # type: ignore[no-redef, unused-ignore]

ARTIFACTS = cardcheck.ARTIFACTS_DIR


def good_card() -> dict[str, Any]:
    """A realistic 1.5 card using everything the bot relies on."""

    def cell(text: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": "TableCell",
            "items": [{"type": "TextBlock", "text": text, "wrap": True, **extra}],
        }

    return {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "msteams": {"width": "Full"},
        "body": [
            {"type": "TextBlock", "text": "Allocate numbers", "style": "heading", "wrap": True},
            {
                "type": "TextBlock",
                "text": "Allocated **400 → 450** of _UK Geographic_ to `ACME-001`.",
                "wrap": True,
                "isSubtle": True,
            },
            {
                "type": "FactSet",
                "facts": [
                    {"title": "Product", "value": "UK Geographic"},
                    {"title": "Capacity", "value": "1,000"},
                    {"title": "Allocated", "value": "400 → 450"},
                ],
            },
            {
                "type": "Table",
                "gridStyle": "accent",
                "firstRowAsHeader": True,
                "columns": [{"width": 3}, {"width": 1}, {"width": 1}],
                "rows": [
                    {
                        "type": "TableRow",
                        "style": "emphasis",
                        "cells": [
                            cell("Subscription", weight="Bolder"),
                            cell("Allocated", weight="Bolder"),
                            cell("In use", weight="Bolder"),
                        ],
                    },
                    {"type": "TableRow", "cells": [cell("ACME-001"), cell("450"), cell("312")]},
                    {
                        "type": "TableRow",
                        "cells": [cell("GLOBEX-7"), cell("120"), cell("119", color="Attention")],
                    },
                ],
            },
            {
                "type": "ColumnSet",
                "columns": [
                    {
                        "type": "Column",
                        "width": "stretch",
                        "items": [
                            {
                                "type": "Input.Text",
                                "id": "product",
                                "label": "Product",
                                "placeholder": "UK Geographic",
                                "isRequired": True,
                                "errorMessage": "Enter a product name",
                            },
                        ],
                    },
                    {
                        "type": "Column",
                        "width": "auto",
                        "items": [
                            {
                                "type": "Input.Number",
                                "id": "count",
                                "label": "How many",
                                "min": 1,
                                "value": 50,
                                "isRequired": True,
                                "errorMessage": "A positive whole number",
                            },
                        ],
                    },
                ],
            },
            {
                "type": "Input.ChoiceSet",
                "id": "subscription",
                "label": "Subscription",
                "style": "compact",
                "value": "ACME-001",
                "choices": [
                    {"title": "ACME-001 (Direct Routing)", "value": "ACME-001"},
                    {"title": "GLOBEX-7 (Operator Connect)", "value": "GLOBEX-7"},
                ],
            },
            {
                "type": "Container",
                "style": "emphasis",
                "rtl": False,  # valid 1.5 property the raw schema misspells as "rtl?"
                "items": [
                    {
                        "type": "TextBlock",
                        "text": "Dry run: nothing changed.",
                        "size": "Small",
                        "wrap": True,
                    }
                ],
            },
        ],
        "actions": [
            {
                "type": "Action.Execute",
                "title": "Allocate",
                "verb": "allocate",
                "style": "positive",
                "data": {"command": "allocate", "dryRun": False},
                "fallback": {
                    "type": "Action.Submit",
                    "title": "Allocate",
                    "style": "positive",
                    "data": {"verb": "allocate", "command": "allocate", "dryRun": False},
                },
            },
            {
                "type": "Action.Execute",
                "title": "Dry run",
                "verb": "allocate",
                "data": {"command": "allocate", "dryRun": True},
                "fallback": {
                    "type": "Action.Submit",
                    "title": "Dry run",
                    "data": {"verb": "allocate", "dryRun": True},
                },
            },
        ],
        "refresh": {
            "action": {"type": "Action.Execute", "verb": "refresh", "data": {"view": "usage"}},
            "userIds": [],
        },
    }


def problems(card: Any, **kw: Any) -> list[str]:
    return cc_schema.card_problems(card, **kw)


def with_(card: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of ``card`` with the item at ``path`` ("body.3.rows.0") replaced."""
    card = copy.deepcopy(card)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = card
    for p in parents:
        node = node[p]
    node[last] = value
    return card


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- schema


def test_schema_is_the_official_draft06_1_5_schema() -> None:
    path = cardcheck.schema_path()
    assert path.name == "schema-1.5.json" and path.parent.parent.name == "adaptive_cards"
    raw = json.loads(path.read_text())
    assert raw["$schema"] == "http://json-schema.org/draft-06/schema#"
    assert "Action.Execute" in raw["definitions"]  # Universal Actions are part of 1.5
    assert "Table" in raw["definitions"]


def test_good_card_passes() -> None:
    card = good_card()
    assert Draft6Validator(cc_schema.load_schema()).is_valid(
        {k: v for k, v in card.items() if k != "msteams"}
    )
    cardcheck.validate_card(card)
    assert problems(card) == []
    assert cardcheck.universal_action_problems(card) == []


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        # unknown element / action types
        (("body.0", {"type": "Carousel", "pages": []}), ["$.body[0] (Carousel): unknown"]),
        (("body.2.type", "Factset"), ["$.body[2] (Factset): unknown"]),
        (("actions.0.type", "Action.Http"), ["$.actions[0] (Action.Http): unknown"]),
        (
            ("body.4.columns.0.items.0.type", "Input.Email"),
            ["$.body[4].columns[0].items[0] (Input.Email 'product'): unknown"],
        ),
        (("body.0", {"text": "no type"}), ["$.body[0]: missing required property 'type'"]),
        # wrong property types
        (("body.0.wrap", "yes"), ['$.body[0].wrap: "yes" is not of type boolean']),
        (("body.0.text", 42), ["$.body[0].text: 42 is not of type string"]),
        (("body.2.facts.1.value", 1000), ["$.body[2].facts[1].value: 1000 is not of type string"]),
        (
            ("body.4.columns.1.items.0.value", "50"),
            ['$.body[4].columns[1].items[0].value: "50" is not of type number'],
        ),
        (
            ("body.3.rows.1.cells.0.items.0.size", "huge"),
            ['$.body[3].rows[1].cells[0].items[0].size: "huge" is invalid'],
        ),
        (
            ("body.3.rows.1.cells.0.items.0.size", "xxlarge"),
            ['size: "xxlarge" is invalid'],
        ),  # raw schema's loose pattern lets this through
        (
            ("actions.0.verb", ["allocate"]),
            ['$.actions[0].verb: ["allocate"] is not of type string'],
        ),
        (("actions.0.fallback.data", 5), ["$.actions[0].fallback.data: 5 is invalid"]),
        (
            ("body.1.isSubtle", "true"),
            ['$.body[1].isSubtle: "true" is invalid; expected of type boolean or null'],
        ),
        # missing required properties
        (
            ("body.0", {"type": "TextBlock", "wrap": True}),
            ["$.body[0] (TextBlock): 'text' is a required property"],
        ),
        (
            ("body.2.facts.0", {"title": "Product"}),
            ["$.body[2].facts[0]: 'value' is a required property"],
        ),
        (
            ("body.5.choices.0", {"title": "ACME"}),
            ["$.body[5].choices[0]: 'value' is a required property"],
        ),
        (
            ("body.4.columns.0.items.0", {"type": "Input.Text", "label": "x"}),
            ["(Input.Text): 'id' is a required property"],
        ),
        (
            ("body.3.rows.0.cells.0", {"type": "TableCell"}),
            ["$.body[3].rows[0].cells[0] (TableCell): 'items' is a required property"],
        ),
        (
            ("actions.1", {"type": "Action.OpenUrl", "title": "Docs"}),
            ["$.actions[1] (Action.OpenUrl): 'url' is a required property"],
        ),
        # unknown properties, wrong top level
        (("body.0.colour", "good"), ["$.body[0] (TextBlock): unknown property 'colour'"]),
        (
            # Teams' responsive layout is accepted (see test_teams_extensions_…), a bad value not.
            ("body.3.targetWidth", "huge"),
            ['$.body[3].targetWidth: "huge" is not a Teams width'],
        ),
        (("version", "1.6"), ['$.version: must be "1.5"']),
        (("version", 1.5), ['$.version: must be "1.5"']),
        (("type", "Card"), ['$.type: must be "AdaptiveCard"']),
        (("refresh.action", {"type": "Action.Submit", "data": {}}), ["$.refresh.action.type"]),
        (("msteams", {"width": "Wide"}), ['$.msteams.width: must be "Full"']),
    ],
)
def test_invalid_cards_fail_with_readable_messages(
    mutation: tuple[str, Any], expected: list[str]
) -> None:
    card = with_(good_card(), *mutation)
    found = problems(card)
    assert found, f"{mutation} was not caught"
    for fragment in expected:
        assert any(fragment in p for p in found), f"{fragment!r} not in {found}"
    with pytest.raises(AssertionError) as exc:
        cardcheck.validate_card(card)
    assert expected[0] in str(exc.value)
    # The type-dispatching anyOf gives the same verdict as plain draft-06 anyOf.
    body = {k: v for k, v in card.items() if k != "msteams"}
    plain = Draft6Validator(cc_schema.load_schema())
    assert plain.is_valid(body) == cc_schema._validator().is_valid(body)


def test_all_problems_are_listed_at_once() -> None:
    card = good_card()
    card["body"][0]["wrap"] = "yes"
    card["body"].append({"type": "Bogus"})
    card["actions"][1]["fallback"] = {"type": "Action.Submit", "data": 5}
    with pytest.raises(AssertionError) as exc:
        cardcheck.validate_card(card)
    message = str(exc.value)
    assert message.startswith("Adaptive Card is not valid (3 problems)")
    assert "$.body[0].wrap" in message and "$.body[7] (Bogus)" in message
    assert "$.actions[1].fallback.data" in message


def test_msteams_extension_is_allowed_only_when_asked() -> None:
    card = good_card()
    card["msteams"] = {
        "width": "Full",
        "entities": [
            {
                "type": "mention",
                "text": "<at>Ann</at>",
                "mentioned": {"id": "29:1abc", "name": "Ann"},
            }
        ],
    }
    assert problems(card) == []
    strict = problems(card, allow_msteams=False)
    assert strict == [
        "$ (AdaptiveCard): unknown property 'msteams' (not in the Adaptive Card 1.5 schema)"
    ]
    card["msteams"]["entities"][0]["mentioned"] = {"id": "29:1abc"}
    assert problems(card) == [
        "$.msteams.entities[0].mentioned: must be an object with string 'id' and 'name'"
    ]


def test_case_insensitive_enums_and_fallback_drop_are_accepted() -> None:
    card = with_(good_card(), "body.0.size", "ExtraLarge")
    card["body"][1]["fallback"] = "drop"
    card["body"][2]["fallback"] = {"type": "TextBlock", "text": "no facts"}
    assert problems(card) == []


def test_oversized_card_fails() -> None:
    card = good_card()
    row = card["body"][3]["rows"][1]
    card["body"][3]["rows"].extend(copy.deepcopy(row) for _ in range(200))
    size = cardcheck.card_size(card)
    assert size > cardcheck.MAX_CARD_BYTES == 36_864
    found = problems(card)
    assert found == [f"$: card JSON is {size} bytes, over the 36864-byte limit (page long lists)"]


def test_size_limit_boundary_uses_compact_ascii_json() -> None:
    base = good_card()
    base["body"][1]["text"] = ""
    room = cardcheck.MAX_CARD_BYTES - cardcheck.card_size(base)
    at_limit = with_(base, "body.1.text", "x" * room)
    assert cardcheck.card_size(at_limit) == cardcheck.MAX_CARD_BYTES
    assert problems(at_limit) == []
    assert any(
        "over the 36864-byte limit" in p
        for p in problems(with_(base, "body.1.text", "x" * (room + 1)))
    )
    # Non-ASCII counts as its \uXXXX escape: the conservative bound for any JSON encoder.
    assert cardcheck.card_size({"t": "→"}) == len('{"t":"\\u2192"}')


def test_universal_action_convention() -> None:
    card = good_card()
    del card["actions"][0]["fallback"]
    card["actions"][1]["verb"] = ""
    card["actions"].append({"type": "Action.Submit", "title": "Old style", "data": {}})
    assert cardcheck.universal_action_problems(card) == [
        "Action.Execute 'Allocate' has no Action.Submit fallback",
        "Action.Execute 'Dry run' has no verb",
        "Action.Submit 'Old style' used directly;"
        " use Action.Execute with an Action.Submit fallback",
    ]


# --------------------------------------------------------------------------- renderer


@pytest.fixture(scope="module")
def renderer() -> None:
    try:
        ok = cardcheck.ensure_renderer()
    except cardcheck.RendererError as exc:
        pytest.fail(f"npm ci failed: {exc}")
    if not ok:
        reason = cardcheck.renderer_unavailable_reason()
        if os.environ.get("CARDCHECK_REQUIRE_RENDERER") == "1":
            pytest.fail(f"card renderer required but unavailable: {reason}")
        pytest.skip(f"card renderer unavailable: {reason}")


@pytest.mark.browser
@pytest.mark.slow
def test_renderer_renders_good_card_and_rejects_bad_ones(renderer: None) -> None:
    bad_unknown = with_(good_card(), "body.2", {"type": "Carousel", "pages": []})
    bad_value = with_(good_card(), "body.0.size", "huge")
    bad_version = with_(good_card(), "body.5.labelPosition", "inline")  # 1.6-only property
    bad_ids = with_(good_card(), "body.5.id", "product")  # duplicate input id
    too_many = with_(
        good_card(),
        "actions",
        [
            {
                "type": "Action.Execute",
                "title": f"B{i}",
                "verb": "x",
                "fallback": {"type": "Action.Submit", "title": f"B{i}"},
            }
            for i in range(8)
        ],
    )
    report = cardcheck.render_cards(
        {
            "good allocate card": good_card(),
            "unknown-element": bad_unknown,
            "bad-enum-value": bad_value,
            "unsupported-1.6-property": bad_version,
            "duplicate-ids": bad_ids,
            "too-many-actions": too_many,
            "not-a-card": {"type": "Message", "text": "hi"},
        },
        ARTIFACTS,
    )

    good = report["good allocate card"]
    assert good["errors"] == [], good
    shot = Path(good["screenshot"])
    assert shot == ARTIFACTS / "good_allocate_card.png" and shot.is_file()
    width, height = png_size(shot)
    assert 700 <= width <= 1000 and height >= 400, (width, height)  # full-width card, all rows
    assert shot.stat().st_size > 20_000

    def has(name: str, fragment: str) -> None:
        errs = report[name]["errors"]
        assert any(fragment in e for e in errs), f"{name}: {fragment!r} not in {errs}"

    has("unknown-element", 'UnknownElementType: Unknown element type "Carousel"')
    has(
        "bad-enum-value",
        'InvalidPropertyValue [TextBlock]: Invalid value "huge" for property "size"',
    )
    has("unsupported-1.6-property", "UnsupportedProperty")
    has("duplicate-ids", "DuplicateId")
    has("too-many-actions", "TooManyActions")
    has("not-a-card", 'top-level "type" must be "AdaptiveCard"')
    # Every card still gets a screenshot, so a failing test can show what Teams would show.
    assert all(Path(entry["screenshot"]).is_file() for entry in report.values())


@pytest.mark.browser
def test_check_cards_combines_schema_and_renderer(renderer: None) -> None:
    report = cardcheck.check_cards({"ok": good_card()}, out_dir=ARTIFACTS, conventions=True)
    assert report["ok"]["errors"] == []
    with pytest.raises(AssertionError) as exc:
        cardcheck.check_cards(
            {"ok": good_card(), "broken": with_(good_card(), "body.0.size", "huge")},
            out_dir=ARTIFACTS,
        )
    message = str(exc.value)
    assert message.startswith("1 card(s) with problems:\nbroken:")
    assert '$.body[0].size: "huge" is invalid' in message
    assert 'renderer: Parse/InvalidPropertyValue [TextBlock]: Invalid value "huge"' in message


@pytest.mark.browser
def test_render_cli_reports_unreadable_json(renderer: None, tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "broken.json").write_text("{not json")
    proc = subprocess.run(
        [
            "node",
            str(cardcheck.RENDER_DIR / "render.mjs"),
            "--out",
            str(tmp_path / "shots"),
            str(tmp_path / "cards"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["broken.json"]["screenshot"] is None
    assert report["broken.json"]["errors"][0].startswith("cannot read card JSON")


# --------------------------------------------------------------------------- narrow first


def _card(*body: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "AdaptiveCard",
        "version": "1.5",
        "msteams": {"width": "Full"},
        "body": list(body),
    }


def test_teams_extensions_are_checked_then_seen_as_a_1_5_client_sees_them() -> None:
    chart = {
        "type": "Chart.Line",
        "data": [{"legend": "A", "values": [{"x": "1 Nov", "y": 3}]}],
        "fallback": {"type": "TextBlock", "text": "A: 3", "wrap": True},
    }
    narrow = {"type": "TextBlock", "text": "x", "targetWidth": "atMost:Narrow"}
    assert problems(_card(chart, narrow)) == []
    assert problems(_card({**narrow, "targetWidth": "tiny"})) == [
        '$.body[0].targetWidth: "tiny" is not a Teams width'
    ]
    no_fallback = {k: v for k, v in chart.items() if k != "fallback"}
    assert problems(_card(no_fallback)) == [
        "$.body[0]: Chart.Line needs a fallback element for clients without charts"
    ]
    # The fallback itself is held to the schema.
    bad = {**chart, "fallback": {"type": "TextBlock", "text": "x", "size": "huge"}}
    assert problems(_card(bad)) != []


@pytest.mark.browser
def test_the_renderer_sees_broken_words_sideways_overflow_and_target_widths(
    renderer: None,
) -> None:
    word = "SUPERCALIFRAGILISTICEXPIALIDOCIOUS-" * 3
    cards = {
        "fine": _card({"type": "TextBlock", "text": "TEAMS-\u2060SEATS " * 30, "wrap": True}),
        # One long word in a narrow column: the renderer breaks it inside.
        "broken": _card(
            {
                "type": "ColumnSet",
                "columns": [
                    {
                        "type": "Column",
                        "width": 1,
                        "items": [
                            {"type": "TextBlock", "text": "NUMBERS-GB-GEOGRAPHIC", "wrap": True}
                        ],
                    },
                    {
                        "type": "Column",
                        "width": 4,
                        "items": [{"type": "TextBlock", "text": "x", "wrap": True}],
                    },
                ],
            }
        ),
        # A line that may not wrap, wider than the card.
        "clipped": _card({"type": "TextBlock", "text": word, "wrap": False}),
        "responsive": _card(
            {"type": "TextBlock", "text": "PHONE-LAYOUT", "targetWidth": "atMost:Narrow"},
            {"type": "TextBlock", "text": "DESK-LAYOUT", "targetWidth": "atLeast:Standard"},
        ),
    }
    report = cardcheck.render_cards(cards, ARTIFACTS / "narrow-first", widths=(400, 800))
    found = cardcheck.layout_problems(report)
    assert "fine" not in found and "responsive" not in found, found
    assert any("word broken across lines" in p for p in found["broken"]), found
    assert any("overflows sideways" in p for p in found["clipped"]), found
    for name in cards:
        for width in ("400", "800"):
            assert Path(report[name]["widths"][width]["screenshot"]).is_file()
    # Each width gets the elements that target it, as in Teams.
    at = report["responsive"]["widths"]
    assert "PHONE-LAYOUT" in at["400"]["text"] and "DESK-LAYOUT" not in at["400"]["text"]
    assert "DESK-LAYOUT" in at["800"]["text"] and "PHONE-LAYOUT" not in at["800"]["text"]
    assert report["responsive"]["errors"] == []


@pytest.mark.browser
def test_the_renderer_sees_a_cut_button_title(renderer: None) -> None:
    """Two long titles side by side at 400 px are cut by the renderer (an ellipsis): the
    harness names the whole title; short ones, and a long one alone at full width, pass."""

    def buttons(*titles: str) -> dict[str, Any]:
        return {
            "type": "ActionSet",
            "actions": [
                {"type": "Action.Execute", "title": t, "verb": "x", "data": {}} for t in titles
            ],
        }

    long = ("All 2: make Teams match the ledger", "All 2: make the ledger match Teams")
    cards = {
        "cut": _card(buttons(*long)),
        "short": _card(buttons("Fix Teams", "Fix ledger"), buttons("Fix all 2")),
    }
    report = cardcheck.render_cards(cards, ARTIFACTS / "button-titles", widths=(400, 1000))
    found = cardcheck.layout_problems(report)
    assert "short" not in found, found
    for title in long:
        assert f'at 400 px: button title cut: "{title}"' in " ".join(found["cut"]), found
    assert not [p for p in found["cut"] if p.startswith("at 1000 px")], found
