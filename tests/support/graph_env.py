"""Entra ID and Microsoft Graph for the membership, permission and group-sync tests.

The fakes (identity provider, Graph) run on 127.0.0.1 in their own threads. The bot side is
the real thing: `ClientCredentials` (msal client credentials against the fake authority) gives
the app-only token, `GraphClient` calls the fake over https, `GraphPolicy` decides.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.auth.actor import Actor
from bot.auth.credentials import ClientCredentials, client_ssl_context
from bot.auth.graph import GraphClient
from bot.auth.membership import GraphPolicy
from bot.config import Settings
from tests.fakes import FakeGraph, FakeIdentityProvider, shared_tls

APP_ID = "5f1c7a52-7d1e-4d3a-9b8e-0c2b7a1e9f01"
APP_SECRET = "graph-test-secret"
GRAPH_ROLE = "GroupMember.Read.All"
OTHER_TENANT = "99999999-8888-4777-8666-555555555555"


def oid(name: str) -> str:
    """A stable Entra object id for a name used in a test."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"entra:{name}"))


ADMIN_GROUP = oid("group:fusion-admins")
NESTED_ADMIN_GROUP = oid("group:noc-engineers")
APPROVER_GROUP = oid("group:fusion-approvers")
UNRELATED_GROUP = oid("group:marketing")


def identity_provider() -> Iterator[FakeIdentityProvider]:
    """The fake Entra ID, with the bot's app registration holding the Graph permission."""
    with FakeIdentityProvider() as fake:
        fake.register_app(APP_ID, APP_SECRET, roles=[GRAPH_ROLE])
        yield fake


def trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the fakes' CA the way production trusts a CA: through the standard environment."""
    bundle = str(shared_tls().ca_bundle)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    monkeypatch.setenv("SSL_CERT_FILE", bundle)


def make_settings(idp: FakeIdentityProvider, graph: FakeGraph, **overrides: Any) -> Settings:
    settings = Settings(
        app_id=APP_ID,
        app_password=APP_SECRET,
        app_tenant_id=idp.tenant_id,
        app_type="SingleTenant",
        login_authority=idp.base_url,
        graph_url=graph.graph_url,
        admin_group_ids=(ADMIN_GROUP,),
        membership_cache_seconds=300,
        graph_retry_seconds=2.0,
    )
    return replace(settings, **overrides)


@asynccontextmanager
async def graph_client(settings: Settings, *, page_size: int = 999) -> AsyncIterator[GraphClient]:
    """A GraphClient wired as the app wires it: shared session, msal credentials."""
    credentials = ClientCredentials(settings)
    connector = aiohttp.TCPConnector(ssl=client_ssl_context())
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            yield GraphClient(session, settings, credentials.graph_token, page_size=page_size)
    finally:
        credentials.close()


@asynccontextmanager
async def graph_policy(settings: Settings, **kwargs: Any) -> AsyncIterator[GraphPolicy]:
    async with graph_client(settings) as client:
        yield GraphPolicy(settings, client, **kwargs)


def actor(name: str, tenant: str, **kwargs: Any) -> Actor:
    return Actor(
        object_id=kwargs.pop("object_id", oid(f"user:{name}")),
        name=name.title(),
        tenant_id=tenant,
        upn=f"{name}@provider.example",
        correlation_id=kwargs.pop("correlation_id", f"activity-{uuid.uuid4().hex[:8]}"),
        **kwargs,
    )


def populate(graph: FakeGraph) -> None:
    """The provider's directory: alice is an admin through a nested group, carol an approver."""
    for name in ("alice", "bob", "carol", "dave"):
        graph.add_user(oid(f"user:{name}"), f"{name}@provider.example", name.title())
    graph.add_group(NESTED_ADMIN_GROUP, [oid("user:alice")], display_name="NOC engineers")
    graph.add_group(
        ADMIN_GROUP, [NESTED_ADMIN_GROUP, oid("user:dave")], display_name="Fusion admins"
    )
    graph.add_group(APPROVER_GROUP, [oid("user:carol")], display_name="Fusion approvers")
    graph.add_group(UNRELATED_GROUP, [oid("user:bob")], display_name="Marketing")


class ScriptedGraph(FakeGraph):
    """The Graph fake, plus trouble on a chosen page of a member listing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.page_throttles: dict[str, list[float]] = {}  # $skiptoken → Retry-After per answer
        self.next_link_origin: str | None = None  # rewrite nextLinks to another origin

    def throttle_page(self, skiptoken: str, *retry_after: float) -> None:
        self.page_throttles[skiptoken] = list(retry_after)

    async def _transitive_members(self, request: web.Request) -> web.Response:
        pending = self.page_throttles.get(request.query.get("$skiptoken", "0"))
        if pending:
            wait = pending.pop(0)
            return web.json_response(
                {"error": {"code": "TooManyRequests", "message": "Too many requests."}},
                status=429,
                headers={"Retry-After": f"{wait:g}"},
            )
        response = await super()._transitive_members(request)
        if self.next_link_origin is None or response.status != 200:
            return response
        assert isinstance(response.body, bytes)
        body = json.loads(response.body)
        if "@odata.nextLink" in body:
            body["@odata.nextLink"] = body["@odata.nextLink"].replace(
                self.base_url, self.next_link_origin
            )
        return web.json_response(body)
