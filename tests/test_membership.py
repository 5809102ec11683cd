"""GraphPolicy against the Graph fake with real msal tokens: batching, caching, the SSO groups
claim and its overage, retries within the bound, and every way of not knowing → no."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bot.auth.membership import NOT_APPROVER, OTHER_TENANT, GraphPolicy
from bot.auth.policy import NOT_ADMIN
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support.graph_env import (
    ADMIN_GROUP,
    APP_ID,
    APPROVER_GROUP,
    GRAPH_ROLE,
    actor,
    graph_policy,
    identity_provider,
    make_settings,
    oid,
    populate,
    trust_fakes,
)
from tests.support.graph_env import OTHER_TENANT as OTHER_TENANT_ID


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


def checks(graph: FakeGraph) -> list[list[str]]:
    return [r.json["groupIds"] for r in graph.requests if r.info.get("kind") == "checkMemberGroups"]


async def test_transitive_member_is_admin_through_graph_with_the_app_only_token(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    settings = make_settings(idp, graph)
    async with graph_policy(settings) as policy:
        alice = actor("alice", idp.tenant_id)
        decision = await policy.is_admin(alice)
        bob = await policy.is_admin(actor("bob", idp.tenant_id))
    assert decision.allowed, decision.reason
    assert not bob.allowed and bob.reason == NOT_ADMIN
    first = graph.requests[0]
    assert first.method == "POST"
    assert first.path == f"/v1.0/users/{oid('user:alice')}/checkMemberGroups"
    assert first.claims is not None and first.claims["appid"] == APP_ID
    assert first.claims["tid"] == idp.tenant_id  # the provider's own directory
    assert idp.token_request_count >= 1


async def test_more_than_20_groups_are_checked_20_at_a_time(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    groups = [oid(f"group:many-{i}") for i in range(45)]
    for g in groups:
        graph.add_group(g)
    graph.add_member(groups[41], oid("user:alice"))
    settings = make_settings(idp, graph, admin_group_ids=tuple(groups))
    async with graph_policy(settings) as policy:
        alice = await policy.is_admin(actor("alice", idp.tenant_id))
        bob = await policy.is_admin(actor("bob", idp.tenant_id))
    assert alice.allowed, alice.reason
    assert not bob.allowed
    batches = checks(graph)
    assert [len(b) for b in batches] == [20, 20, 5, 20, 20, 5]
    assert sorted(sum(batches[:3], [])) == sorted(groups)
    assert all(r.status == 200 for r in graph.requests)


async def test_one_graph_call_answers_admin_and_approver_and_is_cached(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    settings = make_settings(idp, graph, approver_group_ids=(APPROVER_GROUP,))
    async with graph_policy(settings) as policy:
        alice, carol = actor("alice", idp.tenant_id), actor("carol", idp.tenant_id)
        for _ in range(3):
            assert (await policy.is_admin(alice)).allowed
            assert not (await policy.is_approver(alice)).allowed
        assert (await policy.is_approver(carol)).allowed
        denied = await policy.is_admin(carol)
    assert not denied.allowed and denied.reason == NOT_ADMIN
    assert graph.count("checkMemberGroups") == 2  # one per person, both questions at once
    assert sorted(checks(graph)[0]) == sorted([ADMIN_GROUP, APPROVER_GROUP])


async def test_the_cache_expires_and_can_be_turned_off(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    now = [1000.0]
    settings = make_settings(idp, graph, membership_cache_seconds=120)
    async with graph_policy(settings, clock=lambda: now[0]) as policy:
        alice = actor("alice", idp.tenant_id)
        assert (await policy.is_admin(alice)).allowed
        graph.remove_member(oid("group:noc-engineers"), oid("user:alice"))
        now[0] += 119
        assert (await policy.is_admin(alice)).allowed  # still the cached answer
        assert graph.count("checkMemberGroups") == 1
        now[0] += 2
        assert not (await policy.is_admin(alice)).allowed  # expired: asked again
        assert graph.count("checkMemberGroups") == 2

    graph.clear_records()
    async with graph_policy(make_settings(idp, graph, membership_cache_seconds=0)) as policy:
        for _ in range(3):
            await policy.is_admin(actor("bob", idp.tenant_id))
    assert graph.count("checkMemberGroups") == 3


async def test_sso_groups_claim_is_used_without_graph(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    settings = make_settings(idp, graph)
    async with graph_policy(settings) as policy:
        with_claim = actor("bob", idp.tenant_id, sso_groups=(ADMIN_GROUP.upper(), oid("group:x")))
        allowed = await policy.is_admin(with_claim)
        # alice is an admin in the directory, but her token's claim says otherwise: the claim wins.
        without = await policy.is_admin(actor("alice", idp.tenant_id, sso_groups=(oid("group:x"),)))
        empty = await policy.is_admin(actor("alice", idp.tenant_id, sso_groups=()))
    assert allowed.allowed and "groups claim" in allowed.reason
    assert not without.allowed and without.reason == NOT_ADMIN
    assert not empty.allowed
    assert graph.call_count == 0


async def test_groups_overage_is_resolved_through_graph(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    settings = make_settings(idp, graph)
    async with graph_policy(settings) as policy:
        alice = await policy.is_admin(actor("alice", idp.tenant_id, sso_groups_overage=True))
        # An overage token carries no list; even a partial one is not trusted to be complete.
        bob = await policy.is_admin(
            actor("bob", idp.tenant_id, sso_groups=(ADMIN_GROUP,), sso_groups_overage=True)
        )
    assert alice.allowed and "Entra group" in alice.reason
    assert not bob.allowed
    assert graph.count("checkMemberGroups") == 2


async def test_throttling_within_the_bound_is_waited_out(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    settings = make_settings(idp, graph, graph_retry_seconds=3.0)
    graph.throttle(2, retry_after=0.2)
    async with graph_policy(settings) as policy:
        started = time.monotonic()
        decision = await policy.is_admin(actor("alice", idp.tenant_id))
        elapsed = time.monotonic() - started
    assert decision.allowed, decision.reason
    assert [r.status for r in graph.requests] == [429, 429, 200]
    gaps = [b.at - a.at for a, b in zip(graph.requests, graph.requests[1:], strict=False)]
    assert all(g >= 0.19 for g in gaps), gaps  # Retry-After honoured
    assert elapsed < 3.0


async def test_throttling_beyond_the_bound_denies_at_once_and_says_why(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    settings = make_settings(idp, graph, graph_retry_seconds=2.0)
    graph.throttle(1, retry_after=30)
    async with graph_policy(settings) as policy:
        alice = actor("alice", idp.tenant_id)
        started = time.monotonic()
        decision = await policy.is_admin(alice)
        elapsed = time.monotonic() - started
        again = await policy.is_admin(alice)  # the failure was not cached
    assert not decision.allowed
    assert "Could not check whether you are a group administrator" in decision.reason
    assert "throttling" in decision.reason and "30 s" in decision.reason
    assert "try again" in decision.reason
    assert elapsed < 1.5  # no point waiting 30 s when only 2 are allowed
    assert again.allowed
    assert [r.status for r in graph.requests] == [429, 200]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retried(
    idp: FakeIdentityProvider, graph: FakeGraph, status: int
) -> None:
    graph.fail(2, status)
    async with graph_policy(make_settings(idp, graph, graph_retry_seconds=5.0)) as policy:
        decision = await policy.is_admin(actor("alice", idp.tenant_id))
    assert decision.allowed, decision.reason
    assert [r.status for r in graph.requests] == [status, status, 200]


@pytest.mark.parametrize("mode", ["refuse", "503"])
async def test_graph_down_denies_within_the_bound(
    idp: FakeIdentityProvider, graph: FakeGraph, mode: str
) -> None:
    graph.down(mode)
    async with graph_policy(make_settings(idp, graph, graph_retry_seconds=1.0)) as policy:
        started = time.monotonic()
        decision = await policy.is_admin(actor("alice", idp.tenant_id))
        elapsed = time.monotonic() - started
    assert not decision.allowed
    expected = "could not be reached" if mode == "refuse" else "failing (HTTP 503"
    assert expected in decision.reason and "try again" in decision.reason
    assert elapsed < 3.0
    if mode == "503":
        assert len(graph.requests) >= 2  # it did retry


async def test_misconfiguration_denies_with_the_reason(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    alice = actor("alice", idp.tenant_id)
    async with graph_policy(make_settings(idp, graph, admin_group_ids=())) as policy:
        nothing = await policy.is_admin(alice)
        approver = await policy.is_approver(alice)
    assert not nothing.allowed and "FUSION_ADMIN_GROUP_IDS" in nothing.reason
    assert not approver.allowed and "FUSION_ADMIN_GROUP_IDS" in approver.reason

    async with graph_policy(
        make_settings(idp, graph, admin_group_ids=("fusion-admins",))
    ) as policy:
        named = await policy.is_admin(alice)
    assert (
        not named.allowed
        and "'fusion-admins'" in named.reason
        and "not an Entra group" in named.reason
    )

    async with graph_policy(make_settings(idp, graph)) as policy:
        no_oid = await policy.is_admin(actor("alice", idp.tenant_id, object_id=""))
        odd_oid = await policy.is_admin(actor("alice", idp.tenant_id, object_id="../groups/x"))
    assert not no_oid.allowed and "no Entra object id" in no_oid.reason
    assert not odd_oid.allowed
    assert graph.call_count == 0


async def test_token_failures_deny_and_say_so(idp: FakeIdentityProvider, graph: FakeGraph) -> None:
    alice = actor("alice", idp.tenant_id)
    wrong_secret = make_settings(idp, graph, app_password="not-the-secret")
    async with graph_policy(wrong_secret) as policy:
        decision = await policy.is_admin(alice)
    assert not decision.allowed
    assert "could not get its Microsoft Graph token" in decision.reason
    assert "invalid_client" in decision.reason
    assert graph.call_count == 0

    idp.register_app("no-graph-permission", "s3cret", roles=[])
    unconsented = make_settings(idp, graph, app_id="no-graph-permission", app_password="s3cret")
    async with graph_policy(unconsented) as policy:
        decision = await policy.is_admin(alice)
    assert not decision.allowed and "GroupMember.Read.All" in decision.reason
    assert [r.status for r in graph.requests] == [403]


async def test_a_user_unknown_to_the_directory_is_not_an_admin(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    async with graph_policy(make_settings(idp, graph)) as policy:
        decision = await policy.is_admin(actor("mallory", idp.tenant_id))
    assert not decision.allowed and decision.reason.startswith(NOT_ADMIN)


async def test_approvers_default_to_the_admin_groups(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    async with graph_policy(make_settings(idp, graph)) as policy:
        assert (await policy.is_approver(actor("alice", idp.tenant_id))).allowed
        carol = await policy.is_approver(actor("carol", idp.tenant_id))
    assert not carol.allowed and carol.reason == NOT_APPROVER


async def test_tenants(idp: FakeIdentityProvider, graph: FakeGraph) -> None:
    settings = make_settings(idp, graph)
    policy = GraphPolicy(settings, None)
    assert policy.tenant_allowed(actor("alice", idp.tenant_id.upper())).allowed
    other = policy.tenant_allowed(actor("eve", OTHER_TENANT_ID))
    assert not other.allowed and other.reason == OTHER_TENANT
    assert OTHER_TENANT_ID not in other.reason and idp.tenant_id not in other.reason
    assert not policy.tenant_allowed(actor("eve", "")).allowed

    listed = GraphPolicy(make_settings(idp, graph, allowed_tenants=(OTHER_TENANT_ID,)), None)
    assert listed.tenant_allowed(actor("eve", OTHER_TENANT_ID)).allowed
    assert not listed.tenant_allowed(actor("alice", idp.tenant_id)).allowed

    nobody = GraphPolicy(make_settings(idp, graph, app_tenant_id=""), None)
    refused = nobody.tenant_allowed(actor("alice", idp.tenant_id))
    assert not refused.allowed and "FUSION_ALLOWED_TENANTS" in refused.reason
