"""Issue 16: what an outside attack run found at the edges, each through the public door.

Bodies the parser cannot take, Unicode digits as quantities, tokens without an expiry, two
Authorization headers, an approver whose object id differs from the requester's only in case.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bot.commands.dispatch import run_text
from bot.commands.reply import Error
from bot.domain import approvals
from bot.domain.change import Origin
from bot.domain.errors import Forbidden
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.ledger_state import context, refused, snapshot
from tests.teams_env import (
    APP_ID,
    RunningBot,
    auth_settings,
    message,
    running_bot,
    seed_ledger,
    trust_fakes,
)


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@dataclass
class Door:
    bot: RunningBot
    idp: FakeIdentityProvider
    connector: FakeBotConnector

    def token(self, **kwargs: object) -> str:
        return self.idp.channel_token(APP_ID, self.connector.service_url, **kwargs)

    def activity(self, text: str = "allocate 1 TEAMS-SEATS to ACME-01") -> dict[str, object]:
        return message(text, self.connector.service_url, tenant=self.idp.tenant_id)

    async def post_raw(self, body: bytes, headers: list[tuple[str, str]]) -> int:
        async with self.bot.http.post(self.bot.messages_url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status


@pytest_asyncio.fixture
async def door(
    empty_db_url: str, idp: FakeIdentityProvider, graph: FakeGraph, connector: FakeBotConnector
) -> AsyncIterator[Door]:
    async with running_bot(auth_settings(empty_db_url, idp, graph, connector)) as bot:
        await seed_ledger()
        yield Door(bot, idp, connector)


# ----- 1. bodies the JSON parser cannot take ----------------------------------------------------

DEPTH = 10_000
UNREADABLE = {
    "arrays nested 10,000 deep": b"[" * DEPTH + b"]" * DEPTH,
    "objects nested 10,000 deep": b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
    "an activity whose value is nested 10,000 deep": (
        b'{"type":"message","id":"1","value":' + b"[" * DEPTH + b"]" * DEPTH + b"}"
    ),
    "not UTF-8": b'{"type":"message","text":"\xff\xfe"}',
    "truncated": b'{"type":"message","text":"hel',
    "a JSON string": b'"message"',
    "a JSON number": b"1e999",
    "an object without a type": b'{"id":"1","text":"usage"}',
    "a type that is not text": b'{"type":["message"],"id":"1"}',
    "empty": b"",
}


@pytest.mark.parametrize("case", list(UNREADABLE))
async def test_a_body_that_is_not_an_activity_is_400_and_nothing_runs(
    door: Door, case: str
) -> None:
    before = await snapshot()
    headers = [
        ("Authorization", f"Bearer {door.token()}"),
        ("Content-Type", "application/json"),
    ]
    assert await door.post_raw(UNREADABLE[case], headers) == 400
    await asyncio.sleep(0.05)
    assert door.connector.requests == []
    assert await snapshot() == before


# ----- 7. token and identity details ----------------------------------------------------------


async def test_a_channel_token_without_exp_is_refused(door: Door) -> None:
    before = await snapshot()
    posted = await door.bot.post(door.activity(), door.token(omit=("exp",)))
    assert posted.status == 401
    await asyncio.sleep(0.05)
    assert door.connector.requests == []
    assert await snapshot() == before


async def test_two_authorization_headers_are_refused(door: Door) -> None:
    before = await snapshot()
    good = door.token()
    for second in (f"Bearer {good}", "Bearer garbage"):
        headers = [
            ("Authorization", f"Bearer {good}"),
            ("Authorization", second),
            ("Content-Type", "application/json"),
        ]
        body = json.dumps(door.activity()).encode()
        assert await door.post_raw(body, headers) == 401
    await asyncio.sleep(0.05)
    assert door.connector.requests == []
    assert await snapshot() == before
    # The same activity with one header goes through: the refusal was about the two.
    posted = await door.bot.post(door.activity("whoami"), good)
    assert posted.status == 201


@pytest.mark.usefixtures("database")
async def test_the_requester_cannot_approve_under_another_case_of_their_object_id() -> None:
    oid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    for text in (
        'customer add "Contoso Ltd"',
        'subscription add ACME-01 --customer "Contoso Ltd"',
        "product add TEAMS-SEATS --kind teams-seats --capacity 500",
    ):
        assert (await run_text(text, context())).ok, text
    asked = Origin(actor_id=oid.upper(), actor_name="Ada", source="chat")
    request = await approvals.request_change(
        asked,
        approvals.ALLOCATE,
        {"quantity": 200, "product": "TEAMS-SEATS", "subscription": "ACME-01"},
        ttl_hours=1,
    )
    same_person = Origin(actor_id=oid.lower(), actor_name="Ada", source="card")
    await refused(
        lambda: approvals.decide(same_person, request.id, approve=True),
        Forbidden,
        "cannot decide it",
    )
    assert approvals.is_requester(request, f" {oid.lower()} ")
    assert not approvals.is_requester(request, "1f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")


# ----- 6. quantities are written with the digits 0-9 ---------------------------------------------

NOT_ASCII = {
    "Arabic-Indic five": "٥",
    "fullwidth five": "５",
    "Devanagari twelve": "१२",
    "Bengali one": "১",
    "mathematical bold seven": "𝟕",
    "superscript two": "²",
    "ASCII mixed with Arabic-Indic": "1٥",
}


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("case", list(NOT_ASCII))
async def test_a_quantity_in_other_digits_gets_the_usage_and_changes_nothing(case: str) -> None:
    for text in (
        'customer add "Contoso Ltd"',
        'subscription add ACME-01 --customer "Contoso Ltd"',
        "product add TEAMS-SEATS --kind teams-seats --capacity 10",
    ):
        assert (await run_text(text, context())).ok, text
    before = await snapshot()
    digits = NOT_ASCII[case]
    for text in (
        f"allocate {digits} TEAMS-SEATS to ACME-01",
        f"product capacity TEAMS-SEATS {digits}",
        f"product add FAX --kind custom --capacity {digits}",
        f"audit --limit {digits}",
        f"audit --since {digits}d",
    ):
        reply = await run_text(text, context())
        assert isinstance(reply, Error), (text, reply)
        assert reply.code == "usage", (text, reply.code, reply.text)
    assert await snapshot() == before
    # The same command with 0-9 works.
    assert (await run_text("allocate 5 TEAMS-SEATS to ACME-01", context())).ok
