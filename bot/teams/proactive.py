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

The limits are counted per process, and every send of the process is counted: the app makes
one `ProactiveSender`, and the edge's connector clients use it as their transport, so a turn's
replies and card updates, approval copies, and the scheduler's digests all pass the one
limiter. A send made inside a turn (its reply) is retried only within the turn's time budget
(`TURN`, set by the edge): Teams redelivers an activity that got no answer in 15 s. The windows
are this process's own count, so a send waits for them at most until its deadline and then
goes (Teams' answer decides); a hold Teams asked for (429 Retry-After) that ends after the
deadline is not waited for, and nothing is sent.

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
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from bot import metrics
from bot.domain import conversations
from bot.domain.models import ConversationRef
from bot.teams.render import attachment

log = logging.getLogger("bot.teams.proactive")

# The bot's Bot Connector token (None: local development mode, where nothing is signed).
TokenSource = Callable[[], Awaitable[str]]
RETRYABLE = frozenset({412, 500, 502, 503, 504})
MAX_RETRY_AFTER = 600.0  # a longer Retry-After gives up instead of holding a digest for ages
TURN_GRACE = 1.0  # seconds a send may wait for the limiter even after its turn's deadline


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

    @staticmethod
    def _keys(conversation_id: str | None, tenant_id: str | None) -> tuple[tuple[str, str], ...]:
        # A request that addresses no conversation (creating one) counts for its tenant only.
        tenant = ("t", tenant_id or "-")
        return (("c", conversation_id), tenant) if conversation_id else (tenant,)

    def delay(self, conversation_id: str | None, tenant_id: str | None) -> float:
        """Seconds until one more send to this conversation and tenant is allowed."""
        now = self._clock()
        held = self._held.get(conversation_id, 0.0) - now if conversation_id else 0.0
        return max(held, *(self._wait(k, now) for k in self._keys(conversation_id, tenant_id)), 0.0)

    def held(self, conversation_id: str | None) -> float:
        """Seconds left of the hold a 429 put on this conversation (0: none)."""
        if not conversation_id:
            return 0.0
        return max(self._held.get(conversation_id, 0.0) - self._clock(), 0.0)

    async def acquire(
        self, conversation_id: str | None, tenant_id: str | None, *, at_most: float | None = None
    ) -> float:
        """Wait until a send is allowed (or `at_most` seconds), then count it. Returns the
        seconds waited."""
        waited = 0.0
        while True:
            delay = self.delay(conversation_id, tenant_id)
            if at_most is not None:
                delay = min(delay, at_most - waited)
            if delay <= 0:
                break
            await asyncio.sleep(delay)
            waited += delay
        now = self._clock()
        for key in self._keys(conversation_id, tenant_id):
            if self._windows[key[0]]:
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
            longest = max((w.seconds for w in self._windows[key[0]]), default=0.0)
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
    # The last answer as it came (what a connector client deserializes).
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)


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


def activities_url(target: Target) -> URL:
    base = target.service_url if target.service_url.endswith("/") else target.service_url + "/"
    cid = quote(target.conversation_id, safe="")
    return URL(f"{base}v3/conversations/{cid}/activities", encoded=True)


def card_activity(card: Mapping[str, Any], summary: str | None = None) -> dict[str, Any]:
    activity: dict[str, Any] = {"type": "message", "attachments": [attachment(card)]}
    if summary:
        activity["summary"] = summary[:200]
    return activity


@dataclass(frozen=True)
class TurnBudget:
    """What the turn being served allows its own sends (its replies)."""

    tenant_id: str | None
    deadline: float  # time.monotonic() by which the turn must have answered


#: Set by the edge while it serves a turn: a send made inside it (a reply, a card update) is
#: counted against the turn's tenant and retried only until the turn's deadline.
TURN: ContextVar[TurnBudget | None] = ContextVar("turn_budget", default=None)


def conversation_of(url: str) -> str | None:
    """The conversation a Bot Connector request addresses (`…/v3/conversations/{id}/…`)."""
    parts = URL(url, encoded=True).raw_parts
    for i, part in enumerate(parts[:-1]):
        if part == "conversations" and i > 0 and parts[i - 1] == "v3":
            return unquote(parts[i + 1]) or None
    return None


