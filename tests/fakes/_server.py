"""Shared plumbing: an aiohttp application served on 127.0.0.1 from its own thread and loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from aiohttp import web

from .tls import TLSFiles, shared_tls

T = TypeVar("T")

__all__ = ["CLAIMS", "INFO", "Failure", "RecordedRequest", "ThreadedServer", "error_body"]

INFO = web.RequestKey("fake_info", dict)  # per-request details a handler wants recorded
CLAIMS = web.RequestKey("fake_claims", dict)  # verified bearer-token claims


@dataclass(frozen=True)
class RecordedRequest:
    """One request a fake received, with what it answered."""

    method: str
    path: str  # decoded path, without the query string
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any  # parsed body if it was JSON, else None
    status: int  # status the fake answered with
    at: float  # time.monotonic() on arrival
    received_at: dt.datetime  # wall clock (UTC) on arrival
    claims: dict[str, Any] | None = None  # verified bearer-token claims, if any
    retry_after: float | None = None  # Retry-After the fake answered with, if any
    info: dict[str, Any] = field(default_factory=dict)  # fake-specific details

    @property
    def bearer(self) -> str | None:
        """The bearer token sent, if any."""
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None


def error_body(code: str, message: str) -> dict[str, Any]:
    """The ``{"error": {"code", "message"}}`` shape used by Bot Connector and Graph."""
    return {"error": {"code": code, "message": message}}


@dataclass(frozen=True)
class Failure:
    """A scripted error answer (status, optional Retry-After seconds, JSON body)."""

    status: int
    retry_after: float | None = None
    body: dict[str, Any] | None = None
    # Sent as it is instead of `body` (a malformed answer: any bytes, any status).
    raw: bytes | None = None

    @classmethod
    def malformed(cls, raw: bytes, status: int = 200) -> Failure:
        """An answer of the wrong shape (`"value": null`, a number, not JSON at all...)."""
        return cls(status, None, None, raw)

    @classmethod
    def throttled(cls, retry_after: float = 1.0) -> Failure:
        return cls(429, retry_after, error_body("Throttled", "Too many requests"))

    @classmethod
    def server_error(cls, status: int = 500, retry_after: float | None = None) -> Failure:
        return cls(status, retry_after, error_body("ServiceError", f"scripted {status}"))

    @classmethod
    def bot_removed(cls) -> Failure:
        return cls(
            403,
            None,
            error_body(
                "BotNotInConversationRoster", "The bot is not part of the conversation roster."
            ),
        )

    def response(self) -> web.Response:
        """This failure as an aiohttp response (Retry-After formatted with ``:g``: 1.0 -> "1")."""
        headers = {"Retry-After": f"{self.retry_after:g}"} if self.retry_after is not None else None
        if self.raw is not None:
            return web.Response(
                body=self.raw, status=self.status, headers=headers, content_type="application/json"
            )
        return web.json_response(self.body or {}, status=self.status, headers=headers)


class ThreadedServer:
    """Base class: serves ``build_app()`` on 127.0.0.1 (port 0) from a private thread and loop.

    Subclasses implement ``build_app``; handlers run on the fake's loop, never the caller's, so
    blocking clients (``requests``, msal) and the code under test cannot deadlock each other.
    ``start()``/``stop()`` or ``with``; ``base_url``; ``requests`` is a thread-safe copy of the
    record; ``refuse_connections()``/``accept_connections()`` close and reopen the listening
    socket on the same port (for "service down" tests).
    """

    def __init__(self, *, https: bool = True, tls: TLSFiles | None = None) -> None:
        self.https = https
        self.tls: TLSFiles = tls or shared_tls()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._records: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sites: dict[str, web.BaseSite] = {}
        self._ports: dict[str, int] = {}

    # -- to be provided by subclasses -------------------------------------------------------
    def build_app(self) -> web.Application:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_listeners(self) -> Iterable[str]:
        """Names of additional plain-http listeners (besides "main")."""
        return ()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self.call(self._astart())
        except BaseException:
            self.stop()
            raise
        return self

    async def _astart(self) -> None:
        app = self.build_app()
        app.middlewares.insert(0, self._record_middleware)  # outermost: sees every answer
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._open_site("main", 0, self.https)
        for name in self.extra_listeners():
            await self._open_site(name, 0, False)

    async def _open_site(self, name: str, port: int, https: bool) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        ssl_ctx = self.tls.server_ssl_context() if https else None
        site = web.SockSite(self._runner, sock, ssl_context=ssl_ctx)
        await site.start()
        self._sites[name] = site
        self._ports[name] = sock.getsockname()[1]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._runner is not None and loop.is_running():
                self.call(self._runner.cleanup())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = self._runner = None
            self._sites.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the fake's loop and wait for its result (from any other thread)."""
        assert self._loop is not None, "fake not started"
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    # -- addresses ---------------------------------------------------------------------------
    def port_of(self, listener: str = "main") -> int:
        assert listener in self._ports, "fake not started"
        return self._ports[listener]

    @property
    def port(self) -> int:
        return self.port_of("main")

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT`` (or ``http://`` when https=False), no trailing slash."""
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.port}"

    # -- down / up ---------------------------------------------------------------------------
    def refuse_connections(self) -> None:
        """Close the listening socket(s) and drop open keep-alive connections: from now on
        connections are refused (ECONNREFUSED)."""

        async def close() -> None:
            for site in self._sites.values():
                await site.stop()
            self._sites.clear()
            server = self._runner.server if self._runner else None
            for connection in server.connections if server else []:
                connection.force_close()

        self.call(close())

    def accept_connections(self) -> None:
        """Reopen the listening socket(s) on the same ports."""

        async def reopen() -> None:
            for name, port in self._ports.items():
                if name not in self._sites:
                    await self._open_site(name, port, self.https and name == "main")

        self.call(reopen())

    # -- record ------------------------------------------------------------------------------
    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        at, received_at = time.monotonic(), dt.datetime.now(dt.UTC)
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request[INFO] = {}
        unexpected: Exception | None = None
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            response = exc
        except Exception as exc:  # a bug in the fake: record it as a 500, then let aiohttp log it
            unexpected = exc
            response = web.Response(status=500)
        retry_after = response.headers.get("Retry-After")
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            json=parsed,
            status=response.status,
            at=at,
            received_at=received_at,
            claims=request.get(CLAIMS),
            retry_after=float(retry_after) if retry_after else None,
            info=request[INFO],
        )
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()
        if unexpected is not None:
            raise unexpected
        if isinstance(response, web.HTTPException):
            raise response
        return response

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy), oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self._records)

    def clear_records(self) -> None:
        with self._lock:
            self._records.clear()

    def _wait_until(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{type(self).__name__}: timed out after {timeout}s waiting for {what}"
                    )
                self._changed.wait(remaining)

    async def _wait_until_async(
        self,
        predicate: Callable[[], T],
        timeout: float,  # noqa: ASYNC109 - a plain deadline is the clearest API here
        what: str,
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{type(self).__name__}: timed out after {timeout}s waiting for {what}"
                )
            await asyncio.sleep(0.01)
