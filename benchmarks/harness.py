"""Plumbing shared by the load generator and the drills: child processes, /proc figures, a
private PostgreSQL cluster, TLS for the fakes, and the bot started as `python app.py`.

Every helper process is started with a pipe on stdin and prints one JSON line on stdout when
it is ready; it exits when stdin closes, so nothing outlives the script that started it (even
one killed with -9). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
PYTHON = sys.executable
#: The bot under test (`--app` points the load at another checkout, e.g. for before/after).
APP = Path(os.environ.get("FUSION_BENCH_APP", REPO / "app.py"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, str(REPO))

from tests.fakes.tls import TLSFiles, make_tls  # noqa: E402

APP_ID = "6a0d8f3e-2b1c-4c6d-9e7f-1a2b3c4d5e6f"
APP_SECRET = "bench-secret"
ADMIN_GROUP = "7d1c0a52-1d8f-4d1b-a3f5-0c7e5a1f2b3c"
#: Entra object ids of the administrators the load is sent as (each costs one Graph call).
ADMINS = tuple(f"0000aaaa-0000-4000-8000-{i:012d}" for i in range(1, 9))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tls_files(directory: Path) -> TLSFiles:
    """TLS material the fakes' processes share (made once by the parent, read by the children)."""
    if (directory / "bundle.pem").exists():
        return TLSFiles(
            directory=directory,
            ca_cert=directory / "ca.pem",
            cert=directory / "server.pem",
            key=directory / "server-key.pem",
            ca_bundle=directory / "bundle.pem",
        )
    return make_tls(directory)


# ----- child processes ----------------------------------------------------------------------


@dataclass
class Child:
    """A process we started: its pid, /proc figures, and a clean stop."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = REPO
    handshake: bool = True
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout: float = 60) -> Child:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if self.handshake else log,
            stderr=log,
        )
        log.close()
        if self.handshake:
            self.info = self._read_handshake(timeout)
        return self

    def _read_handshake(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        buffer = b""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read()
            if chunk:
                buffer += chunk
                if b"\n" in buffer:
                    return dict(json.loads(buffer.split(b"\n", 1)[0]))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start; see {self.log_path}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def rss_mib(self) -> float:
        return self._status("VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        """Peak resident set since start, or since the last `reset_peak()`."""
        return self._status("VmHWM") / 1024

    def reset_peak(self) -> None:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def kill9(self) -> None:
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_http(url: str, timeout: float = 60, ok: tuple[int, ...] = (200,)) -> None:
    """Wait until GET url answers with one of `ok` (plain http on loopback)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2)
            conn.request("GET", parts.path or "/")
            status = conn.getresponse().status
            conn.close()
            if status in ok:
                return
            last = status
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")


# ----- the fakes --------------------------------------------------------------------------


def start_fakes(work: Path, tls: TLSFiles) -> Child:
    """Identity provider (channel keys, Entra token endpoint) + Graph, in their own process."""
    env = {**os.environ, **tls.env()}
    argv = [PYTHON, str(BENCH / "fakes_proc.py"), "--tls", str(tls.directory)]
    argv += ["--app-id", APP_ID, "--app-secret", APP_SECRET, "--admin-group", ADMIN_GROUP]
    argv += ["--admins", ",".join(ADMINS)]
    return Child("fakes", argv, env, work / "fakes.log").start()


def start_connector(work: Path, tls: TLSFiles, fakes: Child, *, https: bool = True) -> Child:
    """The fake Bot Connector, alone in its own process."""
    key = work / "entra-public.pem"
    key.write_text(fakes.info["entra_public_pem"])
    argv = [PYTHON, str(BENCH / "connector_proc.py"), "--tls", str(tls.directory)]
    argv += ["--entra-public-key", str(key), "--app-id", APP_ID]
    if not https:
        argv.append("--http")
    return Child("connector", argv, dict(os.environ), work / "connector.log").start()


