"""Microsoft Graph v1.0 Teams number management, in a customer's tenant, one request per call.

    POST {graph}/admin/teams/telephoneNumberManagement/numberAssignments/assignNumber
         {telephoneNumber, assignmentTargetId, numberType, assignmentCategory, locationId}
    POST .../numberAssignments/unassignNumber   {telephoneNumber, numberType}
         → 202 Accepted, Location: .../telephoneNumberManagement/operations('ID')
    GET  .../operations('ID')   → {status: notStarted|running|succeeded|failed, numbers: [
                                    {resourceLocation, status, statusDetail}]}
    GET  .../numberAssignments?$filter=telephoneNumber eq '+E164'
                                → {value: [{telephoneNumber, assignmentTargetId,
                                            activationState, assignmentStatus, …}]}
    GET  {graph}/users/{upn}?$select=id   (User.Read.All: the object id when the sync has none)

Nothing here sleeps or retries: a call answers, or raises `Retryable` (429 with its
Retry-After, 5xx, no connection, timeout) or `Refused` (the request will not work as it is).
The worker decides when to try again, so throttling holds a job, not a connection. Every
answer is checked before use; a `Location` outside the configured Graph URL is refused, so the
tenant's token goes nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bot.provisioning.tokens import TenantTokens, TokenError

log = logging.getLogger("bot.provisioning.teams_numbers")

ROOT = "/admin/teams/telephoneNumberManagement"
OPERATION_STATES = frozenset({"notStarted", "running", "succeeded", "failed", "skipped"})
ACTIVATION_STATES = frozenset(
    {"activated", "assignmentPending", "assignmentFailed", "updatePending", "updateFailed"}
)
MAX_RETRY_AFTER = 600.0


class GraphTrouble(Exception):
    def __init__(self, message: str, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Retryable(GraphTrouble):
    """Try the same request later: after `retry_after` seconds when Graph said so."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status, code)
        self.retry_after = retry_after
        self.throttled = status == 429


class Refused(GraphTrouble):
    """The request cannot work as it is (validation, permission, consent, unknown user)."""


@dataclass(frozen=True)
class Operation:
    status: str
    detail: str


@dataclass(frozen=True)
class Assignment:
    telephone_number: str
    target_id: str | None
    activation_state: str | None
    assignment_status: str | None


class TenantPace:
    """At most `per_second` requests a second to one tenant from this process (a sliding
    window): requests wait here rather than spend Graph's limit on 429s. The window is a little
    longer than a second: Graph counts arrivals, and network delays bunch them up."""

    def __init__(self, per_second: int, window: float = 1.1) -> None:
        self.per_second = per_second
        self.window = window
        self._sent: dict[str, deque[float]] = {}
        self.waited = 0.0

    async def acquire(self, tenant: str) -> None:
        sent = self._sent.setdefault(tenant, deque())
        while True:
            now = time.monotonic()
            while sent and sent[0] <= now - self.window:
                sent.popleft()
            if len(sent) < self.per_second:
                sent.append(now)
                return
            wait = sent[0] + self.window - now
            self.waited += wait
            await asyncio.sleep(wait)


