"""Proactive posts: an Adaptive Card to a stored conversation, through the Bot Connector REST API.

    POST {serviceUrl}/v3/conversations/{conversationId}/activities   (Authorization: Bearer …)

Teams limits what a bot may send ("Optimize your bot with rate limiting", Microsoft Learn):
per bot per conversation 7 messages a second, 8 in 2 s, 60 in 30 s, 1800 an hour; 50 requests
a second per app per tenant. Going over is answered HTTP 429. So:

- `RateLimiter` keeps every conversation and every tenant inside those sliding windows before a
  request leaves (the windows are parameters; the defaults are the documented figures);
- a 429 is retried no earlier than its `Retry-After` (seconds or an HTTP date) plus up to 10 %
  jitter, and the conversation is held until then; without `Retry-After`, exponential backoff
  with jitter; at most `max_throttled` times;
- 412, 500, 502, 503, 504 and connection failures are retried with backoff (and `Retry-After`
  when given), at most `max_server_errors` times;
- 403 means the bot was removed from the conversation or blocked: the conversation is marked
  inactive (digests skip it) and nothing is retried; other 4xx are final too;
- a send gives up once retrying would take it past `give_up_after` seconds in all;
- nothing is sent, and no token is asked for, unless the service URL is trusted
  (FUSION_TRUSTED_SERVICE_URLS); redirects are not followed, so the token goes nowhere else.

The limits are counted per process: digests are posted by the one scheduler leader, so that is
where the volume is; replies to typed commands go through the edge's connector, not here.

Each send is one request after another, never two copies of the same activity in flight. A
request that timed out may still have been delivered (HTTP gives no way to know); it is
retried like a 5xx, which is the one case where a copy can appear twice.
"""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp
from yarl import URL

from bot.domain import conversations
from bot.domain.models import ConversationRef
from bot.teams.render import attachment

log = logging.getLogger("bot.teams.proactive")

# The bot's Bot Connector token (None: local development mode, where nothing is signed).
TokenSource = Callable[[], Awaitable[str]]
RETRYABLE = frozenset({412, 500, 502, 503, 504})
MAX_RETRY_AFTER = 600.0  # a longer Retry-After gives up instead of holding a digest for ages


class Window(NamedTuple):
    limit: int
    seconds: float


PER_CONVERSATION = (Window(7, 1), Window(8, 2), Window(60, 30), Window(1800, 3600))
PER_TENANT = (Window(50, 1),)


