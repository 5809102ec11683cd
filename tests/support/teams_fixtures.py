"""Fixtures shared by the tests that run the bot against the fakes (registered in conftest):
one identity provider and Graph per test module, a fresh Bot Connector per test. A module
that needs something different defines its own fixture of the same name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.support import teams_env
from tests.support.teams_env import EDGES, bot_connector, graph_directory, identity_provider

#: The protocol tests: each runs once against each edge (FUSION_EDGE=botbuilder|agents).
PROTOCOL_MODULES = frozenset(
    f"tests.{name}"
    for name in (
        "test_inbound_auth",
        "test_hardening",
        "test_bot_roundtrip",
        "test_approvals",
        "test_digest_roundtrip",
        "test_sso",
        "test_reply_limits",
        "test_gate",
        "test_bulk_progress",
        "test_outbound",
    )
)
#: Protocol tests in modules that are otherwise about something else.
PROTOCOL_TESTS = frozenset(
    {"tests.test_playground_e2e::test_playground_drives_the_bot_in_headless_chromium"}
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__
    protocol = module in PROTOCOL_MODULES or (
        f"{module}::{metafunc.function.__name__}" in PROTOCOL_TESTS
    )
    if protocol and "fusion_edge" in metafunc.fixturenames:
        metafunc.parametrize("fusion_edge", EDGES, indirect=True)


@pytest.fixture(autouse=True)
def fusion_edge(request: pytest.FixtureRequest) -> Iterator[str]:
    """The edge `running_bot` builds: each edge in turn in the protocol tests, else botbuilder."""
    edge = getattr(request, "param", "botbuilder")
    teams_env.edge_under_test = edge
    try:
        yield edge
    finally:
        teams_env.edge_under_test = "botbuilder"


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    yield from identity_provider()


@pytest.fixture(scope="module")
def graph(idp: FakeIdentityProvider) -> Iterator[FakeGraph]:
    yield from graph_directory(idp)


@pytest.fixture
def connector(idp: FakeIdentityProvider) -> Iterator[FakeBotConnector]:
    yield from bot_connector(idp)