class TeamsNumbers:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        graph_url: str,
        tokens: TenantTokens,
        *,
        request_timeout: float = 30.0,
        pace: TenantPace | None = None,
    ) -> None:
        self._session = session
        self._base = graph_url.rstrip("/")
        base = urlsplit(self._base)
        self._origin = (base.scheme.lower(), base.netloc.lower())
        self._base_path = base.path.rstrip("/") + "/"
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._pace = pace
        self.calls = 0  # HTTP requests sent to Graph

    # -- the calls ---------------------------------------------------------------------------

    async def assign(
        self,
        tenant: str,
        e164: str,
        object_id: str,
        number_type: str,
        location_id: str | None,
    ) -> str | None:
        """Start assigning; the URL of the operation to poll (None: Graph took the request but
        named no operation that can be followed — the number's state tells the outcome)."""
        body: dict[str, Any] = {
            "telephoneNumber": e164,
            "assignmentTargetId": object_id,
            "numberType": number_type,
            "assignmentCategory": "primary",
        }
        if location_id:
            body["locationId"] = location_id
        return await self._start(tenant, "assignNumber", body)

    async def unassign(self, tenant: str, e164: str, number_type: str) -> str | None:
        return await self._start(
            tenant, "unassignNumber", {"telephoneNumber": e164, "numberType": number_type}
        )

    async def operation(self, tenant: str, url: str) -> Operation | None:
        """The operation's state; None if Graph no longer knows it (404)."""
        status, body, _ = await self._call(tenant, "GET", self._checked(url), none_on_404=True)
        if status == 404:
            return None
        # The documented example wraps the operation in "value"; the resource type does not.
        wrapped = body.get("value")
        item: dict[str, Any] = wrapped if isinstance(wrapped, dict) else body
        state = item.get("status")
        if state not in OPERATION_STATES:
            raise Retryable(f"Microsoft Graph answered an operation of unknown status {state!r}.")
        details = [n for n in item.get("numbers") or [] if isinstance(n, dict)]
        detail = " ".join(
            str(n.get("statusDetail")) for n in details if isinstance(n.get("statusDetail"), str)
        )
        if state in ("notStarted", "running"):
            # One number per operation: its own status may already be final.
            for number in details:
                if number.get("status") in ("succeeded", "failed"):
                    state = str(number["status"])
        return Operation(str(state), detail.strip()[:500])

    async def assignment(self, tenant: str, e164: str) -> Assignment | None:
        """How the tenant holds the number now; None if it has no record of it."""
        query = quote(f"telephoneNumber eq '{e164}'", safe="")
        _, body, _ = await self._call(
            tenant, "GET", f"{self._base}{ROOT}/numberAssignments?$filter={query}"
        )
        value = body.get("value")
        items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
        for item in items:
            if not isinstance(item, dict) or _plus(item.get("telephoneNumber")) != e164:
                continue
            target = item.get("assignmentTargetId")
            state = item.get("activationState")
            status = item.get("assignmentStatus")
            return Assignment(
                e164,
                target if isinstance(target, str) and target else None,
                state if isinstance(state, str) else None,
                status if isinstance(status, str) else None,
            )
        return None

    async def user_id(self, tenant: str, upn: str) -> str:
        """The Entra object id of a user in the tenant, by UPN."""
        _, body, _ = await self._call(
            tenant, "GET", f"{self._base}/users/{quote(upn, safe='@')}?$select=id"
        )
        found = body.get("id")
        if not isinstance(found, str) or not found:
            raise Refused(f"Microsoft Graph answered no object id for {upn}.")
        return found

    # -- plumbing ----------------------------------------------------------------------------

    async def _start(self, tenant: str, action: str, body: dict[str, Any]) -> str | None:
        status, _, location = await self._call(
            tenant, "POST", f"{self._base}{ROOT}/numberAssignments/{action}", body
        )
        if not location:
            log.warning("Graph took %s (HTTP %s) without an operation to follow", action, status)
            return None
        try:
            return self._checked(location)
        except Refused as exc:
            log.warning("%s: %s", action, exc.message)
            return None

    def _checked(self, url: str) -> str:
        parts = urlsplit(url)
        if (parts.scheme.lower(), parts.netloc.lower()) != self._origin or not (
            parts.path + "/"
        ).startswith(self._base_path + ROOT.lstrip("/") + "/"):
            raise Refused(
                "Microsoft Graph pointed at an operation outside the configured Graph URL "
                f"({parts.scheme}://{parts.netloc}); it is not followed."
            )
        return url

    async def _call(
        self,
        tenant: str,
        method: str,
        url: str,
        body: Any = None,
        *,
        none_on_404: bool = False,
    ) -> tuple[int, dict[str, Any], str | None]:
        try:
            token = await self._tokens.token(tenant)
        except TokenError as exc:
            if exc.retryable:
                raise Retryable(exc.message) from exc
            raise Refused(exc.message, code="consent" if exc.consent_url else "token") from exc
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if self._pace is not None:
            await self._pace.acquire(tenant)
        self.calls += 1
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
                location = resp.headers.get("Location")
                retry_after = _seconds(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Retryable(
                f"Microsoft Graph could not be reached ({type(exc).__name__}: {exc})"[:300]
            ) from exc
        if 200 <= status < 300:
            return status, _document(text, status), location
        code, message = _error(text)
        detail = (
            f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        )
        if status == 429 or status >= 500:
            said = "is throttling the bot" if status == 429 else "is failing"
            raise Retryable(f"Microsoft Graph {said} ({detail}).", status, code, retry_after)
        if status == 404 and none_on_404:
            return status, {}, None
        if status in (401, 403):
            raise Refused(
                f"Microsoft Graph refused the tenant's token ({detail}). The app needs the "
                "TeamsTelephoneNumber.ReadWrite.All and User.Read.All application permissions, "
                f"admin-consented in tenant {tenant}.",
                status,
                code,
            )
        raise Refused(f"Microsoft Graph refused the request ({detail}).", status, code)


def _plus(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value if value.startswith("+") else "+" + value


def _seconds(raw: str | None) -> float | None:
    try:
        value = float((raw or "").strip())
    except ValueError:
        return None
    if value != value or value < 0:
        return None
    return min(value, MAX_RETRY_AFTER)


def _document(text: str, status: int) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Retryable(
            f"Microsoft Graph answered something that is not JSON (HTTP {status})."
        ) from exc
    if not isinstance(data, dict):
        raise Retryable(f"Microsoft Graph answered an unexpected document (HTTP {status}).")
    return data


def _error(text: str) -> tuple[str, str]:
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return "", ""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return "", ""
    message = " ".join(str(err.get("message") or "").split())
    return str(err.get("code") or "")[:100], message[:300]
