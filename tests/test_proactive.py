"""Proactive sends against the fake Bot Connector (127.0.0.1, own thread), signed with real msal
tokens from the fake Entra ID: the token, the path, Teams' rate limits, 429 with and without
Retry-After, bounded 5xx retries, 403 "bot removed", and untrusted service URLs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest

from bot.auth.credentials import ClientCredentials
from bot.domain import conversations
from bot.domain.models import ConversationRef
from bot.teams.proactive import (
    RateLimiter,
    SendOutcome,
    Target,
    Window,
    retry_after_seconds,
)
from tests.fakes import ConnectorCall, Failure, FakeBotConnector, FakeIdentityProvider
from tests.support import digest_env as env
from tests.support.digest_env import (
    APP_ID,
    TENANT,
    ca_bundle,
    connector,
    credentials,
    idp,
    make_sender,
    session,
)

__all__ = ["ca_bundle", "connector", "credentials", "idp", "session"]  # fixtures

# A real Teams channel thread id: ':' '@' ';' '=' must survive the trip in the URL path.
CHANNEL = "19:3f2a9c@thread.tacv2;messageid=1700000000000"
CARD = {
    "type": "AdaptiveCard",
    "version": "1.5",
    "body": [{"type": "TextBlock", "text": "Usage digest", "wrap": True}],
}


def target(connector: FakeBotConnector, conversation_id: str = CHANNEL) -> Target:
    return env.target(connector, conversation_id)


def gaps(connector: FakeBotConnector) -> list[float]:
    times = [r.at for r in connector.requests]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


async def test_posts_the_card_to_the_conversation_with_the_bots_token(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    sender = make_sender(session, credentials, connector)
    result = await sender.post_card(target(connector), CARD, summary="Usage digest")
    assert result.outcome is SendOutcome.SENT and result.attempts == 1
    (sent,) = connector.activities
    assert sent.kind == "send" and sent.conversation_id == CHANNEL
    assert sent.activity_id == result.activity_id
    assert sent.claims is not None and sent.claims["appid"] == APP_ID
    assert sent.activity["summary"] == "Usage digest"
    assert sent.attachments == [
        {"contentType": "application/vnd.microsoft.card.adaptive", "content": CARD}
    ]


async def test_429_is_retried_no_earlier_than_retry_after_and_delivered_once(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    connector.fail_next(2, Failure.throttled(0.4), conversation_id=CHANNEL)
    result = await make_sender(session, credentials, connector).post_card(target(connector), CARD)
    assert result.outcome is SendOutcome.SENT and result.attempts == 3
    assert [r.status for r in connector.requests] == [429, 429, 201]
    assert connector.retry_violations(tolerance=0.0) == []
    assert all(0.4 <= g < 0.4 * 1.1 + 0.2 for g in gaps(connector))  # Retry-After + ≤ 10 % jitter
    assert len(connector.activities) == 1


async def test_429_without_retry_after_backs_off_exponentially_with_jitter(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    connector.fail_next(3, Failure(429, None, {"error": {"code": "Throttled"}}))
    sender = make_sender(session, credentials, connector, backoff_base=0.1)
    result = await sender.post_card(target(connector), CARD)
    assert result.outcome is SendOutcome.SENT and result.attempts == 4
    # Attempt n waits between half and all of 0.1·2^(n−1) seconds.
    for n, gap in enumerate(gaps(connector), start=1):
        ceiling = 0.1 * 2 ** (n - 1)
        assert ceiling / 2 <= gap < ceiling + 0.15, (n, gap)
    assert len(connector.activities) == 1


async def test_server_errors_are_retried_a_bounded_number_of_times(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    sender = make_sender(session, credentials, connector, backoff_base=0.02, max_server_errors=3)
    connector.fail_next(2, Failure.server_error(502))
    assert (await sender.post_card(target(connector), CARD)).outcome is SendOutcome.SENT
    assert [r.status for r in connector.requests] == [502, 502, 201]

    connector.clear_records()
    connector.add_policy(lambda call: Failure.server_error(503))
    result = await sender.post_card(target(connector, "a:always-down"), CARD)
    assert result.outcome is SendOutcome.FAILED
    assert result.attempts == 4 and [r.status for r in connector.requests] == [503] * 4
    assert result.error is not None and result.error.startswith("HTTP 503")

    connector.clear_failures()
    connector.clear_records()
    connector.fail_next(1, Failure(400, None, {"error": {"code": "BadArgument", "message": "x"}}))
    final = await sender.post_card(target(connector), CARD)
    assert final.outcome is SendOutcome.FAILED and final.attempts == 1  # 4xx: not retried
    assert final.error == "HTTP 400 BadArgument: x"


async def test_server_error_retry_after_is_respected(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    connector.fail_next(1, Failure.server_error(503, retry_after=0.5))
    sender = make_sender(session, credentials, connector, backoff_base=0.01)
    assert (await sender.post_card(target(connector), CARD)).outcome is SendOutcome.SENT
    assert connector.retry_violations(tolerance=0.0) == []
    assert gaps(connector)[0] >= 0.5


@pytest.mark.usefixtures("database")
async def test_403_marks_the_conversation_inactive_and_is_not_retried(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    reference = {"conversation": {"id": CHANNEL}, "serviceUrl": connector.service_url}
    await conversations.remember(reference, TENANT, connector.service_url)
    connector.remove_bot(CHANNEL)
    result = await make_sender(session, credentials, connector).post_card(target(connector), CARD)
    assert result.outcome is SendOutcome.REMOVED and result.attempts == 1
    assert (
        result.error
        == "HTTP 403 BotNotInConversationRoster: The bot is not part of the conversation roster."
    )
    assert [r.status for r in connector.requests] == [403]
    assert (await ConversationRef.get(conversation_id=CHANNEL)).active is False


async def test_untrusted_service_urls_get_nothing_not_even_a_token_request(
    session: aiohttp.ClientSession,
    credentials: ClientCredentials,
    connector: FakeBotConnector,
    idp: FakeIdentityProvider,
) -> None:
    sender = make_sender(session, credentials, connector)
    tokens_before = idp.token_request_count
    for url in (
        "https://smba.trafficmanager.net.attacker.example/amer/",
        f"{connector.base_url}/other/",  # right host, outside the trusted path
        connector.service_url.replace("http://", "https://"),  # another scheme
    ):
        result = await sender.post_card(Target(CHANNEL, url, TENANT), CARD)
        assert result.outcome is SendOutcome.REFUSED and result.attempts == 0
    assert connector.requests == []
    assert idp.token_request_count == tokens_before


async def test_rate_limits_hold_per_conversation_and_per_tenant(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    # Smaller windows than Teams' so the test is quick; the mechanism is the same.
    limiter = RateLimiter(per_conversation=(Window(3, 0.5),), per_tenant=(Window(5, 0.5),))
    sender = make_sender(session, credentials, connector, limiter=limiter)
    await credentials.connector_token()  # the token is cached before timing starts
    sends = [
        (
            Target(f"a:conv-{i % 2}", connector.service_url, TENANT),
            {"type": "message", "text": f"m{i}"},
        )
        for i in range(10)
    ]
    sends += [
        (
            Target("a:other-tenant", connector.service_url, "t-2"),
            {"type": "message", "text": f"o{i}"},
        )
        for i in range(3)
    ]
    results = await sender.post_many(sends, concurrency=13)
    assert all(r.outcome is SendOutcome.SENT for r in results)
    records = [(r.at, r.path, r.json["text"]) for r in connector.requests]
    slack = 0.05  # arrival times are measured at the fake, a little after the send

    def most_in_any_window(times: list[float]) -> int:
        return max(sum(1 for t in times if s <= t < s + 0.5 - slack) for s in times)

    for conv in ("a:conv-0", "a:conv-1"):
        times = [at for at, path, _ in records if conv in path]
        assert len(times) == 5 and most_in_any_window(times) <= 3
    tenant_times = [at for at, _, text in records if text.startswith("m")]
    assert most_in_any_window(tenant_times) <= 5
    # The other tenant was not held up by the first one's limit.
    other = [at for at, _, text in records if text.startswith("o")]
    assert max(other) - min(at for at, _, _ in records) < 0.4


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.25") == 0.25
    assert (
        retry_after_seconds(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7
    )
    assert (
        retry_after_seconds(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0
    )
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") == 0.0


async def test_a_retry_after_too_long_gives_up_rather_than_waiting(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    def policy(call: ConnectorCall) -> Failure | None:
        return Failure.throttled(5.0)

    connector.add_policy(policy)
    sender = make_sender(session, credentials, connector, give_up_after=2.0)
    result = await sender.post_card(target(connector), CARD)
    assert result.outcome is SendOutcome.FAILED and result.attempts == 1
    assert result.error is not None and "gave up" in result.error
