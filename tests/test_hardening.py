"""Issue 16: what an outside attack run found at the edges, each through the public door.

Bodies the parser cannot take, Unicode digits as quantities, tokens without an expiry, two
Authorization headers, an approver whose object id differs from the requester's only in case.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from bot.commands.dispatch import run_text
from bot.commands.reply import Error
from bot.domain import approvals
from bot.domain.change import Origin
from bot.domain.digests import CRON_RULE, parse_schedule
from bot.domain.errors import Forbidden, InvalidInput
from bot.domain.models import Allocation, ApprovalRequest, AuditEvent, RequestKey
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.fakes._server import ThreadedServer
from tests.support.ledger_state import context, refused, snapshot
from tests.support.teams_env import (
    APP_ID,
    RunningBot,
    auth_settings,
    dev_settings,
    message,
    running_bot,
    seed_ledger,
    texts,
    the_card,
    trust_fakes,
)

ROOT = Path(__file__).resolve().parent.parent


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


# ----- 3. duplicate detection is scoped to tenant + conversation + activity id ----------------


@pytest_asyncio.fixture
async def dev_door(empty_db_url: str) -> AsyncIterator[Door]:
    plain = FakeBotConnector(None).start()
    try:
        async with running_bot(dev_settings(empty_db_url, plain)) as bot:
            await seed_ledger()
            yield Door(bot, FakeIdentityProvider.__new__(FakeIdentityProvider), plain)
    finally:
        plain.stop()


async def allocated() -> int:
    found = await Allocation.get_or_none(product__name="TEAMS-SEATS", subscription__code="ACME-01")
    return found.quantity if found else 0


async def test_the_same_activity_id_in_two_conversations_is_two_activities(
    dev_door: Door,
) -> None:
    url = dev_door.connector.service_url

    async def say(text: str, conversation: str, tenant: str = "tenant-a") -> str:
        before = len(dev_door.connector.activities)
        activity = message(
            text, url, conversation=conversation, tenant=tenant, activity_id="1736500000000001"
        )
        assert (await dev_door.bot.post(activity)).status == 201
        [reply] = (await dev_door.connector.wait_for_async(before + 1))[before:]
        return " ".join(texts(the_card(reply)))

    await say("allocate 1 TEAMS-SEATS to ACME-01", "a:chat-one")
    assert await allocated() == 1
    # Before: "Already done" with the first one's result, and nothing allocated.
    second = await say("allocate 2 TEAMS-SEATS to ACME-01", "a:chat-two")
    assert "already" not in second.lower()
    assert await allocated() == 3
    # The same id and conversation in another tenant is another activity too.
    await say("allocate 3 TEAMS-SEATS to ACME-01", "a:chat-one", tenant="tenant-b")
    assert await allocated() == 6
    # The same activity delivered again (Teams retries) still has one effect.
    again = await say("allocate 2 TEAMS-SEATS to ACME-01", "a:chat-two")
    assert "already" in again.lower()
    assert await allocated() == 6
    keys = await RequestKey.all().values_list("key", flat=True)
    assert len(keys) == 3 and all(k.startswith("activity:") for k in keys)


# ----- 5. identity text of any length Entra allows -------------------------------------------

ENTRA_LONGEST_NAME = "Ada " + "L" * 252  # displayName: at most 256 characters in Entra ID


async def test_a_256_character_display_name_can_change_things(dev_door: Door) -> None:
    url = dev_door.connector.service_url
    activity = message("allocate 2 TEAMS-SEATS to ACME-01", url)
    activity["from"]["name"] = ENTRA_LONGEST_NAME
    assert (await dev_door.bot.post(activity)).status == 201
    [reply] = await dev_door.connector.wait_for_async(1)
    assert "went wrong" not in " ".join(texts(the_card(reply)))
    assert await allocated() == 2
    event = await AuditEvent.filter(action="allocation.allocate").first()
    assert event is not None and event.actor_name == ENTRA_LONGEST_NAME
    # Longer than Entra allows: a clear refusal, nothing changed.
    activity = message("allocate 1 TEAMS-SEATS to ACME-01", url)
    activity["from"]["name"] = "N" * 300
    assert (await dev_door.bot.post(activity)).status == 201
    [_, refusal] = await dev_door.connector.wait_for_async(2)
    words = " ".join(texts(the_card(refusal)))
    assert "300 characters" in words and "went wrong" not in words
    assert await allocated() == 2


@pytest.mark.usefixtures("database")
async def test_an_approval_keeps_the_whole_requester_id() -> None:
    for text in (
        'customer add "Contoso Ltd"',
        'subscription add ACME-01 --customer "Contoso Ltd"',
        "product add TEAMS-SEATS --kind teams-seats --capacity 500",
    ):
        assert (await run_text(text, context())).ok, text
    # A CLI operator's UPN longer than the 64 characters the column held: it was cut to fit,
    # and the cut id no longer matched its requester — who could then approve their own.
    upn = "a" * 80 + "@contoso.example"
    asked = Origin(actor_id=upn, actor_name=ENTRA_LONGEST_NAME, source="cli")
    request = await approvals.request_change(
        asked,
        approvals.ALLOCATE,
        {"quantity": 200, "product": "TEAMS-SEATS", "subscription": "ACME-01"},
        ttl_hours=1,
    )
    stored = await ApprovalRequest.get(id=request.id)
    assert (stored.requester_id, stored.requester_name) == (upn, ENTRA_LONGEST_NAME)
    await refused(
        lambda: approvals.decide(asked, request.id, approve=True), Forbidden, "cannot decide it"
    )


BAD_OPERATORS = {
    "100 KB": "x" * 100_000,
    "right-to-left override": "ada\u202e@contoso.example",
    "newline": "ada@contoso.example\nforged audit line",
    "carriage return": "ada\r@contoso.example",
    "zero-width joiner": "ada\u200d@contoso.example",
    "line separator": "ada\u2028@contoso.example",
    "empty": "   ",
}


@pytest.mark.parametrize("case", list(BAD_OPERATORS))
def test_cli_as_is_validated_like_names(case: str, tmp_path: Path) -> None:
    # Refused before the database is opened: one engine is enough.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))},
        "DATABASE_URL": f"sqlite://{tmp_path / 'cli.sqlite3'}",
        "PYTHONPATH": str(ROOT),
    }
    args = ["--as", BAD_OPERATORS[case], 'customer add "Contoso Ltd"']
    for argv in (args, [f"--as={BAD_OPERATORS[case]}", args[2]]):
        done = subprocess.run(
            [sys.executable, "-m", "bot", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, (done.stdout, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert "--as value" in done.stderr and len(done.stderr) < 2000
        assert done.stdout == ""
    ok = subprocess.run(
        [sys.executable, "-m", "bot", "--json", "--as", "ada@contoso.example", "customers"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Contoso" not in ok.stdout  # none of the refused runs added the customer


# ----- 9. schedules say what they accept --------------------------------------------------------

STANDARD_CRON = ["0 8 * * 1-5", "0 7 * * MON-FRI", "30 6 1 JAN-MAR *", "0 */2 * * *", "0 8 * * 7"]
EXTENSIONS = {
    "0 8 ? * *": "'?' is not standard cron",
    "0 8 L * *": "'L' is not standard cron",
    "0 8 * * 5L": "'5L' is not standard cron",
    "0 8 15W * *": "'15W' is not standard cron",
    "0 8 * * 1#2": "'1#2' is not standard cron",
    "*/90 * * * *": "must be between 1 and 59",
    "0 */24 * * *": "must be between 1 and 23",
    "0 8 5/2 * *": "needs * or a range before it",
    "0 8 * * FRI-MON": "runs backwards",
    "0 8 * JANUARY *": "'JANUARY' is not standard cron",
    "0 8 ٥ * *": "'٥' is not standard cron",
}


@pytest.mark.parametrize("cron", STANDARD_CRON)
def test_standard_five_field_cron_is_accepted(cron: str) -> None:
    assert parse_schedule(cron).cron == cron


@pytest.mark.parametrize("cron", list(EXTENSIONS))
def test_cron_extensions_are_refused_with_the_rule(cron: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_schedule(cron)
    assert EXTENSIONS[cron] in info.value.message
    assert CRON_RULE in info.value.message


# ----- 2. the Bot Framework OpenID metadata, of the wrong shape ----------------------------------


class ServedMetadata(ThreadedServer):
    """OpenID metadata and a key set as scripted (`{keys}` in the metadata is this server's
    key-set URL)."""

    def __init__(self, metadata: bytes, keys: bytes) -> None:
        super().__init__()
        self.metadata = metadata
        self.keys = keys

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metadata", self._metadata)
        app.router.add_get("/keys", self._keys)
        return app

    async def _metadata(self, request: web.Request) -> web.Response:
        body = self.metadata.replace(b"{keys}", f"{self.base_url}/keys".encode())
        return web.Response(body=body, content_type="application/json")

    async def _keys(self, request: web.Request) -> web.Response:
        return web.Response(body=self.keys, content_type="application/json")


GOOD_METADATA = b'{"issuer": "https://api.botframework.com", "jwks_uri": "{keys}"}'
MALFORMED_METADATA = {
    "jwks_uri a number": (b'{"jwks_uri": 5}', None),
    "no jwks_uri": (b'{"issuer": "https://api.botframework.com"}', None),
    "metadata not JSON": (b"<html>maintenance</html>", None),
    "metadata a list": (b"[]", None),
    "keys null": (GOOD_METADATA, b'{"keys": null}'),
    "keys empty": (GOOD_METADATA, b'{"keys": []}'),
    "a key that is a number": (GOOD_METADATA, b'{"keys": [5]}'),
    "a key without kid": (GOOD_METADATA, b'{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}'),
    "keys nested deep": (GOOD_METADATA, b'{"keys": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
}


@pytest.mark.parametrize("case", list(MALFORMED_METADATA))
async def test_malformed_signing_key_documents_refuse_tokens_and_say_why(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metadata, keys = MALFORMED_METADATA[case]
    real_keys = json.dumps(
        {"keys": [k.jwk(with_endorsements=True) for k in idp.channel_keys.values()]}
    )
    with ServedMetadata(metadata, keys or real_keys.encode()) as served:
        settings = auth_settings(
            empty_db_url,
            idp,
            graph,
            connector,
            botframework_openid_metadata=f"{served.base_url}/metadata",
        )
        async with running_bot(settings) as bot:
            await seed_ledger()
            door = Door(bot, idp, connector)
            before = await snapshot()
            posted = await bot.post(door.activity(), door.token())
            assert posted.status == 401
            assert "signing keys not refreshed" in caplog.text
            assert door.connector.requests == []
            assert await snapshot() == before
            # Once the documents are right again, the same kind of token gets in.
            served.metadata, served.keys = GOOD_METADATA, real_keys.encode()
            posted = await bot.post(door.activity("whoami"), door.token())
            assert posted.status == 201
