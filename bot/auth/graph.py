"""A small Microsoft Graph client: app-only token, JSON, bounded retries, paging.

Only the calls the bot needs: `checkMemberGroups` (is this caller in these groups?) and a
group's transitive members (directory sync). It talks to the configured Graph URL and nowhere
else: a `@odata.nextLink` that points at another origin is refused before the bot's token
could go with it.

Every answer is validated against the shape the API documents (pydantic models below) before
it is used: a 200 whose body is not that (`"value": null`, a number, a string, not JSON) is
`GraphUnavailable` with the reason — the bot cannot know the answer, as in an outage, so the
caller fails closed and says why.

Throttling (429) and server errors (5xx, connection failures, timeouts) are retried, honouring
`Retry-After`, but only within `settings.graph_retry_seconds` per request: a caller waiting for
an answer in Teams gets a clear "try again" rather than a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot import metrics
from bot.auth.credentials import TokenAnswerMalformed
from bot.config import Settings

log = logging.getLogger("bot.auth.graph")

# An async callable that returns an app-only access token for a scope (e.g. msal client
# credentials run off the event loop).
TokenProvider = Callable[[str], Awaitable[str]]

MAX_CHECK_IDS = 20  # checkMemberGroups accepts at most 20 group ids per call
MAX_PAGE_SIZE = 999  # the largest $top Graph allows for directory objects
MAX_PAGES = 10_000  # a nextLink chain longer than this is a loop, not a directory
MEMBER_FIELDS = ("id", "userPrincipalName", "displayName")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_object_id(value: str) -> bool:
    """An Entra object id (a GUID); anything else never goes into a Graph URL."""
    return bool(_GUID.fullmatch(value or ""))


class GraphError(Exception):
    """Graph answered with an error (or not at all); `message` is fit to show an administrator."""

    def __init__(self, message: str, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class GraphUnavailable(GraphError):
    """Down, failing or throttling beyond the retry bound: the same request may work later."""


class GraphAuthError(GraphError):
    """No usable token, or the token lacks the permission: the bot's configuration is at fault."""


class GraphNotFound(GraphError):
    """The object named in the request does not exist in the directory."""