class ProactiveSender:
    """Every request this process makes to the Bot Connector: proactive posts, card updates,
    and (as the transport under the adapter's connector clients) the replies of turns. One per
    process, so one `RateLimiter` sees every send (see the module docstring).

    The doors other modules use: `post(target, activity)` / `post_card(target, card)` send to
    a conversation, `update(target, activity_id, activity)` / `update_card(...)` replace an
    activity the bot posted; `exchange(...)` is the raw request the connector clients use.
    None raises for an HTTP failure: the `SendResult` says what happened.
    """

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

    async def post(self, target: Target, activity: Mapping[str, Any]) -> SendResult:
        """Send one activity to the conversation; retried as the module docstring says."""
        return await self._send("POST", target, activities_url(target), activity)

    async def update_card(
        self, target: Target, activity_id: str, card: Mapping[str, Any], summary: str | None = None
    ) -> SendResult:
        return await self.update(target, activity_id, card_activity(card, summary))

    async def update(
        self, target: Target, activity_id: str, activity: Mapping[str, Any]
    ) -> SendResult:
        """Replace the activity `activity_id` the bot posted in the conversation (a card
        updated for everyone who sees it)."""
        url = activities_url(target) / activity_id
        return await self._send("PUT", target, url, {**activity, "id": activity_id})

    async def _send(
        self, method: str, target: Target, url: URL, activity: Mapping[str, Any]
    ) -> SendResult:
        if not self._is_trusted(target.service_url):
            return self._refused(str(url), target.conversation_id)
        body = json.dumps(activity, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        result = await self.exchange(method, url, body, headers, target.tenant_id)
        if result.outcome is SendOutcome.SENT:
            result.activity_id = _activity_id(result.body)
        return result

    def _refused(self, url: str, conversation_id: str | None) -> SendResult:
        log.warning(
            "send refused: untrusted service URL",
            extra={"conversation_id": conversation_id, "url": url},
        )
        return SendResult(SendOutcome.REFUSED, error="the service URL is not trusted")

    async def exchange(
        self,
        method: str,
        url: URL | str,
        body: bytes | None,
        headers: Mapping[str, str],
        tenant_id: str | None = None,
    ) -> SendResult:
        """One request to the Bot Connector, within the limits and retried as the module
        docstring says; the answer's status, headers and body are in the result.

        Inside a turn (`TURN` set by the edge) the turn's tenant is counted and retries end
        at the turn's deadline; elsewhere they end after `give_up_after` seconds.
        """
        where = url if isinstance(url, URL) else URL(url, encoded=True)
        conversation_id = conversation_of(str(where))
        if not self._is_trusted(str(where)):
            return self._refused(str(where), conversation_id)
        turn = TURN.get()
        tenant = tenant_id or (turn.tenant_id if turn else None)
        started = time.monotonic()
        deadline = started + self._give_up_after
        if turn is not None:
            # A turn that has used its budget (a long bulk operation) may still wait a moment
            # for a rate window; only retries and long holds are cut short.
            deadline = min(deadline, max(turn.deadline, started + TURN_GRACE))
        result = SendResult(SendOutcome.FAILED)
        throttled = server_errors = 0
        while True:
            # Teams said how long to wait (a 429's Retry-After): past the deadline, give up.
            held = self.limiter.held(conversation_id)
            if held > 0 and time.monotonic() + held > deadline:
                result.error = (
                    f"{result.error + '; ' if result.error else ''}Teams asked for {held:.1f} s "
                    "more before the next send to this conversation, past the time this send "
                    "may take"
                )
                return result
            # The windows are this process's own count of Teams' limits: a send waits for them
            # up to its deadline, then goes (and Teams' answer decides).
            left = max(deadline - time.monotonic(), 0.0)
            result.waited += await self.limiter.acquire(conversation_id, tenant, at_most=left)
            sending = dict(headers)
            sending.pop("Authorization", None)
            if self._token is not None:
                try:
                    sending["Authorization"] = f"Bearer {await self._token()}"
                except Exception as exc:  # noqa: BLE001 - any token failure ends this send
                    result.error = f"no token for the Bot Connector: {exc}"
                    return result
            result.attempts += 1
            retry_after: float | None = None
            try:
                async with self._session.request(
                    method,
                    where,
                    data=body,
                    headers=sending,
                    # A redirect could carry the bot's token to another host.
                    allow_redirects=False,
                    timeout=self._timeout,
                ) as resp:
                    result.status = resp.status
                    result.headers = dict(resp.headers)
                    metrics.connector_answered(resp.status)
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    result.body = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.status, result.body, result.headers = None, b"", {}
                result.error = f"{type(exc).__name__}: {exc}"[:500]
            status = result.status
            if status is not None and 200 <= status < 300:
                result.outcome, result.error = SendOutcome.SENT, None
                result.body = _resource_answer(result.body, str(where))
                return result
            text = result.body.decode("utf-8", "replace")
            if status == 403:
                result.outcome, result.error = SendOutcome.REMOVED, _error_text(status, text)
                log.info(
                    "bot removed or blocked: conversation marked inactive",
                    extra={"conversation_id": conversation_id},
                )
                if self._on_removed is not None and conversation_id:
                    await self._on_removed(conversation_id)
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
                if conversation_id:
                    self.limiter.hold(conversation_id, delay)
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
            if time.monotonic() + delay > deadline:
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


class ResourceAnswer(BaseModel):
    """What the Bot Connector answers a send or an update with (ResourceResponse; a new
    conversation's answer has more fields)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str | None = Field(default=None, max_length=255)


def _resource_answer(body: bytes, url: str) -> bytes:
    """The answer to a send that went through, checked before anything reads it. A malformed
    one (not JSON, not an object, an id that is not text) is logged and read as an answer
    without an id: the activity was delivered (2xx), so nothing is sent again and the turn
    goes on; only a later update of that activity is not possible."""
    if not body.strip():
        return b"{}"
    try:
        ResourceAnswer.model_validate_json(body)
    except (ValidationError, RecursionError):
        log.warning("the Bot Connector's answer is malformed; read as one without an id: %s", url)
        return b"{}"
    return body


def _activity_id(text: bytes) -> str | None:
    found = ResourceAnswer.model_validate_json(text or b"{}").id
    return found or None


def _error_text(status: int | None, text: str) -> str:
    code = ""
    try:
        body = json.loads(text) if text else None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = f" {error.get('code') or ''}: {error.get('message') or ''}".rstrip(": ")
    except (ValueError, RecursionError):
        pass
    return f"HTTP {status}{code}"[:500]