class RateLimiter:
    """Sliding-window limits per conversation and per tenant; a 429 holds a conversation."""

    def __init__(
        self,
        per_conversation: Iterable[Window] = PER_CONVERSATION,
        per_tenant: Iterable[Window] = PER_TENANT,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._windows = {"c": tuple(per_conversation), "t": tuple(per_tenant)}
        self._clock = clock
        self._sent: dict[tuple[str, str], list[float]] = {}
        self._held: dict[str, float] = {}
        self._calls = 0

    def _wait(self, key: tuple[str, str], now: float) -> float:
        history = self._sent.get(key)
        if not history:
            return 0.0
        wait = 0.0
        for limit, seconds in self._windows[key[0]]:
            start = bisect.bisect_right(history, now - seconds)
            inside = len(history) - start
            if inside >= limit:
                # Free again when the oldest of the last `limit` sends leaves the window.
                wait = max(wait, history[len(history) - limit] + seconds - now)
        return wait

    def delay(self, conversation_id: str, tenant_id: str | None) -> float:
        """Seconds until one more send to this conversation and tenant is allowed."""
        now = self._clock()
        keys = (("c", conversation_id), ("t", tenant_id or "-"))
        return max(
            self._held.get(conversation_id, 0.0) - now, *(self._wait(k, now) for k in keys), 0.0
        )

    async def acquire(self, conversation_id: str, tenant_id: str | None) -> float:
        """Wait until a send is allowed, then count it. Returns the seconds waited."""
        waited = 0.0
        while True:
            delay = self.delay(conversation_id, tenant_id)
            if delay <= 0:
                break
            await asyncio.sleep(delay)
            waited += delay
        now = self._clock()
        for key in (("c", conversation_id), ("t", tenant_id or "-")):
            self._sent.setdefault(key, []).append(now)
        self._calls += 1
        if self._calls % 1000 == 0:
            self._trim(now)
        return waited

    def hold(self, conversation_id: str, seconds: float) -> None:
        """Send nothing more to this conversation for `seconds` (it answered 429)."""
        until = self._clock() + seconds
        self._held[conversation_id] = max(self._held.get(conversation_id, 0.0), until)

    def _trim(self, now: float) -> None:
        for key in list(self._sent):
            longest = max(w.seconds for w in self._windows[key[0]])
            history = self._sent[key]
            del history[: bisect.bisect_right(history, now - longest)]
            if not history:
                del self._sent[key]
        for cid, until in list(self._held.items()):
            if until <= now:
                del self._held[cid]


class SendOutcome(StrEnum):
    SENT = "sent"
    REMOVED = "removed"  # 403: the bot is no longer in the conversation (or is blocked)
    FAILED = "failed"  # retries used up, or a final error
    REFUSED = "refused"  # the service URL is not trusted: nothing was sent


@dataclass(frozen=True)
class Target:
    """Where a proactive post goes."""

    conversation_id: str
    service_url: str
    tenant_id: str | None = None

    @classmethod
    def of(cls, ref: ConversationRef) -> Target:
        return cls(ref.conversation_id, ref.service_url, ref.tenant_id)


@dataclass
class SendResult:
    outcome: SendOutcome
    attempts: int = 0
    activity_id: str | None = None
    status: int | None = None
    error: str | None = None
    waited: float = 0.0  # seconds spent waiting for rate limits and retries


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A `Retry-After` header (delta seconds or an HTTP date) in seconds; None if absent/garbled."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def activities_url(service_url: str, conversation_id: str) -> URL:
    base = service_url if service_url.endswith("/") else service_url + "/"
    return URL(f"{base}v3/conversations/{quote(conversation_id, safe='')}/activities", encoded=True)


def card_activity(card: Mapping[str, Any], summary: str | None = None) -> dict[str, Any]:
    activity: dict[str, Any] = {"type": "message", "attachments": [attachment(card)]}
    if summary:
        activity["summary"] = summary[:200]
    return activity


class ProactiveSender:
    """Posts activities to stored conversations, within Teams' limits (see the module docstring)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        token: TokenSource | None,
        is_trusted: Callable[[str], bool],
        limiter: RateLimiter | None = None,
        max_throttled: int = 8,
        max_server_errors: int = 3,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        request_timeout: float = 30.0,
        give_up_after: float = 300.0,
        on_removed: Callable[[str], Awaitable[Any]] | None = conversations.mark_inactive,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._token = token
        self._is_trusted = is_trusted
        self.limiter = limiter or RateLimiter()
        self._max_throttled = max_throttled
        self._max_server_errors = max_server_errors
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._give_up_after = give_up_after
        self._on_removed = on_removed
        self._rng = rng or random.Random()

    def _backoff(self, n: int) -> float:
        """Exponential backoff with jitter: between half and all of base·2^(n−1), capped."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (n - 1))
        return ceiling / 2 + self._rng.random() * ceiling / 2

    async def post_card(
        self, target: Target, card: Mapping[str, Any], summary: str | None = None
    ) -> SendResult:
        return await self.post(target, card_activity(card, summary))

    async def update_card(
        self, target: Target, activity_id: str, card: Mapping[str, Any], summary: str | None = None
    ) -> SendResult:
        """Replace a posted card in place (PUT …/activities/{id}), within the same limits."""
        return await self.post(target, card_activity(card, summary), replace=activity_id)

    async def post(
        self, target: Target, activity: Mapping[str, Any], *, replace: str | None = None
    ) -> SendResult:
        """Send one activity (or, with `replace`, update that posted activity); retried as the
        module docstring says; never raises for HTTP."""
        if not self._is_trusted(target.service_url):
            log.warning(
                "proactive send refused: untrusted service URL",
                extra={
                    "conversation_id": target.conversation_id,
                    "service_url": target.service_url,
                },
            )
            return SendResult(SendOutcome.REFUSED, error="the service URL is not trusted")
        url = activities_url(target.service_url, target.conversation_id)
        if replace is not None:
            url = URL(f"{url}/{quote(replace, safe='')}", encoded=True)
        body = json.dumps(activity, separators=(",", ":")).encode()
        result = SendResult(SendOutcome.FAILED)
        throttled = server_errors = 0
        started = time.monotonic()
        while True:
            result.waited += await self.limiter.acquire(target.conversation_id, target.tenant_id)
            headers = {"Content-Type": "application/json; charset=utf-8"}
            if self._token is not None:
                try:
                    headers["Authorization"] = f"Bearer {await self._token()}"
                except Exception as exc:  # noqa: BLE001 - any token failure ends this send
                    result.error = f"no token for the Bot Connector: {exc}"
                    return result
            result.attempts += 1
            retry_after: float | None = None
            try:
                async with self._session.request(
                    "PUT" if replace is not None else "POST",
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                ) as resp:
                    result.status = resp.status
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    text = await resp.text(errors="replace")
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.status, text = None, ""
                result.error = f"{type(exc).__name__}: {exc}"[:500]
            status = result.status
            if status is not None and 200 <= status < 300:
                result.outcome, result.error = SendOutcome.SENT, None
                result.activity_id = _activity_id(text)
                return result
            if status == 403:
                result.outcome, result.error = SendOutcome.REMOVED, _error_text(status, text)
                log.info(
                    "bot removed or blocked: conversation marked inactive",
                    extra={"conversation_id": target.conversation_id},
                )
                if self._on_removed is not None:
                    await self._on_removed(target.conversation_id)
                return result
            if status == 429:
                throttled += 1
                result.error = _error_text(status, text)
                if throttled > self._max_throttled or (retry_after or 0) > MAX_RETRY_AFTER:
                    return result
                if retry_after is not None:
                    delay = retry_after * (1 + 0.1 * self._rng.random())
                else:
                    delay = self._backoff(throttled)
                self.limiter.hold(target.conversation_id, delay)
            elif status is None or status in RETRYABLE:
                server_errors += 1
                if status is not None:
                    result.error = _error_text(status, text)
                if server_errors > self._max_server_errors or (retry_after or 0) > MAX_RETRY_AFTER:
                    return result
                delay = max(retry_after or 0.0, self._backoff(server_errors))
            else:
                result.error = _error_text(status, text)
                return result
            if time.monotonic() - started + delay > self._give_up_after:
                result.error = f"{result.error}; gave up after {result.attempts} attempts"
                return result
            result.waited += await _sleep_at_least(delay)

    async def post_many(
        self, sends: Iterable[tuple[Target, Mapping[str, Any]]], *, concurrency: int = 16
    ) -> list[SendResult]:
        """Post several activities at once (each within the limits); results in order."""
        gate = asyncio.Semaphore(concurrency)

        async def one(target: Target, activity: Mapping[str, Any]) -> SendResult:
            async with gate:
                return await self.post(target, activity)

        return list(await asyncio.gather(*(one(t, a) for t, a in sends)))


async def _sleep_at_least(delay: float) -> float:
    """Sleep `delay` seconds by the monotonic clock (an event loop may wake a hair early)."""
    deadline = time.monotonic() + delay
    await asyncio.sleep(delay)
    left = deadline - time.monotonic()
    if left > 0:
        await asyncio.sleep(left + 0.001)
    return delay


def _activity_id(text: str) -> str | None:
    try:
        body = json.loads(text) if text else None
    except ValueError:
        return None
    found = body.get("id") if isinstance(body, dict) else None
    return str(found)[:255] if found else None


def _error_text(status: int | None, text: str) -> str:
    code = ""
    try:
        body = json.loads(text) if text else None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = f" {error.get('code') or ''}: {error.get('message') or ''}".rstrip(": ")
    except ValueError:
        pass
    return f"HTTP {status}{code}"[:500]
