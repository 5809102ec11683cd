"""Fixtures shared by the tests that run the bot against the fakes (registered in conftest):
one identity provider and Graph per test module, a fresh Bot Connector per test. A module
that needs something different defines its own fixture of the same name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.support.teams_env import bot_connector, graph_directory, identity_provider


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    yield from identity_provider()


@pytest.fixture(scope="module")
def graph(idp: FakeIdentityProvider) -> Iterator[FakeGraph]:
    yield from graph_directory(idp)


@pytest.fixture
def connector(idp: FakeIdentityProvider) -> Iterator[FakeBotConnector]:
    yield from bot_connector(idp)
