"""Teams SSO end to end through the Bot Framework protocol (issue 15), as Microsoft's bot SSO
docs describe it, against the fake Bot Connector, Entra ID, Graph and Bot Framework token
service: the OAuth card with a token-exchange resource when the bot first needs a user's groups,
`signin/tokenExchange` (exchanged at the token service; 412 when it fails, so Teams shows the
sign-in), `signin/verifyState` after a sign-in with the card's button, and Graph whenever SSO
did not work."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider, SentActivity
from tests.fakes.token_service import FakeTokenService
from tests.support.teams_env import (
    ADMIN_GROUP,
    ADMIN_OID,
    APP_ID,
    RunningBot,
    auth_settings,
    message,
    running_bot,
    seed_ledger,
    texts,
    the_card,
    trust_fakes,
)

CONNECTION = "fusion-sso"
RESOURCE = f"api://botid-{APP_ID}"  # the Application ID URI Microsoft's bot SSO docs name
OAUTH_CARD = "application/vnd.microsoft.card.oauth"
OTHER_GROUP = str(uuid.uuid5(uuid.NAMESPACE_URL, "entra:group:sales"))


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@pytest.fixture
def token_service(idp: FakeIdentityProvider) -> Iterator[FakeTokenService]:
    with FakeTokenService(idp, APP_ID) as fake:
        fake.add_connection(CONNECTION, RESOURCE)
        yield fake


@dataclass
class Teams:
    """What the Teams client does, driven by the test."""

    bot: RunningBot
    idp: FakeIdentityProvider
    graph: FakeGraph
    connector: FakeBotConnector
    tokens: FakeTokenService

    def _auth(self) -> str:
        return self.idp.channel_token(APP_ID, self.connector.service_url)

    async def say(
        self, text: str, *, sender: str = ADMIN_OID, conversation_type: str = "personal"
    ) -> list[SentActivity]:
        """A typed command; what the bot sent back (the OAuth card, if any, then the answer)."""
        before = len(self.connector.activities)
        activity = message(
            text, self.connector.service_url, sender=sender, tenant=self.idp.tenant_id
        )
        activity["conversation"]["conversationType"] = conversation_type
        if conversation_type != "personal":
            activity["conversation"]["id"] = "19:group-chat-1@thread.v2"
        assert (await self.bot.post(activity, self._auth())).status == 201
        sent = await self.connector.wait_for_async(before + 1)
        # The answer card is the last thing a turn sends.
        while not any(
            a.attachments and a.attachments[0]["contentType"] != OAUTH_CARD for a in sent[before:]
        ):
            sent = await self.connector.wait_for_async(len(sent) + 1)
        return sent[before:]

    async def invoke(self, name: str, value: dict[str, Any], *, sender: str) -> tuple[int, Any]:
        activity = message(
            "",
            self.connector.service_url,
            sender=sender,
            tenant=self.idp.tenant_id,
            type="invoke",
            name=name,
            value=value,
        )
        posted = await self.bot.post(activity, self._auth())
        return posted.status, posted.body

    def graph_calls(self) -> int:
        return self.graph.count("checkMemberGroups") + self.graph.count("getMemberGroups")


def oauth_cards(sent: list[SentActivity]) -> list[dict[str, Any]]:
    return [a["content"] for s in sent for a in s.attachments if a["contentType"] == OAUTH_CARD]


def answer(sent: list[SentActivity]) -> str:
    return texts(the_card(sent[-1]))[0]


@pytest_asyncio.fixture
async def teams(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
    token_service: FakeTokenService,
) -> AsyncIterator[Teams]:
    settings = auth_settings(
        empty_db_url,
        idp,
        graph,
        connector,
        sso_connection=CONNECTION,
        sso_resource=RESOURCE,
        token_service_url=token_service.base_url,
    )
    async with running_bot(settings) as bot:
        await seed_ledger()
        yield Teams(bot, idp, graph, connector, token_service)


def new_admin(graph: FakeGraph) -> str:
    oid = str(uuid.uuid4())
    graph.add_user(oid, f"{oid}@provider.example", "Someone")
    graph.add_member(ADMIN_GROUP, oid)
    return oid


async def test_the_sso_sequence_card_exchange_then_no_graph(teams: Teams, artifacts: Path) -> None:
    calls = teams.graph_calls()
    # 1. The first admin command: an OAuth card, and the answer decided through Graph.
    sent = await teams.say("products")
    [card] = oauth_cards(sent)
    assert answer(sent) == "Products" and teams.graph_calls() == calls + 1
    assert card["connectionName"] == CONNECTION
    resource = card["tokenExchangeResource"]
    assert resource["uri"] == RESOURCE and resource["id"]
    assert card["buttons"][0]["type"] == "signin"
    assert card["buttons"][0]["value"].startswith(teams.tokens.base_url)
    [state] = teams.tokens.states  # the token exchange state the SDK's helper builds
    assert (state["connectionName"], state["msAppId"]) == (CONNECTION, APP_ID)
    assert state["conversation"]["conversation"]["id"] == "a:personal-chat-1"

    # 2. Teams gets a token for the resource and hands it over; the bot exchanges it.
    token = teams.idp.user_token(ADMIN_OID, resource["uri"], groups=[OTHER_GROUP, ADMIN_GROUP])
    status, body = await teams.invoke(
        "signin/tokenExchange",
        {"id": resource["id"], "connectionName": CONNECTION, "token": token},
        sender=ADMIN_OID,
    )
    assert (status, body) == (200, {"id": resource["id"], "connectionName": CONNECTION})
    assert teams.tokens.exchanges == [
        {
            "userId": f"29:{ADMIN_OID}",
            "connectionName": CONNECTION,
            "channelId": "msteams",
            "ok": True,
        }
    ]
    # Teams may deliver the same exchange twice: one exchange, the same answer.
    again = await teams.invoke(
        "signin/tokenExchange",
        {"id": resource["id"], "connectionName": CONNECTION, "token": token},
        sender=ADMIN_OID,
    )
    assert again == (200, body) and len(teams.tokens.exchanges) == 1

    # 3. From now on the token's groups decide, without Graph and without another card.
    for text, title in (("usage", "Usage"), ("products", "Products")):
        sent = await teams.say(text)
        assert answer(sent) == title and oauth_cards(sent) == []
    assert teams.graph_calls() == calls + 1
    (artifacts / "sso").mkdir(exist_ok=True)
    (artifacts / "sso" / "sequence.json").write_text(
        json.dumps(
            {
                "1 user types 'products'; bot posts the OAuth card": card,
                "  token service GetSignInResource state": state,
                "2 Teams invokes signin/tokenExchange": {
                    "id": resource["id"],
                    "connectionName": CONNECTION,
                    "token": "<SSO token>",
                },
                "  token service exchanges": teams.tokens.exchanges,
                "  bot answers": {"status": status, "body": body},
                "3 'usage', 'products': Graph calls after the exchange": teams.graph_calls()
                - calls,
            },
            indent=2,
        ),
        encoding="utf-8",
    )


async def test_a_failed_exchange_is_412_and_graph_decides(teams: Teams) -> None:
    bob = new_admin(teams.graph)
    [card] = oauth_cards(await teams.say("products", sender=bob))
    resource = card["tokenExchangeResource"]
    teams.tokens.refuse_exchanges = "AADSTS65001: the user has not consented"
    # Had this token counted, bob would be refused: it does not list the admin group.
    token = teams.idp.user_token(bob, resource["uri"], groups=[OTHER_GROUP])
    status, body = await teams.invoke(
        "signin/tokenExchange",
        {"id": resource["id"], "connectionName": CONNECTION, "token": token},
        sender=bob,
    )
    assert status == 412  # Teams now shows the card's sign-in button
    assert body["id"] == resource["id"] and body["connectionName"] == CONNECTION
    assert "AADSTS65001" in body["failureDetail"]
    sent = await teams.say("products", sender=bob)
    assert answer(sent) == "Products"  # Graph's answer (kept from the first command), as before
    assert oauth_cards(sent) == []  # one card per user for a while, not one per command
    assert [e["ok"] for e in teams.tokens.exchanges] == [False]


async def test_a_token_for_another_resource_is_412_before_the_token_service(
    teams: Teams,
) -> None:
    bob = new_admin(teams.graph)
    await teams.say("products", sender=bob)
    token = teams.idp.user_token(bob, "api://someone-else", groups=[ADMIN_GROUP])
    status, _ = await teams.invoke(
        "signin/tokenExchange",
        {"id": "x", "connectionName": CONNECTION, "token": token},
        sender=bob,
    )
    assert status == 412 and teams.tokens.exchanges == []


async def test_sign_in_with_the_button_then_verify_state(teams: Teams) -> None:
    carol = new_admin(teams.graph)  # an admin in Graph; her token will say otherwise
    await teams.say("products", sender=carol)
    user_token = teams.idp.user_token(carol, RESOURCE, groups=[OTHER_GROUP])
    code = teams.tokens.complete_sign_in(f"29:{carol}", CONNECTION, user_token)
    assert (await teams.invoke("signin/verifyState", {"state": "000000"}, sender=carol))[0] == 404
    assert (await teams.invoke("signin/verifyState", {"state": code}, sender=carol))[0] == 200
    calls = teams.graph_calls()
    assert answer(await teams.say("products", sender=carol)) == "Not allowed"  # the token's groups
    assert teams.graph_calls() == calls
    # A code is used once.
    assert (await teams.invoke("signin/verifyState", {"state": code}, sender=carol))[0] == 404


async def test_no_card_for_open_commands_or_group_chats(teams: Teams) -> None:
    assert oauth_cards(await teams.say("help")) == []
    assert oauth_cards(await teams.say("products", conversation_type="groupChat")) == []
    assert teams.tokens.states == []


def test_the_state_is_the_sdk_token_exchange_state() -> None:
    # What GetSignInResource gets is botframework's own TokenExchangeState, base64 JSON.
    from botbuilder.schema import Activity
    from botframework.connector.auth import UserTokenClient

    activity = Activity().deserialize(message("x", "https://smba.example/", tenant="t"))
    state = UserTokenClient.create_token_exchange_state(APP_ID, CONNECTION, activity)
    decoded = json.loads(base64.b64decode(state))
    assert decoded["connectionName"] == CONNECTION and decoded["msAppId"] == APP_ID
