"""The local fakes speak the real protocols: checked with msal, requests, aiohttp and botbuilder."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import msal
import pytest
import requests
from botbuilder.integration.aiohttp import ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity, ChannelAccount, ConversationAccount, ConversationParameters
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import (
    ChannelValidation,
    JwtTokenExtractor,
    MicrosoftAppCredentials,
    SimpleCredentialProvider,
)

from tests.fakes import (
    BAD_CHANNEL_TOKEN_KINDS,
    Failure,
    FakeBotConnector,
    FakeGraph,
    FakeIdentityProvider,
    NonLoopbackConnectionError,
    install_loopback_guard,
    is_loopback_host,
    loopback_guard_installed,
    make_tls,
    shared_tls,
)

BOT_APP = "00000000-0000-0000-0000-0000000b0701"
BOT_SECRET = "bot-secret"
GRAPH_APP = "00000000-0000-0000-0000-00000000a9a9"
GRAPH_SECRET = "graph-secret"
BF_SCOPE = "https://api.botframework.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TEAMS_CONVERSATION = "19:abc123@thread.tacv2;messageid=1700000000000"


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    with FakeIdentityProvider({BOT_APP: BOT_SECRET}) as fake:
        fake.register_app(GRAPH_APP, GRAPH_SECRET, roles=["GroupMember.Read.All"])
        yield fake


@pytest.fixture
def connector(idp: FakeIdentityProvider) -> Iterator[FakeBotConnector]:
    with FakeBotConnector(idp, expected_app_id=BOT_APP) as fake:
        yield fake


@pytest.fixture
def graph(idp: FakeIdentityProvider) -> Iterator[FakeGraph]:
    with FakeGraph(idp) as fake:
        yield fake


def msal_app(
    idp: FakeIdentityProvider, client_id: str, secret: str, tenant: str | None = None, **kwargs: Any
) -> msal.ConfidentialClientApplication:
    kwargs.setdefault("instance_discovery", False)
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        authority=idp.authority(tenant),
        http_client=idp.tls.requests_session(),
        **kwargs,
    )


def bot_token(idp: FakeIdentityProvider) -> str:
    result = msal_app(idp, BOT_APP, BOT_SECRET, "botframework.com").acquire_token_for_client(
        [BF_SCOPE]
    )
    return str(result["access_token"])


def graph_token(idp: FakeIdentityProvider) -> str:
    result = msal_app(idp, GRAPH_APP, GRAPH_SECRET).acquire_token_for_client([GRAPH_SCOPE])
    return str(result["access_token"])


def teams_activity(service_url: str, channel_id: str = "msteams") -> Activity:
    return Activity(
        type="message",
        id="1700000000001",
        channel_id=channel_id,
        service_url=service_url,
        text="help",
        conversation=ConversationAccount(id=TEAMS_CONVERSATION),
        from_property=ChannelAccount(id="29:user", aad_object_id="aad-user"),
        recipient=ChannelAccount(id=f"28:{BOT_APP}"),
    )


class BotConfig:
    """The configuration object ConfigurationBotFrameworkAuthentication reads."""

    APP_ID = BOT_APP
    APP_PASSWORD = BOT_SECRET
    APP_TYPE = "MultiTenant"
    TO_BOT_FROM_CHANNEL_TOKEN_ISSUER = "https://api.botframework.com"
    TO_CHANNEL_FROM_BOT_OAUTH_SCOPE = "https://api.botframework.com"
    VALIDATE_AUTHORITY = False

    def __init__(self, metadata_url: str, login_url: str) -> None:
        self.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL = metadata_url
        self.TO_CHANNEL_FROM_BOT_LOGIN_URL = login_url


class FakeCloudCredentials(MicrosoftAppCredentials):
    """Bot-to-connector credentials: msal against the fake authority, no instance discovery."""

    def __init__(self, idp: FakeIdentityProvider) -> None:
        super().__init__(BOT_APP, BOT_SECRET, oauth_scope="https://api.botframework.com")
        self._msal = msal_app(idp, BOT_APP, BOT_SECRET, "botframework.com")

    def get_access_token(self, force_refresh: bool = False) -> str:
        result = self._msal.acquire_token_for_client([BF_SCOPE])
        return str(result["access_token"])


# -- tls ------------------------------------------------------------------------------------------


def test_make_tls_writes_a_ca_a_loopback_certificate_and_a_combined_bundle(tmp_path: Path) -> None:
    files = make_tls(tmp_path)
    ca_pem = files.ca_cert.read_text()
    assert ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert files.cert.read_text().endswith(ca_pem)
    assert files.ca_bundle.read_text().endswith(ca_pem)
    assert (
        files.ca_bundle.stat().st_size > files.ca_cert.stat().st_size
    )  # the system CAs come first
    assert files.env() == {
        "REQUESTS_CA_BUNDLE": str(files.ca_bundle),
        "SSL_CERT_FILE": str(files.ca_bundle),
    }
    files.server_ssl_context()  # key and certificate match
    assert shared_tls() is shared_tls()


def test_tls_is_verified_for_127_0_0_1_and_localhost(graph: FakeGraph) -> None:
    ctx = graph.tls.client_ssl_context()
    for host in ("127.0.0.1", "localhost"):
        with socket.create_connection(("127.0.0.1", graph.port)) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls_sock:
                assert tls_sock.version() is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", graph.port)) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_requests_ca_bundle_overrides_session_verify_unless_trust_env_is_off(
    graph: FakeGraph,
) -> None:
    # REQUESTS_CA_BUNDLE is set on this machine: a plain session ignores ``verify=``.
    plain = requests.Session()
    plain.verify = str(graph.tls.ca_cert)
    with pytest.raises(requests.exceptions.SSLError):
        plain.get(f"{graph.graph_url}/users/nobody")
    assert graph.tls.requests_session().get(f"{graph.graph_url}/users/nobody").status_code == 401


# -- identity: Entra authority with real msal -----------------------------------------------------


@pytest.mark.parametrize(
    "discovery", ["instance_discovery=False", "validate_authority=False", "fake discovery url"]
)
def test_msal_client_credentials_get_a_token_that_verifies_and_is_cached(
    idp: FakeIdentityProvider, discovery: str
) -> None:
    options: dict[str, dict[str, Any]] = {
        "instance_discovery=False": {"instance_discovery": False},
        "validate_authority=False": {"instance_discovery": None, "validate_authority": False},
        "fake discovery url": {"instance_discovery": f"{idp.base_url}/common/discovery/instance"},
    }
    kwargs = options[discovery]
    idp.clear_records()
    app = msal.ConfidentialClientApplication(
        GRAPH_APP,
        client_credential=GRAPH_SECRET,
        authority=f"{idp.base_url}/{idp.tenant_id}",
        http_client=idp.tls.requests_session(),
        **kwargs,
    )
    first = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    assert first.get("token_type") == "Bearer", first
    assert first["token_source"] == "identity_provider"
    claims = idp.verify_access_token(first["access_token"], "https://graph.microsoft.com")
    assert claims["aud"] == "https://graph.microsoft.com"
    assert claims["appid"] == claims["azp"] == GRAPH_APP
    assert claims["tid"] == idp.tenant_id
    assert claims["roles"] == ["GroupMember.Read.All"]
    assert 3500 < claims["exp"] - time.time() <= 3600
    second = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert idp.token_request_count == 1
    assert idp.token_requests[0].info["client_id"] == GRAPH_APP


def test_msal_bot_framework_scope_in_the_botframework_tenant(idp: FakeIdentityProvider) -> None:
    token = bot_token(idp)
    claims = idp.verify_access_token(token, "https://api.botframework.com")
    assert claims["tid"] == "d6d49420-f39b-4df7-a1dc-d59a935871db"
    assert claims["appid"] == BOT_APP
    with pytest.raises(jwt.InvalidAudienceError):
        idp.verify_access_token(token, "https://graph.microsoft.com")


def test_msal_with_default_instance_discovery_reaches_for_the_internet(
    idp: FakeIdentityProvider,
) -> None:
    """Pitfall the bot must avoid: msal's default asks login.microsoftonline.com to validate an
    unknown authority host (botbuilder's own MicrosoftAppCredentials does exactly this)."""
    uninstall = install_loopback_guard()
    try:
        with pytest.raises(
            RuntimeError,
            match="non-loopback connection attempted: DNS lookup of 'login.microsoftonline.com'",
        ):
            msal.ConfidentialClientApplication(
                GRAPH_APP,
                client_credential=GRAPH_SECRET,
                authority=idp.authority(),
                http_client=idp.tls.requests_session(),
            )
    finally:
        uninstall()


def test_msal_errors_for_bad_credentials_scope_and_tenant(idp: FakeIdentityProvider) -> None:
    wrong_secret = msal_app(idp, GRAPH_APP, "nope").acquire_token_for_client([GRAPH_SCOPE])
    assert wrong_secret["error"] == "invalid_client"
    unknown = msal_app(idp, "unknown-app", "x").acquire_token_for_client([GRAPH_SCOPE])
    assert unknown["error"] == "unauthorized_client"
    bad_scope = msal_app(idp, GRAPH_APP, GRAPH_SECRET).acquire_token_for_client(["User.Read"])
    assert bad_scope["error"] == "invalid_scope"
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        msal_app(idp, GRAPH_APP, GRAPH_SECRET, tenant="no-such-tenant.example")


def test_scripted_token_endpoint_failure(idp: FakeIdentityProvider) -> None:
    idp.fail_token_requests(1, status=400, error="invalid_request")
    failed = msal_app(idp, GRAPH_APP, GRAPH_SECRET).acquire_token_for_client([GRAPH_SCOPE])
    assert failed["error"] == "invalid_request"
    assert "access_token" in msal_app(idp, GRAPH_APP, GRAPH_SECRET).acquire_token_for_client(
        [GRAPH_SCOPE]
    )


def test_verify_access_token_rejects_what_it_did_not_issue(idp: FakeIdentityProvider) -> None:
    good = idp.mint_access_token(GRAPH_APP, "https://graph.microsoft.com")
    assert idp.verify_access_token(good, "https://graph.microsoft.com")["appid"] == GRAPH_APP
    with pytest.raises(jwt.ExpiredSignatureError):
        idp.verify_access_token(
            idp.mint_access_token(GRAPH_APP, "https://graph.microsoft.com", exp_delta=-60),
            "https://graph.microsoft.com",
        )
    with pytest.raises(jwt.InvalidTokenError):  # signed by a key the fake never published
        idp.verify_access_token(
            idp.mint_access_token(GRAPH_APP, "https://graph.microsoft.com", key=idp.rogue_key),
            "https://graph.microsoft.com",
        )
    with pytest.raises(jwt.InvalidTokenError):  # an inbound channel token is not an access token
        idp.verify_access_token(
            idp.channel_token(BOT_APP, "https://x/"), "https://api.botframework.com"
        )


def test_user_token_carries_groups_or_the_overage_indicator(idp: FakeIdentityProvider) -> None:
    jwks = jwt.PyJWKSet.from_dict(idp.tls.requests_session().get(idp.entra_jwks_url()).json())
    token = idp.user_token("user-1", BOT_APP, groups=["g1", "g2"])
    key = jwks[jwt.get_unverified_header(token)["kid"]].key
    assert jwt.decode(token, key, algorithms=["RS256"], audience=BOT_APP)["groups"] == ["g1", "g2"]
    over = jwt.decode(
        idp.user_token("user-1", BOT_APP, overage=True), options={"verify_signature": False}
    )
    assert "groups" not in over and over["_claim_names"] == {"groups": "src1"}


# -- identity: Bot Framework channel tokens with real botbuilder ----------------------------------


@pytest.mark.asyncio
async def test_botbuilder_accepts_a_good_channel_token_via_plain_http_metadata(
    idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    auth = ConfigurationBotFrameworkAuthentication(
        BotConfig(idp.channel_metadata_url_http, idp.authority("botframework.com"))
    )
    activity = teams_activity(connector.service_url)
    result = await auth.authenticate_request(
        activity, f"Bearer {idp.channel_token(BOT_APP, connector.service_url)}"
    )
    assert result.claims_identity.is_authenticated
    assert result.claims_identity.claims["aud"] == BOT_APP
    assert result.claims_identity.claims["serviceurl"] == connector.service_url
    assert result.audience == "https://api.botframework.com"


@pytest.mark.asyncio
async def test_botbuilder_accepts_a_good_channel_token_via_https_metadata_with_the_ca_bundle(
    idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    service_url = "https://smba.trafficmanager.net/amer/"
    auth = ConfigurationBotFrameworkAuthentication(
        BotConfig(idp.channel_metadata_url, idp.authority("botframework.com"))
    )
    token = f"Bearer {idp.channel_token(BOT_APP, service_url)}"
    # botbuilder's bare requests.get only trusts REQUESTS_CA_BUNDLE: without the fake CA it fails...
    with pytest.raises(requests.exceptions.SSLError):
        await auth.authenticate_request(teams_activity(service_url), token)
    # ... with the combined bundle it works.
    for name, value in idp.tls.env().items():
        monkeypatch.setenv(name, value)
    result = await auth.authenticate_request(teams_activity(service_url), token)
    assert result.claims_identity.claims["aud"] == BOT_APP


@pytest.mark.asyncio
async def test_jwt_token_extractor_checks_endorsements(idp: FakeIdentityProvider) -> None:
    extractor = JwtTokenExtractor(
        ChannelValidation.TO_BOT_FROM_CHANNEL_TOKEN_VALIDATION_PARAMETERS,
        idp.channel_metadata_url_http,
        ["RS256"],
    )
    token = f"Bearer {idp.channel_token(BOT_APP, 'https://s/')}"
    identity = await extractor.get_identity_from_auth_header(token, "msteams")
    assert identity.claims["aud"] == BOT_APP
    assert await ChannelValidation.validate_identity(
        identity, SimpleCredentialProvider(BOT_APP, "")
    )
    with pytest.raises(Exception, match="endorsement"):
        await extractor.get_identity_from_auth_header(token, "slack")
    webchat_key = f"Bearer {idp.channel_token(BOT_APP, 'https://s/', kid='bf-key-webchat')}"
    assert await extractor.get_identity_from_auth_header(webchat_key, "webchat")
    with pytest.raises(Exception, match="endorsement"):
        await extractor.get_identity_from_auth_header(webchat_key, "msteams")


# botbuilder raises these kinds as something other than PermissionError, which CloudAdapter.process
# does not turn into 401: the bot must map every authentication failure to 401 itself.
NOT_PERMISSION_ERROR = {
    "expired",
    "not_yet_valid",
    "wrong_signing_key",
    "unknown_kid",
    "unendorsed_key",
    "alg_none",
    "hs256_public_key",
    "garbage",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", BAD_CHANNEL_TOKEN_KINDS)
async def test_botbuilder_rejects_every_bad_channel_token(
    idp: FakeIdentityProvider, kind: str
) -> None:
    service_url = "https://smba.trafficmanager.net/amer/"
    auth = ConfigurationBotFrameworkAuthentication(
        BotConfig(idp.channel_metadata_url_http, idp.authority("botframework.com"))
    )
    token = idp.bad_channel_token(kind, BOT_APP, service_url)
    with pytest.raises(Exception) as caught:
        await auth.authenticate_request(teams_activity(service_url), f"Bearer {token}")
    assert isinstance(caught.value, PermissionError) == (kind not in NOT_PERMISSION_ERROR), repr(
        caught.value
    )


def test_channel_metadata_documents_look_like_login_botframework_com(
    idp: FakeIdentityProvider,
) -> None:
    metadata = requests.get(idp.channel_metadata_url_http, timeout=5).json()
    assert metadata["issuer"] == "https://api.botframework.com"
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert metadata["jwks_uri"].startswith(idp.http_base_url)
    keys = requests.get(metadata["jwks_uri"], timeout=5).json()["keys"]
    assert {k["kid"]: k["endorsements"] for k in keys} == {
        "bf-key-1": ["msteams", "emulator"],
        "bf-key-webchat": ["webchat"],
    }
    assert all(k["kty"] == "RSA" and "d" not in k for k in keys)
    https_metadata = idp.tls.requests_session().get(idp.channel_metadata_url).json()
    assert https_metadata["jwks_uri"].startswith(idp.base_url)


def test_configurable_channel_keys() -> None:
    with FakeIdentityProvider(channel_keys={"k1": ["msteams"], "k2": []}) as fake:
        keys = requests.get(
            fake.channel_metadata_url_http.replace("openidconfiguration", "keys"), timeout=5
        ).json()
        assert [(k["kid"], k["endorsements"]) for k in keys["keys"]] == [
            ("k1", ["msteams"]),
            ("k2", []),
        ]
        assert jwt.get_unverified_header(fake.channel_token("a", "s"))["kid"] == "k1"


# -- connector ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_botbuilder_connector_client_sends_replies_updates_and_creates(
    idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    async with ConnectorClient(FakeCloudCredentials(idp), base_url=connector.service_url) as client:
        sent = await client.conversations.send_to_conversation(
            TEAMS_CONVERSATION, Activity(type="message", text="sent")
        )
        replied = await client.conversations.reply_to_activity(
            TEAMS_CONVERSATION, "1700000000001", Activity(type="message", text="reply")
        )
        updated = await client.conversations.update_activity(
            TEAMS_CONVERSATION, sent.id, Activity(type="message", id=sent.id, text="updated")
        )
        created = await client.conversations.create_conversation(
            ConversationParameters(
                is_group=False,
                bot=ChannelAccount(id=f"28:{BOT_APP}"),
                members=[ChannelAccount(id="29:user")],
                tenant_id=idp.tenant_id,
                activity=Activity(type="message", text="proactive"),
            )
        )
    assert updated.id == sent.id and replied.id != sent.id
    assert created.id.startswith("a:") and created.activity_id
    got = await connector.wait_for_async(4, timeout=5)
    assert [(a.kind, a.text) for a in got] == [
        ("send", "sent"),
        ("reply", "reply"),
        ("update", "updated"),
        ("create", "proactive"),
    ]
    assert got[0].conversation_id == TEAMS_CONVERSATION
    assert got[1].reply_to_id == "1700000000001"
    assert all(a.claims and a.claims["appid"] == BOT_APP for a in got)
    assert idp.verify_access_token(
        connector.requests[0].bearer or "", "https://api.botframework.com"
    )


@pytest.mark.asyncio
async def test_connector_rejects_missing_and_bad_tokens(
    idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    url = f"{connector.service_url}v3/conversations/c1/activities"
    bad = {
        "none": None,
        "graph audience": idp.mint_access_token(BOT_APP, "https://graph.microsoft.com"),
        "expired": idp.mint_access_token(BOT_APP, "https://api.botframework.com", exp_delta=-10),
        "foreign key": idp.mint_access_token(
            BOT_APP, "https://api.botframework.com", key=idp.rogue_key
        ),
        "other app": idp.mint_access_token(GRAPH_APP, "https://api.botframework.com"),
        "channel token": idp.channel_token(BOT_APP, connector.service_url),
        "garbage": "garbage",
    }
    async with aiohttp.ClientSession() as session:
        for name, token in bad.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.post(url, json={"type": "message"}, headers=headers) as response:
                assert response.status == 401, name
        good = {
            "Authorization": f"Bearer {idp.mint_access_token(BOT_APP, 'https://api.botframework.com')}"
        }
        async with session.post(
            url, json={"type": "message", "text": "ok"}, headers=good
        ) as response:
            assert response.status == 201
            assert (await response.json())["id"]
        async with session.post(
            f"{connector.base_url}/v3/conversations/c1/activities", json={}, headers=good
        ) as r:
            assert r.status == 404  # the service URL's path prefix is required
    assert [a.text for a in connector.activities] == ["ok"]
    assert [r.status for r in connector.requests] == [401] * len(bad) + [201, 404]
    assert connector.requests[0].info["auth_error"] == "missing bearer token"


def _post(
    connector: FakeBotConnector, token: str, conversation: str, text: str
) -> requests.Response:
    return requests.post(
        f"{connector.service_url}v3/conversations/{conversation}/activities",
        json={"type": "message", "text": text},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )


def test_connector_throttling_retry_after_and_violations(
    idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    token = idp.mint_access_token(BOT_APP, "https://api.botframework.com")
    connector.fail_next(2, Failure.throttled(retry_after=0.3), conversation_id="c1")
    first = _post(connector, token, "c1", "a")
    assert first.status_code == 429 and first.headers["Retry-After"] == "0.3"
    assert first.json()["error"]["code"] == "Throttled"
    assert (
        _post(connector, token, "c2", "other").status_code == 201
    )  # other conversations unaffected
    early = _post(connector, token, "c1", "a")  # retried too soon: still throttled
    assert early.status_code == 429
    time.sleep(0.35)
    assert _post(connector, token, "c1", "a").status_code == 201  # retried after Retry-After
    violations = connector.retry_violations()
    assert len(violations) == 1 and "Retry-After was 0.3s" in violations[0]
    statuses = [(r.info["conversation_id"], r.status, r.retry_after) for r in connector.requests]
    assert statuses == [("c1", 429, 0.3), ("c2", 201, None), ("c1", 429, 0.3), ("c1", 201, None)]
    assert [a.text for a in connector.activities] == ["other", "a"]


def test_connector_bot_removed_5xx_and_custom_policies(
    idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    token = idp.mint_access_token(BOT_APP, "https://api.botframework.com")
    connector.remove_bot("gone")
    removed = _post(connector, token, "gone", "x")
    assert removed.status_code == 403
    assert removed.json() == {
        "error": {
            "code": "BotNotInConversationRoster",
            "message": "The bot is not part of the conversation roster.",
        }
    }
    connector.restore_bot("gone")
    assert _post(connector, token, "gone", "x").status_code == 201
    connector.fail_next(1, Failure.server_error(502))
    assert _post(connector, token, "c", "x").status_code == 502
    connector.add_policy(
        lambda call: Failure(503, 1) if call.attempt == 1 and call.body.get("text") == "y" else None
    )
    assert _post(connector, token, "c", "y").status_code == 503
    assert _post(connector, token, "c", "y").status_code == 201  # second attempt passes
    connector.clear_failures()
    connector.fail_fraction(0.1, Failure.throttled(1), seed=7)
    statuses = [_post(connector, token, "bulk", f"m{i}").status_code for i in range(200)]
    assert 8 <= statuses.count(429) <= 35 and set(statuses) == {201, 429}


def test_connector_members_and_wait_for(
    idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    token = idp.mint_access_token(BOT_APP, "https://api.botframework.com")
    connector.set_members("c", [{"id": "29:u", "aadObjectId": "aad-1", "userPrincipalName": "u@x"}])
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{connector.service_url}v3/conversations/c/members"
    assert requests.get(f"{base}/aad-1", headers=headers, timeout=5).json()["id"] == "29:u"
    assert requests.get(base, headers=headers, timeout=5).json()[0]["aadObjectId"] == "aad-1"
    assert requests.get(f"{base}/nobody", headers=headers, timeout=5).status_code == 404
    with pytest.raises(TimeoutError):
        connector.wait_for(1, timeout=0.2)
    threading.Timer(0.1, _post, (connector, token, "c", "late")).start()
    assert [a.text for a in connector.wait_for(1, timeout=5, conversation_id="c")] == ["late"]


@pytest.mark.asyncio
async def test_connector_under_concurrent_sends(
    idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    headers = {"Authorization": f"Bearer {bot_token(idp)}"}
    url = f"{connector.service_url}v3/conversations/busy/activities"
    async with aiohttp.ClientSession(headers=headers) as session:

        async def send(i: int) -> str:
            async with session.post(url, json={"type": "message", "text": str(i)}) as response:
                assert response.status == 201
                return str((await response.json())["id"])

        ids = await asyncio.gather(*(send(i) for i in range(50)))
    assert len(set(ids)) == 50
    got = await connector.wait_for_async(50, conversation_id="busy")
    assert sorted(int(a.text or "") for a in got) == list(range(50))


@pytest.mark.asyncio
async def test_connector_https_variant(idp: FakeIdentityProvider) -> None:
    with FakeBotConnector(idp, https=True, path_prefix="/teams/") as fake:
        assert fake.service_url.startswith("https://127.0.0.1:") and fake.service_url.endswith(
            "/teams/"
        )
        token = idp.mint_access_token(BOT_APP, "https://api.botframework.com")
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{fake.service_url}v3/conversations/c/activities",
                json={"type": "message"},
                headers={"Authorization": f"Bearer {token}"},
                ssl=fake.tls.client_ssl_context(),
            ) as response:
                assert response.status == 201
        assert len(await fake.wait_for_async(1)) == 1


# -- graph ----------------------------------------------------------------------------------------


def _graph_session(idp: FakeIdentityProvider) -> requests.Session:
    session = idp.tls.requests_session()
    session.headers["Authorization"] = f"Bearer {graph_token(idp)}"
    return session


def _directory(graph: FakeGraph) -> None:
    graph.add_user("u-admin", "admin@contoso.test", "Ada Admin")
    graph.add_user("u-nested", "nested@contoso.test", "Ned Nested")
    graph.add_user("u-plain", "plain@contoso.test", "Pat Plain")
    graph.add_group("g-sub", ["u-nested"])
    graph.add_group("g-admins", ["u-admin", "g-sub"], display_name="Fusion admins")
    graph.add_group("g-other", ["u-plain"], security_enabled=False)


def test_graph_check_member_groups_is_transitive(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    _directory(graph)
    graph.add_group("g-outer", ["g-late"])  # nested group added before it exists
    graph.add_group("g-late", ["u-late"])
    assert graph.transitive_groups("u-late") == ["g-late", "g-outer"]
    assert "g-late" not in graph.users
    session = _graph_session(idp)
    ids = {"groupIds": ["g-admins", "g-other", "g-missing"]}
    for path in ("users/u-admin", "directoryObjects/u-admin", "users/admin@contoso.test"):
        response = session.post(f"{graph.graph_url}/{path}/checkMemberGroups", json=ids)
        assert response.status_code == 200 and response.json()["value"] == ["g-admins"], path
    assert session.post(f"{graph.graph_url}/users/u-nested/checkMemberGroups", json=ids).json()[
        "value"
    ] == ["g-admins"]
    assert session.post(f"{graph.graph_url}/users/u-plain/checkMemberGroups", json=ids).json()[
        "value"
    ] == ["g-other"]
    too_many = session.post(
        f"{graph.graph_url}/users/u-admin/checkMemberGroups",
        json={"groupIds": [f"g{i}" for i in range(21)]},
    )
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "Request_BadRequest"
    assert (
        session.post(f"{graph.graph_url}/users/u-admin/checkMemberGroups", json={}).status_code
        == 400
    )
    missing = session.post(f"{graph.graph_url}/users/nobody/checkMemberGroups", json=ids)
    assert (
        missing.status_code == 404 and missing.json()["error"]["code"] == "Request_ResourceNotFound"
    )
    nested = session.post(
        f"{graph.graph_url}/users/u-nested/getMemberGroups", json={"securityEnabledOnly": True}
    )
    assert sorted(nested.json()["value"]) == ["g-admins", "g-sub"]
    plain = session.post(
        f"{graph.graph_url}/users/u-plain/getMemberGroups", json={"securityEnabledOnly": True}
    )
    assert plain.json()["value"] == []
    assert session.get(f"{graph.graph_url}/users/nested@contoso.test").json()["id"] == "u-nested"
    assert graph.count("checkMemberGroups") == 8 and graph.count("getMemberGroups") == 2


@pytest.mark.asyncio
async def test_graph_transitive_members_paging_with_aiohttp(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    _directory(graph)
    for i in range(5):
        graph.add_member("g-sub", f"u-{i}")
    headers = {"Authorization": f"Bearer {graph_token(idp)}"}
    ctx = graph.tls.client_ssl_context()

    async def collect(url: str) -> tuple[list[dict[str, Any]], int]:
        items: list[dict[str, Any]] = []
        pages = 0
        next_url: str | None = url
        async with aiohttp.ClientSession(headers=headers) as session:
            while next_url:
                async with session.get(next_url, ssl=ctx) as response:
                    assert response.status == 200, await response.text()
                    body = await response.json()
                items += body["value"]
                next_url = body.get("@odata.nextLink")
                pages += 1
        return items, pages

    everyone, pages = await collect(f"{graph.graph_url}/groups/g-admins/transitiveMembers?$top=3")
    assert pages == 3
    assert [m["id"] for m in everyone] == ["u-admin", "g-sub", "u-nested"] + [
        f"u-{i}" for i in range(5)
    ]
    assert everyone[1]["@odata.type"] == "#microsoft.graph.group"
    users, _ = await collect(
        f"{graph.graph_url}/groups/g-admins/transitiveMembers/microsoft.graph.user?$top=2"
    )
    assert all(u["@odata.type"] == "#microsoft.graph.user" for u in users) and len(users) == 7
    assert users[0] == {
        "@odata.type": "#microsoft.graph.user",
        "id": "u-admin",
        "userPrincipalName": "admin@contoso.test",
        "displayName": "Ada Admin",
    }
    selected, _ = await collect(
        f"{graph.graph_url}/groups/g-sub/transitiveMembers/microsoft.graph.user?$select=id,userPrincipalName"
    )
    assert selected[0] == {
        "@odata.type": "#microsoft.graph.user",
        "id": "u-nested",
        "userPrincipalName": "nested@contoso.test",
    }
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(
            f"{graph.graph_url}/groups/nope/transitiveMembers", ssl=ctx
        ) as response:
            assert response.status == 404
        async with session.get(
            f"{graph.graph_url}/groups/g-sub/transitiveMembers?$top=1000", ssl=ctx
        ) as response:
            assert response.status == 400


def test_graph_checks_the_bearer_token_and_roles(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> None:
    _directory(graph)
    url = f"{graph.graph_url}/users/u-admin/checkMemberGroups"
    body = {"groupIds": ["g-admins"]}
    session = idp.tls.requests_session()
    assert session.post(url, json=body).status_code == 401
    wrong_aud = {"Authorization": f"Bearer {bot_token(idp)}"}
    denied = session.post(url, json=body, headers=wrong_aud)
    assert (
        denied.status_code == 401 and denied.json()["error"]["code"] == "InvalidAuthenticationToken"
    )
    with FakeGraph(idp, required_roles=["GroupMember.Read.All", "Directory.Read.All"]) as strict:
        _directory(strict)
        strict_url = f"{strict.graph_url}/users/u-admin/checkMemberGroups"
        no_roles = {
            "Authorization": f"Bearer {idp.mint_access_token(BOT_APP, 'https://graph.microsoft.com')}"
        }
        forbidden = session.post(strict_url, json=body, headers=no_roles)
        assert (
            forbidden.status_code == 403
            and forbidden.json()["error"]["code"] == "Authorization_RequestDenied"
        )
        assert _graph_session(idp).post(strict_url, json=body).status_code == 200


def test_graph_outages_throttling_and_counts(idp: FakeIdentityProvider, graph: FakeGraph) -> None:
    _directory(graph)
    session = _graph_session(idp)
    url = f"{graph.graph_url}/users/u-admin/checkMemberGroups"
    body = {"groupIds": ["g-admins"]}
    graph.throttle(2, retry_after=3)
    throttled = [session.post(url, json=body) for _ in range(2)]
    assert [(r.status_code, r.headers.get("Retry-After")) for r in throttled] == [
        (429, "3"),
        (429, "3"),
    ]
    assert throttled[0].json()["error"]["code"] == "TooManyRequests"
    assert session.post(url, json=body).status_code == 200
    graph.fail(1, 500)
    assert session.post(url, json=body).status_code == 500
    graph.down("503")
    assert session.post(url, json=body).status_code == 503
    graph.up()
    graph.down("refuse")
    with pytest.raises(requests.exceptions.ConnectionError):  # even on a kept-alive connection
        session.post(url, json=body, timeout=2)
    graph.up()
    assert session.post(url, json=body, timeout=5).status_code == 200
    assert (
        graph.call_count == graph.count("checkMemberGroups") == 6
    )  # the refused attempt never arrived
    assert [r.status for r in graph.requests] == [429, 429, 200, 500, 503, 200]


# -- network guard --------------------------------------------------------------------------------


@pytest.fixture
def guard() -> Iterator[None]:
    uninstall = install_loopback_guard()
    yield
    uninstall()


def test_is_loopback_host() -> None:
    for host in (
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "localhost",
        "LOCALHOST.",
        "api.localhost",
        "::ffff:127.0.0.1",
    ):
        assert is_loopback_host(host), host
    bad_hosts: tuple[str | None, ...] = (
        "10.0.0.1",
        "0.0.0.0",
        "",
        "2001:db8::1",
        "example.com",
        "login.microsoftonline.com",
        None,
    )
    for bad in bad_hosts:
        assert not is_loopback_host(bad), bad


@pytest.mark.usefixtures("guard")
def test_guard_blocks_sockets_requests_and_dns() -> None:
    with pytest.raises(
        NonLoopbackConnectionError, match=r"non-loopback connection attempted: .*192\.0\.2\.1"
    ):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    with socket.socket() as sock, pytest.raises(RuntimeError, match="non-loopback"):
        sock.connect(("10.1.2.3", 80))
    with socket.socket() as sock, pytest.raises(RuntimeError, match="non-loopback"):
        sock.connect_ex(("10.1.2.3", 80))
    with socket.socket(socket.AF_INET6) as sock, pytest.raises(RuntimeError, match="non-loopback"):
        sock.connect(("2001:db8::1", 80, 0, 0))
    with pytest.raises(RuntimeError, match="DNS lookup of 'graph.microsoft.com'"):
        socket.getaddrinfo("graph.microsoft.com", 443)
    with pytest.raises(RuntimeError, match="non-loopback connection attempted"):
        requests.get("https://login.botframework.com/v1/.well-known/openidconfiguration", timeout=2)
    with pytest.raises(RuntimeError, match="non-loopback connection attempted"):
        requests.get("http://192.0.2.7/", timeout=2)
    with pytest.raises(RuntimeError, match="non-loopback"):
        ssl.create_default_context().wrap_socket(socket.socket(), server_hostname="x").connect(
            ("192.0.2.1", 443)
        )


@pytest.mark.asyncio
@pytest.mark.usefixtures("guard")
async def test_guard_blocks_asyncio_and_aiohttp() -> None:
    with pytest.raises(RuntimeError, match=r"non-loopback connection attempted: .*192\.0\.2\.1"):
        await asyncio.open_connection("192.0.2.1", 80)
    loop = asyncio.get_running_loop()
    with pytest.raises(RuntimeError, match="non-loopback"):
        await loop.create_connection(asyncio.Protocol, "203.0.113.5", 443)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RuntimeError, match="DNS lookup of 'graph.microsoft.com'"):
            await session.get("https://graph.microsoft.com/v1.0/me")
        with pytest.raises(RuntimeError, match="non-loopback"):
            await session.get("http://198.51.100.1/")


@pytest.mark.asyncio
@pytest.mark.usefixtures("guard")
async def test_guard_lets_loopback_and_unix_sockets_through(
    idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    assert loopback_guard_installed()
    # blocking clients on the test's own loop: fine, because every fake serves from its own thread
    assert (
        requests.get(  # noqa: ASYNC210
            idp.channel_metadata_url_http, timeout=5
        ).status_code
        == 200
    )
    assert "access_token" in msal_app(idp, GRAPH_APP, GRAPH_SECRET).acquire_token_for_client(
        [GRAPH_SCOPE]
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://localhost:{connector.port}/") as response:
            assert response.status == 404
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "s.sock")
        with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
            server.bind(path)
            server.listen(1)
            client.connect(path)
    reader, writer = await asyncio.open_connection("127.0.0.1", connector.port)
    writer.close()
    await writer.wait_closed()


def test_guard_install_is_nestable_and_uninstall_restores_the_socket_module() -> None:
    # In a fresh interpreter: this one may already carry a session-wide guard (conftest).
    code = textwrap.dedent("""
        import socket
        from tests.fakes.network_guard import install_loopback_guard, loopback_guard_installed
        original = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
                    socket.getaddrinfo)
        uninstall = install_loopback_guard()
        nested = install_loopback_guard(allow_hosts=["db.internal"])
        nested()  # a nested install must not remove the outer guard
        assert loopback_guard_installed()
        assert socket.getaddrinfo is not original[3]
        try:
            socket.getaddrinfo("example.com", 80)
        except RuntimeError as exc:
            assert "non-loopback connection attempted" in str(exc)
        else:
            raise AssertionError("not guarded")
        uninstall()
        assert not loopback_guard_installed()
        assert (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
                socket.getaddrinfo) == original
        assert "connect" not in socket.socket.__dict__
        print("ok")
    """)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
