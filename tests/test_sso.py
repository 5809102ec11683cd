"""Teams SSO through the real app: a `signin/tokenExchange` invoke carrying the user's Entra ID
token, then commands whose admin check uses the token's `groups` claim instead of Graph.

The token is checked against the fake Entra ID's published keys (fetched by the bot over
HTTPS); the fake Graph counts the membership calls the bot still makes. A token that does not
count is answered 412 and changes nothing: the next command asks Graph as before.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.fakes.identity import SigningKey
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

OTHER_GROUP = str(uuid.uuid5(uuid.NAMESPACE_URL, "entra:group:sales"))
SSO_RESOURCE = f"api://bot.provider.example/{APP_ID}"


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@dataclass
class Teams:
    bot: RunningBot
    idp: FakeIdentityProvider
    graph: FakeGraph
    connector: FakeBotConnector

    def _channel_token(self) -> str:
        return self.idp.channel_token(APP_ID, self.connector.service_url)

    async def exchange(self, token: str, *, sender: str = ADMIN_OID) -> tuple[int, Any]:
        """The invoke Teams sends with the user's SSO token."""
        activity = message(
            "",
            self.connector.service_url,
            sender=sender,
            tenant=self.idp.tenant_id,
            type="invoke",
            name="signin/tokenExchange",
            value={"id": "exchange-1", "connectionName": "fusion-sso", "token": token},
        )
        posted = await self.bot.post(activity, self._channel_token())
        return posted.status, posted.body

    async def say(self, text: str, *, sender: str = ADMIN_OID) -> str:
        """A typed command; returns the reply card's title."""
        before = len(self.connector.activities)
        activity = message(
            text, self.connector.service_url, sender=sender, tenant=self.idp.tenant_id
        )
        assert (await self.bot.post(activity, self._channel_token())).status == 201
        sent = (await self.connector.wait_for_async(before + 1))[before:]
        return texts(the_card(sent[-1]))[0]

    def graph_calls(self) -> int:
        return self.graph.count("checkMemberGroups") + self.graph.count("getMemberGroups")

    def key_fetches(self) -> int:
        return sum(1 for r in self.idp.requests if r.path.endswith("/discovery/v2.0/keys"))


@pytest_asyncio.fixture
async def teams(
    empty_db_url: str, idp: FakeIdentityProvider, graph: FakeGraph, connector: FakeBotConnector
) -> AsyncIterator[Teams]:
    settings = auth_settings(empty_db_url, idp, graph, connector, sso_resource=SSO_RESOURCE)
    async with running_bot(settings) as bot:
        await seed_ledger()
        yield Teams(bot, idp, graph, connector)


def new_user(graph: FakeGraph, *, admin: bool = False) -> str:
    oid = str(uuid.uuid4())
    graph.add_user(oid, f"{oid}@provider.example", "Someone")
    if admin:
        graph.add_member(ADMIN_GROUP, oid)
    return oid


@pytest.mark.parametrize("audience", [APP_ID, SSO_RESOURCE])
async def test_admin_group_in_the_token_needs_no_graph_call(teams: Teams, audience: str) -> None:
    token = teams.idp.user_token(ADMIN_OID, audience, groups=[OTHER_GROUP, ADMIN_GROUP])
    keys, calls = teams.key_fetches(), teams.graph_calls()
    assert (await teams.exchange(token))[0] == 200
    assert (await teams.exchange(token))[0] == 200  # the keys are kept, not fetched again
    assert await teams.say("products") == "Products"
    assert await teams.say("usage") == "Usage"
    assert teams.graph_calls() == calls
    assert teams.key_fetches() == keys + 1


async def test_token_without_the_admin_group_is_refused_without_graph(teams: Teams) -> None:
    # Graph would say yes (alice is in the admin group there): the refusal comes from the token.
    token = teams.idp.user_token(ADMIN_OID, APP_ID, groups=[OTHER_GROUP])
    calls = teams.graph_calls()
    assert (await teams.exchange(token))[0] == 200
    assert await teams.say("products") == "Not allowed"
    assert teams.graph_calls() == calls


