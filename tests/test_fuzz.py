"""SPEC §8: inputs of any shape, through the public door — a property-based fuzz (hypothesis).

The running app in production mode (channel tokens checked, admins through the fake Graph,
replies to the fake Bot Connector), on SQLite and PostgreSQL, with a small ledger. Hypothesis
sends it:

- typed commands: words of the grammar, names that exist and names that nearly do, numbers of
  every shape, quotes, unicode, control characters, injection attempts, very long text;
- card submissions: `adaptiveCard/action` invokes and Action.Submit messages whose verb, data
  and field values are anything (wrong types, missing or extra keys, forged ids, huge
  numbers) — what a tampered client could send;
- activities whose own fields have the wrong shape.

For every case: the bot answers (never HTTP 500, never "Something went wrong"); an answer
that refuses (an error card, a form to correct, an invoke error) leaves the whole ledger —
every row, the audit trail and its head — exactly as it was; and whenever the ledger did
change, the answer said so and the invariants hold.

Examples: a few hundred per test in the normal suite; thousands with HYPOTHESIS_PROFILE=deep
(`HYPOTHESIS_PROFILE=deep .venv/bin/python -m pytest tests/test_fuzz.py`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.commands.registry import REGISTRY
from bot.domain import ledger
from bot.domain.models import ProductKind
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.support.ledger_state import check_invariants, snapshot
from tests.support.teams_env import (
    APP_ID,
    BOT_ID,
    SEED,
    RunningBot,
    auth_settings,
    message,
    running_bot,
    seed_ledger,
    texts,
    trust_fakes,
)

DEEP = os.environ.get("HYPOTHESIS_PROFILE", "") == "deep"
EXAMPLES = 2500 if DEEP else 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
REPLY_TIMEOUT = 10.0

# ----- what the cases are made of ---------------------------------------------------------

NAMES = [
    "ACME-01",
    "ACME-02",
    "acme-01",
    "TEAMS-SEATS",
    "SIP-CHANNELS",
    "BENCH-POOL",
    "TEAMS-SEAT",
    "Contoso Ltd",
    "Fabrikam",
    "NUMBERS-GB-GEO",
]
NUMBERS = ["0", "1", "2", "-1", "1e3", "1.5", "99999999999", "1,000", "+3", "٣", "0x10", "NaN"]
NASTY = [
    "'; DROP TABLE product; --",
    '" OR 1=1 --',
    "${title}",
    "{{7*7}}",
    "<at>x</at>",
    "\u202e",
    "\u200b",
    "\x00",
    "\ud7ff",
    "🙂",
    "Zu\u0308rich",
    "\\",
    "%s%n",
    "../..",
    "A" * 600,
    "-" * 300,
]
VERBS = sorted({w for name in REGISTRY for w in name.split()})
WORDS = st.sampled_from(
    VERBS
    + NAMES
    + NUMBERS
    + NASTY
    + [
        "to",
        "from",
        "for",
        "--dry-run",
        "--kind",
        "custom",
        "--capacity",
        "--license",
        "--country",
        "GB",
        "--customer",
        "--mode",
        "--page",
        "--limit",
        "--since",
        "7d",
        "--type",
        "mobile",
        '"',
        "'",
        "“",
        "--x=1",
        "=",
    ]
)
TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(WORDS, max_size=8).map(" ".join),
    st.tuples(st.lists(WORDS, max_size=6), st.text(max_size=40)).map(
        lambda parts: " ".join(parts[0]) + " " + parts[1]
    ),
)

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=60),
    st.sampled_from(NAMES + NUMBERS + NASTY),
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELD_KEYS = [
    "quantity",
    "product",
    "subscription",
    "customer",
    "name",
    "code",
    "capacity",
    "kind",
    "country",
    "unit",
    "sku",
    "mode",
    "reason",
    "dry_run",
    "license",
    "id",
    "target",
    "page",
    "upn",
    "e164",
    "type",
    "channels",
    "tenant",
]
COMMAND = st.one_of(st.sampled_from(sorted(REGISTRY)), st.text(max_size=30), JSON_SCALARS)
FORM_ID = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True),
    st.text(max_size=80),
    JSON_SCALARS,
)
CARD_DATA = st.fixed_dictionaries(
    {},
    optional={
        "command": COMMAND,
        "form_id": FORM_ID,
        "request_id": st.one_of(st.text(max_size=50), JSON_SCALARS),
        **{
            key: st.one_of(JSON_SCALARS, st.sampled_from(NAMES + NUMBERS), JSON)
            for key in FIELD_KEYS
        },
    },
).flatmap(
    lambda data: st.dictionaries(st.text(max_size=10), JSON, max_size=2).map(
        lambda extra: {**extra, **data}
    )
)
VERB = st.one_of(
    st.sampled_from(
        ["form.submit", "page", "approval.approve", "approval.reject", "approval.refresh"]
    ),
    st.text(max_size=20),
    JSON_SCALARS,
)


@st.composite
def card_submission(draw: st.DrawFn) -> dict[str, Any]:
    """The extra fields of an activity carrying a card's data (Execute invoke or Submit)."""
    verb, data = draw(VERB), draw(CARD_DATA)
    shape = draw(st.sampled_from(["invoke", "invoke", "invoke-odd", "submit", "submit-odd"]))
    if shape == "invoke":
        value: Any = {
            "action": {"type": "Action.Execute", "verb": verb, "data": data},
            "trigger": "manual",
        }
        return {"type": "invoke", "name": "adaptiveCard/action", "value": value}
    if shape == "invoke-odd":  # the invoke's own shape is wrong
        value = draw(
            st.one_of(
                JSON,
                st.fixed_dictionaries({"action": JSON}),
                st.fixed_dictionaries(
                    {"action": st.fixed_dictionaries({"verb": VERB, "data": JSON})}
                ),
            )
        )
        return {"type": "invoke", "name": "adaptiveCard/action", "value": value}
    if shape == "submit":
        return {"type": "message", "text": "", "value": {**data, "verb": verb}}
    return {"type": "message", "text": draw(st.sampled_from(["", " ", None])), "value": draw(JSON)}


