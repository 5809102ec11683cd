"""The web server itself: /healthz, /readyz, `python app.py` (configuration refusals, serving,
logs)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from aiohttp.test_utils import TestServer

from app import BACKGROUND_TASKS, create_app
from bot.config import Settings
from bot.domain.models import Product
from tests.fakes import FakeBotConnector
from tests.support.teams_env import message, running_bot

ROOT = Path(__file__).resolve().parent.parent


READY = {
    "status": "ok",
    "database": "ok",
    "migrations": "ok",
    "signing_keys": "not needed (local development mode)",
}


async def test_healthz_and_readyz_ok(empty_db_url: str) -> None:
    async with running_bot(Settings(database_url=empty_db_url)) as bot:
        assert await bot.get("/healthz") == (200, {"status": "ok"})
        assert await bot.get("/readyz") == (200, READY)


async def test_app_applies_migrations_at_start(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'fresh.sqlite3'}"
    async with running_bot(Settings(database_url=url, migrate_on_start=True)) as bot:
        assert await bot.get("/readyz") == (200, READY)
        assert await Product.all().count() == 0  # the schema is there


async def test_the_app_applies_every_setting_of_the_process(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create_app, not only `python app.py`, installs the naming rule and the change limit."""
    from bot.domain.change import limit_writers, writers_at_once
    from bot.domain.naming import set_naming_rule
    from tests.support.teams_env import dev_settings, texts, the_card, trust_fakes

    trust_fakes(monkeypatch)
    with FakeBotConnector(None) as connector:
        settings = dev_settings(
            empty_db_url, connector, naming_rule="[a-z]+(?:_[a-z]+)*", max_concurrent_changes=1
        )
        set_naming_rule(Settings().naming_rule)
        limit_writers(Settings().max_concurrent_changes)
        async with running_bot(settings) as bot:
            assert writers_at_once() == 1
            for name in ("TEAMS-SEATS", "teams_seats"):
                before = len(connector.activities)
                text = f"product add {name} --kind teams-seats --capacity 5"
                assert (await bot.post(message(text, connector.service_url))).status == 201
                [reply] = (await connector.wait_for_async(before + 1))[before:]
                assert any("[a-z]+(?:_[a-z]+)*" in t for t in texts(the_card(reply))) == (
                    name == "TEAMS-SEATS"
                )
            assert await Product.filter(name="teams_seats").exists()
            assert not await Product.filter(name="TEAMS-SEATS").exists()
    set_naming_rule(Settings().naming_rule)
    limit_writers(Settings().max_concurrent_changes)


async def test_readyz_503_while_migrations_are_pending(tmp_path: Path) -> None:
    # A deployment that migrates separately (FUSION_MIGRATE_ON_START=false) before the step ran.
    url = f"sqlite://{tmp_path / 'unmigrated.sqlite3'}"
    async with running_bot(Settings(database_url=url, migrate_on_start=False)) as bot:
        assert await bot.get("/healthz") == (200, {"status": "ok"})  # alive, but not ready
        status, body = await bot.get("/readyz")
        assert status == 503 and body["status"] == "unavailable"
        assert body["database"] == "ok"
        assert not body["migrations"].startswith("ok")


class TcpRelay:
    """A TCP relay on 127.0.0.1 (own thread) that can be cut and restored: a network outage
    between the bot and its database."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> TcpRelay:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _run(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)  # type: ignore[arg-type]

    def restore(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

        self._run(start())

    def cut(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()

        self._run(stop())

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.postgres
async def test_readyz_503_while_the_database_is_unreachable(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    with TcpRelay((parts.hostname or "127.0.0.1", parts.port or 5432)) as relay:
        netloc = (
            f"{parts.username}@127.0.0.1:{relay.port}"
            if parts.username
            else f"127.0.0.1:{relay.port}"
        )
        url = urlunsplit(parts._replace(netloc=netloc))
        async with running_bot(Settings(database_url=url)) as bot:
            assert await bot.get("/readyz") == (200, READY)
            relay.cut()
            status, body = await bot.get("/readyz")
            assert status == 503
            assert body["status"] == "unavailable" and body["database"].startswith("unavailable")
            assert await bot.get("/healthz") == (200, {"status": "ok"})
            relay.restore()
            for _ in range(3):  # the pool notices the dead connections and reconnects
                status, body = await bot.get("/readyz")
                if status == 200:
                    break
            assert (status, body) == (200, READY)


async def test_background_tasks_run_while_the_app_runs_and_are_cancelled_after(
    tmp_path: Path,
) -> None:
    seen: list[str] = []

    async def job(app: object) -> None:
        seen.append("started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    app = create_app(Settings(database_url=f"sqlite://{tmp_path / 'bg.sqlite3'}"))
    app[BACKGROUND_TASKS].append(job)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    await asyncio.sleep(0)
    assert seen == ["started"]
    await server.close()
    assert seen == ["started", "cancelled"]


# ----- python app.py ---------------------------------------------------------------------------


def app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing from a developer's Bot Framework or FUSION settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("Microsoft", "FUSION_", "DATABASE_URL", "HOST", "PORT"))
    }
    env["DATABASE_URL"] = f"sqlite://{tmp_path / 'app.sqlite3'}"
    env.update(extra)
    return env


def run_app(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        cwd=tmp_path,  # no .env there
        env=app_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "bot.example.com"])
def test_dev_mode_refuses_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    done = run_app(tmp_path, HOST=host, PORT="0")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "configuration error: local development mode" in done.stderr
    assert f"HOST={host!r} is refused" in done.stderr
    assert not (tmp_path / "app.sqlite3").exists()  # refused before touching anything


def test_app_id_without_password_is_refused(tmp_path: Path) -> None:
    done = run_app(tmp_path, HOST="0.0.0.0", PORT="0", MicrosoftAppId="some-app")
    assert done.returncode != 0
    assert "configuration error: MicrosoftAppPassword is required" in done.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, FakeBotConnector, subprocess.Popen[str]]]:
    """`python app.py` in local development mode, replying to a fake Bot Connector."""
    port = free_port()
    with FakeBotConnector(None) as connector:
        env = app_env(
            tmp_path,
            HOST="127.0.0.1",
            PORT=str(port),
            FUSION_DEV_ADMINS="*",
            FUSION_TRUSTED_SERVICE_URLS=connector.service_url,
        )
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "python app.py did not come up"
                time.sleep(0.1)
            yield base, connector, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(15)


def test_python_app_py_serves_turns_and_logs_json_with_the_activity_id(
    served: tuple[str, FakeBotConnector, subprocess.Popen[str]],
) -> None:
    base, connector, proc = served
    activity = message("whoami", connector.service_url, activity_id="1737000000000042")
    resp = requests.post(f"{base}/api/messages", json=activity, timeout=10)
    assert resp.status_code == 201
    [reply] = connector.wait_for(1)
    assert reply.reply_to_id == "1737000000000042"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert proc.stderr is not None
    lines = [line for line in proc.stderr.read().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    turn = [e for e in entries if e.get("correlation_id") == "1737000000000042"]
    assert any(e["message"] == "connector client created" for e in turn)
    assert any(e["message"] == "starting" and e["dev_mode"] is True for e in entries)
