"""Local fakes of the Microsoft services the bot talks to, each on 127.0.0.1 in its own thread.

Import as ``tests.fakes`` (run pytest from the repository root).  Names are imported lazily, so
``tests.fakes.network_guard`` or ``tests.fakes.tls`` can be imported (e.g. by conftest, before
``SSL_CERT_FILE`` is set) without importing aiohttp, whose default SSL context is built at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._server import Failure, RecordedRequest
    from .connector import ConnectorCall, FakeBotConnector, SentActivity
    from .graph import FakeGraph, GraphGroup, GraphUser
    from .identity import (
        BAD_CHANNEL_TOKEN_KINDS,
        BOT_FRAMEWORK_ISSUER,
        BOT_FRAMEWORK_TENANT_ID,
        FakeIdentityProvider,
        SigningKey,
    )
    from .managed_identity import FakeManagedIdentityEndpoint
    from .network_guard import (
        NonLoopbackConnectionError,
        install_loopback_guard,
        is_loopback_host,
        loopback_guard_installed,
        uninstall_loopback_guard,
    )
    from .tls import TLSFiles, make_tls, shared_tls

_WHERE = {
    "Failure": "_server",
    "RecordedRequest": "_server",
    "ConnectorCall": "connector",
    "FakeBotConnector": "connector",
    "SentActivity": "connector",
    "FakeGraph": "graph",
    "GraphGroup": "graph",
    "GraphUser": "graph",
    "BAD_CHANNEL_TOKEN_KINDS": "identity",
    "BOT_FRAMEWORK_ISSUER": "identity",
    "BOT_FRAMEWORK_TENANT_ID": "identity",
    "FakeIdentityProvider": "identity",
    "SigningKey": "identity",
    "FakeManagedIdentityEndpoint": "managed_identity",
    "NonLoopbackConnectionError": "network_guard",
    "install_loopback_guard": "network_guard",
    "is_loopback_host": "network_guard",
    "loopback_guard_installed": "network_guard",
    "uninstall_loopback_guard": "network_guard",
    "TLSFiles": "tls",
    "make_tls": "tls",
    "shared_tls": "tls",
}

__all__ = [
    "BAD_CHANNEL_TOKEN_KINDS",
    "BOT_FRAMEWORK_ISSUER",
    "BOT_FRAMEWORK_TENANT_ID",
    "ConnectorCall",
    "Failure",
    "FakeBotConnector",
    "FakeGraph",
    "FakeIdentityProvider",
    "FakeManagedIdentityEndpoint",
    "GraphGroup",
    "GraphUser",
    "NonLoopbackConnectionError",
    "RecordedRequest",
    "SentActivity",
    "SigningKey",
    "TLSFiles",
    "install_loopback_guard",
    "is_loopback_host",
    "loopback_guard_installed",
    "make_tls",
    "shared_tls",
    "uninstall_loopback_guard",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