ODD_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "text": JSON,
        "entities": st.one_of(
            JSON,
            st.lists(
                st.fixed_dictionaries(
                    {
                        "type": st.sampled_from(["mention", "clientInfo"]),
                        "text": JSON,
                        "mentioned": JSON,
                    }
                ),
                max_size=3,
            ),
        ),
        "channelData": JSON,
        "value": JSON,
        "locale": JSON,
        "textFormat": JSON,
        "replyToId": JSON,
        "attachments": JSON,
    },
)

# ----- the running bot ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


_ids = itertools.count(1)


@dataclass
class Answer:
    status: int
    card: dict[str, Any] | None  # the answer card (invoke response, or the reply message)

    @property
    def refused(self) -> bool:
        """An error card, a form to correct, or an invoke error: nothing should have changed."""
        if self.status != 200 and self.status != 201:
            return True
        if self.card is None:
            return False
        return _style(self.card) == "attention" or _has_inputs(self.card)


def _style(card: dict[str, Any]) -> str | None:
    body = card.get("body") or []
    first = body[0] if body and isinstance(body[0], dict) else {}
    return first.get("style") if first.get("type") == "Container" else None


def _has_inputs(node: Any) -> bool:
    if isinstance(node, dict):
        if str(node.get("type", "")).startswith("Input."):
            return True
        return any(_has_inputs(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_inputs(v) for v in node)
    return False


@dataclass
class Door:
    """The Bot Framework door of the running app, as the Bot Connector uses it."""

    bot: RunningBot
    connector: FakeBotConnector
    idp: FakeIdentityProvider
    token: str
    seen: int = 0  # connector activities already looked at

    async def send(self, **fields: Any) -> Answer:
        aid = f"fuzz-{next(_ids)}"
        # A conversation per case: hundreds of messages in one chat would be Teams' per-chat
        # rate limit (60 in 30 s) at work, which the bot's replies keep to.
        activity = message(
            "",
            self.connector.service_url,
            tenant=self.idp.tenant_id,
            activity_id=aid,
            conversation=f"a:fuzz-chat-{aid}",
        )
        activity.pop("text")
        activity.update(fields)
        posted = await self.bot.post(activity, self.token)
        assert posted.status != 500, (fields, posted)
        assert posted.status in (200, 201, 400), (fields, posted)
        if activity["type"] == "invoke":
            body = posted.body if isinstance(posted.body, dict) else {}
            value = body.get("value")
            assert posted.status == 200 or body.get("type") == "application/vnd.microsoft.error"
            is_card = isinstance(value, dict) and value.get("type") == "AdaptiveCard"
            return Answer(posted.status, value if is_card else None)
        if posted.status == 400:
            return Answer(400, None)  # not an activity the SDK can read: refused at the door
        return Answer(posted.status, await self._reply_to(aid))

    async def _reply_to(self, aid: str) -> dict[str, Any]:
        """The card the turn answered with: its reply, or (a card's Submit naming the clicked
        card in replyToId) its update of that card. Cases run one at a time."""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            sent = self.connector.activities
            for answer in sent[self.seen :]:
                if (answer.reply_to_id == aid and answer.kind in ("reply", "send")) or (
                    answer.kind == "update"
                ):
                    self.seen = len(sent)
                    attachments = answer.attachments
                    assert attachments, answer.activity
                    card: dict[str, Any] = attachments[0]["content"]
                    return card
            assert time.monotonic() < deadline, f"no reply to {aid}"
            await asyncio.sleep(0.002)


@pytest_asyncio.fixture
async def door(
    empty_db_url: str, idp: FakeIdentityProvider, graph: FakeGraph, connector: FakeBotConnector
) -> AsyncIterator[Door]:
    async with running_bot(auth_settings(empty_db_url, idp, graph, connector)) as bot:
        await seed_ledger()
        await ledger.add_product(SEED, "BENCH-POOL", ProductKind.CUSTOM, 1_000)
        await ledger.add_product(SEED, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 50, country="GB")
        yield Door(bot, connector, idp, idp.channel_token(APP_ID, connector.service_url))


async def check_case(door: Door, **fields: Any) -> None:
    before = await snapshot()
    answer = await door.send(**fields)
    if answer.card is not None:
        said = " ".join(texts(answer.card))
        assert "Something went wrong" not in said, (fields, said)
    after = await snapshot()
    if answer.refused:
        assert after == before, ("a refused input changed the ledger", fields, answer)
    elif after != before:
        assert len(after["audit"]) > len(before["audit"]), ("a change without audit", fields)
        await check_invariants()


# ----- the properties -----------------------------------------------------------------------


@FUZZ
@given(text=TEXT, mention=st.booleans())
async def test_typed_commands_of_any_shape(door: Door, text: str, mention: bool) -> None:
    entities = []
    if mention:
        at = "<at>Fusion Products</at>"
        text = f"{at} {text}"
        entities = [{"type": "mention", "text": at, "mentioned": {"id": BOT_ID, "name": "Bot"}}]
    await check_case(door, type="message", text=text, entities=entities)


@FUZZ
@given(submission=card_submission())
async def test_card_submissions_of_any_shape(door: Door, submission: dict[str, Any]) -> None:
    await check_case(door, **submission)


@FUZZ
@given(odd=ODD_FIELDS, text=TEXT)
async def test_activities_with_fields_of_the_wrong_shape(
    door: Door, odd: dict[str, Any], text: str
) -> None:
    await check_case(door, **{"type": "message", "text": text, **odd})