async def test_overage_is_resolved_through_graph(teams: Teams) -> None:
    token = teams.idp.user_token(ADMIN_OID, APP_ID, overage=True, graph_url=teams.graph.graph_url)
    calls = teams.graph_calls()
    assert (await teams.exchange(token))[0] == 200
    assert await teams.say("products") == "Products"
    assert teams.graph_calls() == calls + 1


def bad_token(kind: str, idp: FakeIdentityProvider, sender: str) -> str:
    """An SSO token that must not count, each claiming the admin group for `sender`."""
    token = idp.user_token
    admin = [ADMIN_GROUP]
    match kind:
        case "wrong_audience":
            return token(sender, "api://someone-else/app", groups=admin)
        case "wrong_issuer":
            return token(
                sender,
                APP_ID,
                groups=admin,
                issuer=f"https://sts.windows.net/{idp.tenant_id}/",
            )
        case "expired":  # beyond the 5 minutes of clock skew
            return token(sender, APP_ID, groups=admin, exp_delta=-600, nbf_delta=-4200)
        case "not_yet_valid":
            return token(sender, APP_ID, groups=admin, nbf_delta=600)
        case "rogue_key_known_kid":
            rogue = SigningKey(idp.entra_key.kid, idp.rogue_key.private_key)
            return token(sender, APP_ID, groups=admin, key=rogue)
        case "rogue_key_unknown_kid":
            return token(sender, APP_ID, groups=admin, key=idp.rogue_key)
        case "another_user":
            return token(ADMIN_OID, APP_ID, groups=admin)
        case "another_tenant":
            return token(sender, APP_ID, groups=admin, tenant=str(uuid.uuid4()))
        case "garbage":
            return "not-a-jwt.\x00garbage.x"
        case "empty":
            return ""
    raise ValueError(kind)


BAD_KINDS = (
    "wrong_audience",
    "wrong_issuer",
    "expired",
    "not_yet_valid",
    "rogue_key_known_kid",
    "rogue_key_unknown_kid",
    "another_user",
    "another_tenant",
    "garbage",
    "empty",
)


@pytest.mark.parametrize("kind", BAD_KINDS)
async def test_a_token_that_does_not_count_gets_412_and_changes_nothing(
    teams: Teams, kind: str
) -> None:
    # Mallory is no admin in Graph; each bad token claims she is.
    mallory = new_user(teams.graph)
    keys = teams.key_fetches()
    status, body = await teams.exchange(bad_token(kind, teams.idp, mallory), sender=mallory)
    assert status == 412
    assert body["id"] == "exchange-1" and body["connectionName"] == "fusion-sso"
    assert body["failureDetail"]
    calls = teams.graph_calls()
    assert await teams.say("products", sender=mallory) == "Not allowed"
    assert teams.graph_calls() == calls + 1  # Graph decided, as without SSO
    assert teams.key_fetches() <= keys + 1


async def test_an_unknown_key_id_does_not_refetch_the_keys_every_time(teams: Teams) -> None:
    assert (await teams.exchange(teams.idp.user_token(ADMIN_OID, APP_ID, groups=[])))[0] == 200
    keys = teams.key_fetches()
    for _ in range(3):
        rogue = teams.idp.user_token(ADMIN_OID, APP_ID, groups=[], key=teams.idp.rogue_key)
        assert (await teams.exchange(rogue))[0] == 412
    assert teams.key_fetches() == keys


async def test_a_bad_token_does_not_undo_a_good_one(teams: Teams) -> None:
    alice = new_user(teams.graph, admin=True)
    good = teams.idp.user_token(alice, APP_ID, groups=[OTHER_GROUP])
    assert (await teams.exchange(good, sender=alice))[0] == 200
    assert (await teams.exchange(bad_token("expired", teams.idp, alice), sender=alice))[0] == 412
    calls = teams.graph_calls()
    # Still the good token's answer (no admin group), not Graph's (admin).
    assert await teams.say("products", sender=alice) == "Not allowed"
    assert teams.graph_calls() == calls
