"""Answers of the wrong shape from Microsoft services (issue 16 item 2): Graph, the token
endpoint and the Bot Framework OpenID metadata answer 200 with a body that is not what their
APIs document. Each is treated like an outage: the caller fails closed with the reason (no
"Something went wrong", nothing cached, the next good answer works).

The OpenID metadata through the Bot Framework door: `tests/test_hardening.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.auth.graph import GraphUnavailable
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support.graph_env import (
    ADMIN_GROUP,
    GRAPH_ROLE,
    actor,
    graph_client,
    graph_policy,
    identity_provider,
    make_settings,
    populate,
    trust_fakes,
)


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    yield from identity_provider()


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@pytest.fixture
def graph(idp: FakeIdentityProvider) -> Iterator[FakeGraph]:
    with FakeGraph(idp, required_roles={GRAPH_ROLE}) as fake:
        populate(fake)
        yield fake


DEEP = b"[" * 100_000 + b"]" * 100_000
MALFORMED_GRAPH = {
    '"value": null': b'{"value": null}',
    '"value": a number': b'{"value": 5}',
    '"value": a string': b'{"value": "' + ADMIN_GROUP.encode() + b'"}',
    '"value": numbers': b'{"value": [1, 2]}',
    '"value": objects': b'{"value": [{"id": "x"}]}',
    "no value": b'{"@odata.context": "x"}',
    "a number": b"42",
    "a string": b'"ok"',
    "null": b"null",
    "a list": b"[]",
    "not JSON": b"<html>gateway</html>",
    "nested 100,000 deep": DEEP,
}


@pytest.mark.parametrize("case", list(MALFORMED_GRAPH))
async def test_a_malformed_graph_answer_denies_like_an_outage(
    idp: FakeIdentityProvider, graph: FakeGraph, case: str
) -> None:
    graph.answer_malformed(1, MALFORMED_GRAPH[case])
    async with graph_policy(make_settings(idp, graph)) as policy:
        alice = actor("alice", idp.tenant_id)
        decision = await policy.is_admin(alice)
        again = await policy.is_admin(alice)  # not cached: the next good answer counts
    assert not decision.allowed
    assert "Could not check whether you are a group administrator" in decision.reason
    assert "Microsoft Graph" in decision.reason and "try again" in decision.reason
    assert again.allowed, again.reason


MALFORMED_PAGES = {
    "a member without an id": b'{"value": [{"displayName": "x"}]}',
    "an id that is a number": b'{"value": [{"id": 7}]}',
    "a nextLink that is a number": b'{"value": [], "@odata.nextLink": 7}',
    '"value": null': b'{"value": null}',
}


@pytest.mark.parametrize("case", list(MALFORMED_PAGES))
async def test_a_malformed_page_of_members_is_an_outage_with_the_reason(
    idp: FakeIdentityProvider, graph: FakeGraph, case: str
) -> None:
    graph.answer_malformed(1, MALFORMED_PAGES[case])
    async with graph_client(make_settings(idp, graph)) as client:
        with pytest.raises(GraphUnavailable) as info:
            await client.transitive_members(ADMIN_GROUP)
        assert "does not document" in info.value.message
        members = await client.transitive_members(ADMIN_GROUP)
    assert members


MALFORMED_TOKENS = {
    "no access_token": {"token_type": "Bearer", "expires_in": 3599},
    "an access_token that is a number": {"token_type": "Bearer", "access_token": 5},
    "an empty access_token": {"token_type": "Bearer", "access_token": "", "expires_in": 3599},
    "expires_in that is not a number": {
        "token_type": "Bearer",
        "access_token": "x.y.z",
        "expires_in": "soon",
    },
    "a string": "token",
    "a list": [],
}


@pytest.mark.parametrize("case", list(MALFORMED_TOKENS))
async def test_a_malformed_token_answer_denies_like_an_outage(
    idp: FakeIdentityProvider, graph: FakeGraph, case: str
) -> None:
    idp.answer_token_requests(1, MALFORMED_TOKENS[case])
    async with graph_policy(make_settings(idp, graph)) as policy:
        alice = actor("alice", idp.tenant_id)
        decision = await policy.is_admin(alice)
        again = await policy.is_admin(alice)
    assert not decision.allowed
    assert "could not get its Microsoft Graph token" in decision.reason
    assert "try again" in decision.reason
    assert again.allowed, again.reason