def bot_env(
    fakes: Child, connector: Child, tls: TLSFiles, database_url: str, port: int, **extra: str
) -> dict[str, str]:
    """What `python app.py` reads in production mode, pointed at the fakes."""
    info = fakes.info
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))}
    env = {
        **keep,
        "REQUESTS_CA_BUNDLE": str(tls.ca_bundle),
        "SSL_CERT_FILE": str(tls.ca_bundle),
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MicrosoftAppId": APP_ID,
        "MicrosoftAppPassword": APP_SECRET,
        "MicrosoftAppTenantId": info["tenant_id"],
        "FUSION_LOGIN_AUTHORITY": info["authority_base"],
        "FUSION_BOTFRAMEWORK_OPENID_METADATA": info["channel_metadata_url"],
        "FUSION_GRAPH_URL": info["graph_url"],
        "FUSION_TRUSTED_SERVICE_URLS": connector.info["service_url"],
        "FUSION_ADMIN_GROUP_IDS": ADMIN_GROUP,
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def start_bot(
    name: str,
    work: Path,
    env: Mapping[str, str],
    *,
    argv: list[str] | None = None,
    ready_path: str = "/healthz",
) -> Child:
    """`python app.py` (or another server script) as a child; ready when GET ready_path is 200."""
    folder = work / name
    folder.mkdir(exist_ok=True)  # its working folder: no .env from the repository is read
    child = Child(
        name,
        argv or [PYTHON, str(APP)],
        dict(env),
        work / f"{name}.log",
        cwd=folder,
        handshake=False,
    ).start()
    try:
        wait_http(f"http://127.0.0.1:{env['PORT']}{ready_path}", timeout=90)
    except TimeoutError:
        child.stop()
        raise RuntimeError(f"{name} did not start; see {child.log_path}:\n{child.tail()}") from None
    return child


def run_python(
    args: list[str], env: Mapping[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, *args], env=dict(env), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def cli(database_url: str, *words: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot WORDS...` against a database (the operator's front door)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))}
    env["DATABASE_URL"] = database_url
    return run_python(["-m", "bot", *words], env)


def seed(database_url: str, subscriptions: int = 16, limited: int = 1000) -> dict[str, Any]:
    """Migrate and load the benchmark catalog (benchmarks/seed.py, its own process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))}
    done = run_python(
        [
            str(BENCH / "seed.py"),
            database_url,
            "--subscriptions",
            str(subscriptions),
            "--limited-capacity",
            str(limited),
        ],
        env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding {database_url} failed:\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def ledger_check(database_url: str, product: str) -> dict[str, Any]:
    """Invariants read back from the database (benchmarks/ledger_check.py, its own process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))}
    done = run_python([str(BENCH / "ledger_check.py"), database_url, product], env)
    if done.returncode != 0:
        raise RuntimeError(f"ledger check failed:\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ----- a private PostgreSQL cluster -----------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise FileNotFoundError(f"{name} (PostgreSQL server binaries) not found")


class PrivatePostgres:
    """A throw-away PostgreSQL cluster in a temporary folder, on its own port.

    Never the machine's main cluster: this one can be stopped mid-load without touching
    anything else. Runs as the `postgres` user when started by root (initdb refuses root).
    """

    def __init__(self, port: int | None = None) -> None:
        # Its own temporary folder: the server's user must be able to reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="fusion-pg-"))
        self.data = self.folder / "data"
        self.port = port or free_port()
        self.log = self.folder / "postgres.log"
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> PrivatePostgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            user = pwd.getpwnam(self._user)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run(
            _pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.folder}'\nmax_connections = 200\n"
            )
        return self

    def start(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    @property
    def running(self) -> bool:
        done = self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "status", check=False)
        return done.returncode == 0

    def pids(self) -> set[int]:
        """The postmaster's pid (its backends are its children)."""
        try:
            return {int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])}
        except (OSError, ValueError):
            return set()

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                _pg_bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql: {statement!r}: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


@contextlib.contextmanager
def work_folder(keep: bool = False) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="fusion-bench-"))
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
