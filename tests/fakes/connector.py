"""Fake Bot Connector service (the ``serviceUrl`` a Teams bot replies to)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from ._server import CLAIMS, INFO, Failure, ThreadedServer, error_body
from .identity import BOT_FRAMEWORK_ISSUER, FakeIdentityProvider
from .tls import TLSFiles

__all__ = ["ConnectorCall", "Failure", "FakeBotConnector", "SentActivity"]


@dataclass(frozen=True)
class ConnectorCall:
    """What a failure policy is shown about an authenticated request."""

    kind: str  # "send" | "reply" | "update" | "delete" | "create" | "members"
    method: str
    conversation_id: str | None
    activity_id: str | None
    body: Any
    attempt: int  # 1 for the first identical (method, path, body) request, 2 for its first retry...


Policy = Callable[[ConnectorCall], Failure | None]


@dataclass(frozen=True)
class SentActivity:
    """An activity the fake accepted."""

    kind: str  # "send" | "reply" | "update" | "create"
    conversation_id: str
    activity_id: str  # id assigned (send/reply/create) or addressed (update)
    reply_to_id: str | None  # the activity replied to (reply)
    activity: dict[str, Any]
    claims: dict[str, Any] | None  # verified bearer-token claims
    at: float  # time.monotonic()
    received_at: dt.datetime

    @property
    def text(self) -> str | None:
        return self.activity.get("text")

    @property
    def attachments(self) -> list[dict[str, Any]]:
        return list(self.activity.get("attachments") or [])


class FakeBotConnector(ThreadedServer):
    """Plain-http (or https) fake of the Bot Connector REST API under ``service_url``.

    Routes (below ``path_prefix``, default ``/amer/`` like Teams' ``https://smba.trafficmanager.net/amer/``):
    ``POST v3/conversations`` (create), ``POST v3/conversations/{cid}/activities`` (send),
    ``POST .../activities/{aid}`` (reply), ``PUT .../activities/{aid}`` (update),
    ``DELETE .../activities/{aid}``, ``GET v3/conversations/{cid}/members[/{id}]``; answers are
    ResourceResponse JSON (``{"id": ...}``).  Every request must carry a bearer token that
    ``identity.verify_access_token(token, audience)`` accepts (audience https://api.botframework.com;
    optionally issued to ``expected_app_id``), else 401.  ``activities`` lists what was accepted
    (``SentActivity``); ``wait_for(n)`` / ``await wait_for_async(n)`` block until n arrived;
    ``requests`` keeps every request with its status and arrival time.  Failures are scripted with
    ``fail_next``, ``fail_fraction``, ``remove_bot``, or any ``add_policy(callable)``;
    ``retry_violations()`` lists retries that came sooner than the Retry-After they were given.
    """

    def __init__(
        self,
        identity: FakeIdentityProvider | None,
        *,
        expected_app_id: str | None = None,
        audience: str = BOT_FRAMEWORK_ISSUER,
        path_prefix: str = "/amer/",
        https: bool = False,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(https=https, tls=tls)
        if not path_prefix.startswith("/") or not path_prefix.endswith("/"):
            raise ValueError("path_prefix must start and end with '/'")
        self.identity = identity
        self.expected_app_id = expected_app_id
        self.audience = audience
        self.path_prefix = path_prefix
        self._policies: list[Policy] = []
        self._removed: set[str] = set()
        self._members: dict[str, list[dict[str, Any]]] = {}
        self._attempts: dict[str, int] = {}
        self._activities: list[SentActivity] = []
        # Typing indicators, kept apart: they are no answer, and a turn sends one only when it
        # happens to take a while (timing the tests must not depend on).
        self._typing: list[SentActivity] = []
        self._ids = itertools.count(int(time.time() * 1000))
        self._script_lock = threading.Lock()

    @property
    def service_url(self) -> str:
        """What to put in ``activity.serviceUrl`` (base URL + prefix, trailing slash)."""
        return f"{self.base_url}{self.path_prefix}"

    # -- scripting ---------------------------------------------------------------------------
    def add_policy(self, policy: Policy) -> None:
        """Consult ``policy`` on every authenticated request; a returned ``Failure`` is answered."""
        with self._script_lock:
            self._policies.append(policy)

    def clear_failures(self) -> None:
        """Drop every policy and un-remove every conversation."""
        with self._script_lock:
            self._policies.clear()
            self._removed.clear()

    def fail_next(
        self,
        count: int,
        failure: Failure,
        *,
        conversation_id: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``failure``."""
        left = [count]
        wanted = set(kinds) if kinds is not None else None

        def policy(call: ConnectorCall) -> Failure | None:
            if left[0] <= 0 or (wanted is not None and call.kind not in wanted):
                return None
            if conversation_id is not None and call.conversation_id != conversation_id:
                return None
            left[0] -= 1
            return failure

        self.add_policy(policy)

    def fail_fraction(
        self,
        fraction: float,
        failure: Failure,
        *,
        kinds: Iterable[str] = ("send", "reply", "create"),
        first_attempt_only: bool = False,
        seed: int = 0,
    ) -> None:
        """Answer about ``fraction`` of matching requests with ``failure`` (seeded)."""
        rng = random.Random(seed)
        wanted = set(kinds)

        def policy(call: ConnectorCall) -> Failure | None:
            if call.kind not in wanted or (first_attempt_only and call.attempt > 1):
                return None
            return failure if rng.random() < fraction else None

        self.add_policy(policy)

    def remove_bot(self, conversation_id: str) -> None:
        """From now on answer 403 BotNotInConversationRoster for ``conversation_id``."""
        with self._script_lock:
            self._removed.add(conversation_id)

    def restore_bot(self, conversation_id: str) -> None:
        with self._script_lock:
            self._removed.discard(conversation_id)

    def set_members(self, conversation_id: str, members: Iterable[Mapping[str, Any]]) -> None:
        """Members (ChannelAccount / TeamsChannelAccount dicts) served by the members routes."""
        with self._script_lock:
            self._members[conversation_id] = [dict(m) for m in members]

    # -- observing ---------------------------------------------------------------------------
    @property
    def activities(self) -> list[SentActivity]:
        """Accepted activities (send, reply, update, create-with-activity), oldest first;
        typing indicators are in `typing`."""
        with self._lock:
            return list(self._activities)

    @property
    def typing(self) -> list[SentActivity]:
        """Accepted typing indicators, oldest first."""
        with self._lock:
            return list(self._typing)

    def _matching(self, conversation_id: str | None, kind: str | None) -> list[SentActivity]:
        return [
            a
            for a in self._activities
            if (conversation_id is None or a.conversation_id == conversation_id)
            and (kind is None or a.kind == kind)
        ]

    def wait_for(
        self,
        n: int,
        timeout: float = 5.0,
        *,
        conversation_id: str | None = None,
        kind: str | None = None,
    ) -> list[SentActivity]:
        """Block until at least ``n`` matching activities were accepted; return them all.

        Do not call this from the event loop the bot runs on (it blocks); use ``wait_for_async``."""

        def enough() -> list[SentActivity]:
            found = self._matching(conversation_id, kind)
            return found if len(found) >= n else []

        return self._wait_until(enough, timeout, f"{n} activities")

    async def wait_for_async(
        self,
        n: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - a plain deadline is the clearest API here
        *,
        conversation_id: str | None = None,
        kind: str | None = None,
    ) -> list[SentActivity]:
        """``wait_for`` that yields to the caller's event loop while waiting."""

        def enough() -> list[SentActivity]:
            found = self._matching(conversation_id, kind)
            return found if len(found) >= n else []

        return await self._wait_until_async(enough, timeout, f"{n} activities")

    def retry_violations(self, tolerance: float = 0.05) -> list[str]:
        """Retries that arrived before the ``Retry-After`` their previous attempt was answered with.

        A retry is the next request with the same method, path and body."""
        problems: list[str] = []
        records = self.requests
        for i, rec in enumerate(records):
            if rec.retry_after is None:
                continue
            for later in records[i + 1 :]:
                if (later.method, later.path, later.body) == (rec.method, rec.path, rec.body):
                    gap = later.at - rec.at
                    if gap + tolerance < rec.retry_after:
                        problems.append(
                            f"{rec.method} {rec.path}: retried after {gap:.3f}s, "
                            f"Retry-After was {rec.retry_after}s"
                        )
                    break
        return problems

    # -- HTTP --------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application()
        base = f"{self.path_prefix}v3/conversations"
        app.router.add_post(base, self._handle("create"))
        app.router.add_post(base + "/{cid}/activities", self._handle("send"))
        app.router.add_post(base + "/{cid}/activities/{aid}", self._handle("reply"))
        app.router.add_put(base + "/{cid}/activities/{aid}", self._handle("update"))
        app.router.add_delete(base + "/{cid}/activities/{aid}", self._handle("delete"))
        app.router.add_get(base + "/{cid}/members", self._handle("members"))
        app.router.add_get(base + "/{cid}/members/{mid}", self._handle("members"))
        return app

    def _new_id(self) -> str:
        return str(next(self._ids))

    def _authenticate(self, request: web.Request) -> dict[str, Any] | None | web.Response:
        if self.identity is None:
            return None
        denied = web.json_response(
            {"message": "Authorization has been denied for this request."}, status=401
        )
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            request[INFO]["auth_error"] = "missing bearer token"
            return denied
        try:
            claims = self.identity.verify_access_token(auth[7:], self.audience)
        except jwt.InvalidTokenError as exc:
            request[INFO]["auth_error"] = str(exc)
            return denied
        if self.expected_app_id is not None and claims.get("appid") != self.expected_app_id:
            request[INFO]["auth_error"] = f"token for app {claims.get('appid')!r}"
            return denied
        return claims

    def _handle(self, kind: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            info = request[INFO]
            cid = request.match_info.get("cid")
            aid = request.match_info.get("aid")
            info.update(kind=kind, conversation_id=cid, activity_id=aid)
            claims = self._authenticate(request)
            if isinstance(claims, web.Response):
                return claims
            if claims is not None:
                request[CLAIMS] = claims
            body = await request.read()
            try:
                payload = json.loads(body) if body else None
            except ValueError:
                return web.json_response(error_body("BadArgument", "body is not JSON"), status=400)
            if request.method in ("POST", "PUT") and not isinstance(payload, dict):
                return web.json_response(
                    error_body("BadArgument", "a JSON object is required"), status=400
                )
            key = f"{request.method} {request.path} {body!r}"
            with self._script_lock:
                attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
                policies = list(self._policies)
                removed = cid is not None and cid in self._removed
            call = ConnectorCall(kind, request.method, cid, aid, payload, attempt)
            failure = Failure.bot_removed() if removed else None
            for policy in policies:
                failure = failure or policy(call)
            if failure is not None:
                info["failure"] = failure
                return failure.response()
            return self._answer(kind, request, cid, aid, payload, claims)

        return handler

    def _answer(
        self,
        kind: str,
        request: web.Request,
        cid: str | None,
        aid: str | None,
        payload: Any,
        claims: dict[str, Any] | None,
    ) -> web.Response:
        at = time.monotonic()
        now = dt.datetime.now(dt.UTC)

        def accept(
            kind_: str,
            conversation: str,
            activity_id: str,
            reply_to: str | None,
            activity: dict[str, Any],
        ) -> None:
            with self._changed:
                sent = SentActivity(
                    kind_, conversation, activity_id, reply_to, activity, claims, at, now
                )
                if isinstance(activity, dict) and activity.get("type") == "typing":
                    self._typing.append(sent)
                else:
                    self._activities.append(sent)
                self._changed.notify_all()

        if kind == "create":
            conversation = f"a:{uuid.uuid4().hex}"
            activity = payload.get("activity") if isinstance(payload, dict) else None
            activity_id = self._new_id() if activity else None
            if activity:
                accept("create", conversation, activity_id or "", None, activity)
            return web.json_response(
                {"id": conversation, "activityId": activity_id, "serviceUrl": self.service_url},
                status=201,
            )
        assert cid is not None
        if kind == "send":
            new_id = self._new_id()
            accept("send", cid, new_id, None, payload)
            return web.json_response({"id": new_id}, status=201)
        if kind == "reply":
            new_id = self._new_id()
            accept("reply", cid, new_id, aid, payload)
            return web.json_response({"id": new_id}, status=201)
        if kind == "update":
            assert aid is not None
            accept("update", cid, aid, None, payload)
            return web.json_response({"id": aid}, status=200)
        if kind == "delete":
            return web.Response(status=200)
        # members
        with self._script_lock:
            members = list(self._members.get(cid, []))
        mid = request.match_info.get("mid")
        if mid is None:
            return web.json_response(members)
        for member in members:
            if mid in (member.get("id"), member.get("aadObjectId")):
                return web.json_response(member)
        return web.json_response(
            error_body("MemberNotFoundInConversation", "The member is not found"), status=404
        )