class _Answer(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class MemberGroups(_Answer):
    """`checkMemberGroups`: the ids of the given groups the object is a member of."""

    value: list[str]


class DirectoryObject(_Answer):
    id: str = Field(min_length=1)
    odata_type: str | None = Field(default=None, alias="@odata.type")
    userPrincipalName: str | None = None  # noqa: N815 - Graph's name
    displayName: str | None = None  # noqa: N815 - Graph's name


class DirectoryPage(_Answer):
    """One page of a directory-object collection (`transitiveMembers`)."""

    value: list[DirectoryObject]
    next_link: str | None = Field(default=None, alias="@odata.nextLink")


M = TypeVar("M", bound=_Answer)


def _validated(model: type[M], data: dict[str, Any], what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise GraphUnavailable(
            f"Microsoft Graph answered {what} with a document it does not document "
            f"({where}: {first['msg'].lower()})."
        ) from None


@dataclass(frozen=True)
class DirectoryEntry:
    """One transitive member of a group as Graph lists it."""

    id: str
    type: str  # "user", "group", "device", "servicePrincipal", "orgContact", …
    user_principal_name: str | None
    display_name: str | None


class GraphClient:
    """Microsoft Graph over a shared aiohttp session (created once by the app, closed by it)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        token_provider: TokenProvider,
        *,
        page_size: int = MAX_PAGE_SIZE,
        request_timeout: float = 30.0,
    ) -> None:
        self._session = session
        self._base = settings.graph_url.rstrip("/")
        base = urlsplit(self._base)
        self._origin = (base.scheme.lower(), base.netloc.lower())
        self._base_path = base.path.rstrip("/") + "/"
        self._scope = settings.graph_scope
        self._tokens = token_provider
        self._retry_seconds = max(0.0, float(settings.graph_retry_seconds))
        self._page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        self._request_timeout = request_timeout

    @property
    def base_url(self) -> str:
        return self._base

    # -- the calls ---------------------------------------------------------------------------

    async def check_member_groups(self, object_id: str, group_ids: list[str]) -> set[str]:
        """The ids among `group_ids` that `object_id` is a transitive member of (20 per call)."""
        if not is_object_id(object_id):
            raise GraphError(f"{object_id!r} is not an Entra object id.")
        found: set[str] = set()
        wanted = list(dict.fromkeys(group_ids))
        for start in range(0, len(wanted), MAX_CHECK_IDS):
            chunk = wanted[start : start + MAX_CHECK_IDS]
            body = await self.request(
                "POST", f"/users/{quote(object_id)}/checkMemberGroups", {"groupIds": chunk}
            )
            found.update(_validated(MemberGroups, body, "checkMemberGroups").value)
        by_lower = {g.lower(): g for g in wanted}
        return {by_lower[g.lower()] for g in found if g.lower() in by_lower}

    async def transitive_members(self, group_id: str) -> list[DirectoryEntry]:
        """Every transitive member of a group (users, nested groups, …), all pages."""
        if not is_object_id(group_id):
            raise GraphError(f"{group_id!r} is not an Entra group object id.")
        url: str | None = (
            f"{self._base}/groups/{quote(group_id)}/transitiveMembers"
            f"?$select={','.join(MEMBER_FIELDS)}&$top={self._page_size}"
        )
        entries: list[DirectoryEntry] = []
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise GraphError(
                    "Microsoft Graph's paging went round in circles; the listing was stopped."
                )
            seen.add(url)
            page = _validated(DirectoryPage, await self.request("GET", url), "transitiveMembers")
            entries.extend(_entry(item) for item in page.value)
            url = page.next_link or None
        return entries

    # -- plumbing ------------------------------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        """An absolute URL under the configured Graph base; anything else is refused."""
        if path_or_url.startswith("/"):
            return self._base + path_or_url
        parts = urlsplit(path_or_url)
        if (parts.scheme.lower(), parts.netloc.lower()) != self._origin or not (
            parts.path + "/"
        ).startswith(self._base_path):
            raise GraphError(
                "Microsoft Graph pointed the bot at an address outside the configured Graph URL "
                f"({parts.scheme}://{parts.netloc}); the bot does not follow it."
            )
        return path_or_url

    async def _token(self) -> str:
        try:
            token = await self._tokens(self._scope)
        except TokenAnswerMalformed as exc:
            log.warning("no Graph token: %s", exc)
            raise GraphUnavailable(
                f"The bot could not get its Microsoft Graph token ({_short(str(exc))})."
            ) from exc
        except Exception as exc:
            log.warning("no Graph token: %s", exc)
            raise GraphAuthError(
                f"The bot could not get its Microsoft Graph token ({_short(str(exc))})."
            ) from exc
        if not token:
            raise GraphAuthError("The bot could not get its Microsoft Graph token (empty token).")
        return token

    async def request(self, method: str, path_or_url: str, body: Any = None) -> dict[str, Any]:
        """One Graph call, retried on 429/5xx/connection failures within the retry bound."""
        url = self._url(path_or_url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_seconds
        attempt = 0
        while True:
            attempt += 1
            token = await self._token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            remaining = max(deadline - loop.time(), 0.0)
            timeout = aiohttp.ClientTimeout(total=max(min(self._request_timeout, remaining), 1.0))
            try:
                async with self._session.request(
                    method, url, json=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    metrics.graph_answered(resp.status)
                    if 200 <= resp.status < 300:
                        return await _json(resp)
                    code, message = await _error(resp)
                    if resp.status == 429 or resp.status >= 500:
                        wait = _retry_after(resp) or _backoff(attempt)
                        problem: GraphError = GraphUnavailable(
                            _unavailable_text(resp.status, code, _retry_after(resp)),
                            resp.status,
                            code,
                        )
                    else:
                        raise _refusal(resp.status, code, message)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                metrics.graph_answered(None)
                wait = _backoff(attempt)
                why = _short(str(exc)) or type(exc).__name__
                problem = GraphUnavailable(f"Microsoft Graph could not be reached ({why}).")
            if loop.time() + wait > deadline:
                log.warning(
                    "Graph %s %s gave up after %d attempt(s): %s", method, url, attempt, problem
                )
                raise problem
            await asyncio.sleep(wait)


def _entry(item: DirectoryObject) -> DirectoryEntry:
    kind = (item.odata_type or "").removeprefix("#microsoft.graph.") or "unknown"
    return DirectoryEntry(
        id=item.id,
        type=kind,
        user_principal_name=item.userPrincipalName,
        display_name=item.displayName,
    )


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    if resp.status == 204:
        return {}
    try:
        data = json.loads(await resp.read())
    except (ValueError, RecursionError):
        raise GraphUnavailable(
            "Microsoft Graph answered something that is not JSON.", resp.status
        ) from None
    if not isinstance(data, dict):
        raise GraphUnavailable(
            f"Microsoft Graph answered a {type(data).__name__} where it documents an object.",
            resp.status,
        )
    return data


async def _error(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    try:
        data = json.loads(await resp.read())
    except (ValueError, RecursionError, aiohttp.ClientError):
        return "", ""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return "", ""
    return str(err.get("code") or ""), _short(str(err.get("message") or ""))


def _refusal(status: int, code: str, message: str) -> GraphError:
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if status in (401, 403):
        return GraphAuthError(
            f"Microsoft Graph refused the bot's token ({detail}). The bot's app registration needs "
            "the GroupMember.Read.All application permission (admin-consented).",
            status,
            code,
        )
    if status == 404:
        return GraphNotFound(f"Microsoft Graph does not know that object ({detail}).", status, code)
    return GraphError(f"Microsoft Graph refused the request ({detail}).", status, code)


def _unavailable_text(status: int, code: str, retry_after: float | None) -> str:
    if status == 429:
        wait = f" (it asked to wait {retry_after:g} s)" if retry_after else ""
        return f"Microsoft Graph is throttling the bot{wait}."
    return f"Microsoft Graph is failing (HTTP {status}{' ' + code if code else ''})."


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    raw = resp.headers.get("Retry-After", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return None  # the HTTP-date form is not used by Graph
    return value if value >= 0 else None


def _backoff(attempt: int) -> float:
    # Jittered so that several bot instances do not retry in step.
    return min(0.25 * 2 ** (attempt - 1), 4.0) * random.uniform(0.5, 1.0)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
