"""The project as a user installs it (issue 15): build the wheel, install it into a fresh
virtual environment outside the checkout, and use the console commands there — `fusion` for
the CLI, `fusion-bot` for the server, which answers a Teams activity with a rendered card
through the Bot Framework protocol (the card templates must have come with the wheel).

The dependencies are installed from requirements.lock (exact, hash-checked versions); pip's
wheel cache makes a second run fast, but the first one needs PyPI. A transcript of what the
commands printed is written to test-artifacts/wheel/transcript.txt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from tests.fakes import FakeBotConnector
from tests.support.teams_env import message, texts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """No checkout on the path, no developer settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("Microsoft", "FUSION_", "DATABASE_URL", "HOST", "PORT", "PYTHON"))
        and k != "VIRTUAL_ENV"
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Transcript:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lines: list[str] = []

    def run(
        self,
        args: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        check: bool = True,
        timeout: float = 900,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        shown = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args))
        self.lines += [
            f"$ {shown}",
            *done.stdout.rstrip().splitlines(),
            *(f"[stderr] {line}" for line in done.stderr.rstrip().splitlines()[-5:]),
            f"[exit {done.returncode}]",
            "",
        ]
        self.path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        if check:
            assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-4000:])
        return done

    def note(self, *lines: str) -> None:
        self.lines += [*lines, ""]
        self.path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path, artifacts: Path) -> None:
    log = Transcript(artifacts / "wheel" / "transcript.txt")
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    env = clean_env()

    # 1. The wheel, built from the checkout as pip builds it.
    log.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        cwd=tmp_path,
        env=env,
    )
    [wheel] = dist.glob("fusion_products_bot-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(n for n in names if n.startswith("bot/cards/"))
    assert {f"bot/cards/{p.name}" for p in (ROOT / "cards").glob("*.json")} == set(templates)
    assert "bot/app.py" in names and "bot/domain/migrations/0001_initial.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "fusion = bot.__main__:run" in scripts and "fusion-bot = bot.app:main" in scripts
    log.note(f"built {wheel.name}: {len(names)} files, templates {', '.join(templates)}")

    # 2. A fresh environment: the locked dependencies, then the wheel.
    log.run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    log.run([*pip, "--require-hashes", "-r", str(ROOT / "requirements.lock")], cwd=work, env=env)
    log.run([*pip, "--no-deps", str(wheel)], cwd=work, env=env)
    where = log.run(
        [str(venv / "bin" / "python"), "-c", "import bot; print(bot.__file__)"], cwd=work, env=env
    )
    assert where.stdout.strip().startswith(str(venv))  # the installed copy, not the checkout

    # 3. The CLI.
    fusion = str(venv / "bin" / "fusion")
    cli_env = clean_env(DATABASE_URL=f"sqlite://{work / 'fusion.sqlite3'}")
    assert log.run([fusion, "--version"], cwd=work, env=env).stdout.startswith("fusion ")
    log.run([fusion, "--help"], cwd=work, env=env)
    assert not (work / "fusion.sqlite3").exists()
    log.run(
        [fusion, "product", "add", "TEAMS-SEATS", "--kind", "teams-seats", "--capacity", "500"],
        cwd=work,
        env=cli_env,
    )
    log.run([fusion, "customer", "add", "Contoso Ltd"], cwd=work, env=cli_env)
    log.run(
        [fusion, "subscription", "add", "ACME-01", "--customer", "Contoso Ltd"],
        cwd=work,
        env=cli_env,
    )
    log.run([fusion, "allocate", "25", "TEAMS-SEATS", "to", "ACME-01"], cwd=work, env=cli_env)
    usage = json.loads(log.run([fusion, "usage", "--json"], cwd=work, env=cli_env).stdout)
    assert [(p["name"], p["capacity"], p["allocated"]) for p in usage] == [("TEAMS-SEATS", 500, 25)]
    error = log.run(
        [fusion, "--json", "allocate", "1000", "TEAMS-SEATS", "to", "ACME-01"],
        cwd=work,
        env=cli_env,
        check=False,
    )
    assert error.returncode == 1 and json.loads(error.stderr)["error"] in {"conflict", "refused"}

    # 4. The server, answering a Teams activity with a rendered card.
    port = free_port()
    with FakeBotConnector(None) as connector:
        bot_env = clean_env(
            DATABASE_URL=f"sqlite://{work / 'fusion.sqlite3'}",
            PORT=str(port),
            FUSION_DEV_ADMINS="*",
            FUSION_TRUSTED_SERVICE_URLS=connector.service_url,
            FUSION_LOG_FORMAT="text",
            FUSION_SCHEDULER="false",
        )
        proc = subprocess.Popen(
            [str(venv / "bin" / "fusion-bot")],
            cwd=work,
            env=bot_env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "fusion-bot did not come up"
                time.sleep(0.2)
            activity = message("usage", connector.service_url)
            assert (
                requests.post(f"{base}/api/messages", json=activity, timeout=30).status_code == 201
            )
            [reply] = connector.wait_for(1)
            [attachment] = reply.attachments
            assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
            card = attachment["content"]
            assert card["type"] == "AdaptiveCard" and card["version"] == "1.5"
            shown = texts(card)
            assert shown[0] == "Usage" and any("TEAMS-SEATS" in t for t in shown)
            metrics = requests.get(f"{base}/metrics", timeout=10).text
            assert 'fusion_turns_total{outcome="ok"} 1.0' in metrics
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(20)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert f"listening on http://127.0.0.1:{port}/api/messages" in stderr
    log.note(
        "$ fusion-bot   (FUSION_LOG_FORMAT=text)",
        *stderr.rstrip().splitlines()[:8],
        f"POST /api/messages 'usage' → 201; the connector got an Adaptive Card 1.5: "
        f"{json.dumps(shown[:4], ensure_ascii=False)}",
    )
    shutil.rmtree(venv, ignore_errors=True)
