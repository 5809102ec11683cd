"""The CLI behaves like a Unix command (issue 15): `-h`/`--help`/`--version` exit 0 and touch
no database, help fits the terminal, "did you mean" for options and their values, every
`--json` answer (errors included) is one JSON document whose `error` code goes with the exit
status (docs/cli.md), `--all` / `--page-size` on lists, and each way a database cannot be used
says what it is. Run as real subprocesses, as an operator would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import dbutil

ROOT = Path(__file__).resolve().parent.parent


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("Microsoft", "FUSION_", "DATABASE_URL", "COLUMNS"))
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_json_document(text: str) -> Any:
    return json.loads(text)  # fails on anything but exactly one document


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_exits_0_and_touches_no_database(tmp_path: Path, flag: str) -> None:
    done = run(flag, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: fusion ")
    assert "--json" in done.stdout and "exit status" in done.stdout
    assert list(tmp_path.iterdir()) == []  # no fusion.sqlite3 made in the working folder
    # A setting that would fail does not matter: help reads none.
    assert run(flag, cwd=tmp_path, env={"DATABASE_URL": "mysql://x"}).returncode == 0


def test_version_and_command_help(tmp_path: Path) -> None:
    done = run("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("fusion ")
    assert done.stdout.split()[1][0].isdigit()
    for args in (
        ("allocate", "--help"),
        ("-h", "allocate"),
        ("help", "allocate"),
        ("allocate", "5", "X", "--help"),
    ):
        done = run(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "allocate N PRODUCT to SUBSCRIPTION" in done.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("columns", [None, "60", "120"])
def test_help_fits_the_terminal(tmp_path: Path, columns: str | None) -> None:
    done = run("help", cwd=tmp_path, env={"COLUMNS": columns} if columns else None)
    assert done.returncode == 0
    width = int(columns or 80)
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= width, max(lines, key=len)
    assert all(line == line.rstrip() for line in lines)  # no padding at the ends
    assert any(line.startswith("allocate N PRODUCT to SUBSCRIPTION") for line in lines)
    assert "Allocate units of a product to a subscription" in " ".join(
        line.strip() for line in lines
    )


def test_did_you_mean_for_options_and_their_values(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite://{tmp_path}/f.sqlite3"}
    done = run("product", "add", "X", "--kind", "numbers", "--capcity", "5", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "Unknown option --capcity" in done.stderr and "Did you mean --capacity?" in done.stderr
    done = run("--json", "product", "add", "X", "--kind", "number", cwd=tmp_path, env=env)
    error = one_json_document(done.stderr)
    assert done.returncode == 1 and error["error"] == "usage"
    assert "did you mean 'numbers'?" in error["message"]
    done = run("numbers", "--state", "availble", cwd=tmp_path, env=env)
    assert "did you mean 'available'?" in done.stderr
    done = run("--jsn", "usage", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "Did you mean --json" in done.stderr


def test_every_json_error_is_one_document_with_its_code(tmp_path: Path) -> None:
    def error(*args: str, status: int, env: dict[str, str] | None = None) -> dict[str, Any]:
        done = run("--json", *args, cwd=tmp_path, env=env)
        assert done.returncode == status, (args, done.stderr)
        assert done.stdout == ""
        found = one_json_document(done.stderr)
        assert set(found) == {"error", "message", "usage"} and found["message"]
        return found

    assert error(status=2)["error"] == "usage"
    assert error("--as", status=2)["error"] == "usage"
    assert error("--page-size", "0", "numbers", status=2)["error"] == "usage"
    bad = error("usage", status=2, env={"FUSION_CLOUD": "moon"})
    assert bad["error"] == "configuration" and "FUSION_CLOUD" in bad["message"]
    refused = error("usage", status=3, env={"DATABASE_URL": "postgres://u@127.0.0.1:1/x"})
    assert refused["error"] == "database-refused"
    env = {"DATABASE_URL": f"sqlite://{tmp_path}/f.sqlite3"}
    assert error("frobnicate", status=1, env=env)["error"] == "unknown-command"
    assert error("allocate", status=1, env=env)["error"] == "usage"  # no arguments: usage


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says anything (a database that hangs)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_database_that_does_not_answer_times_out_and_says_so(
    tmp_path: Path, silent_server: int
) -> None:
    url = f"postgres://postgres@127.0.0.1:{silent_server}/fusion?timeout=1"
    done = run("usage", cwd=tmp_path, env={"DATABASE_URL": url})
    assert done.returncode == 3
    assert "did not answer in time" in done.stderr and "Try again" in done.stderr


@pytest.mark.postgres
def test_a_database_that_does_not_exist_says_so(tmp_path: Path) -> None:
    if (problem := dbutil.postgres_available()) is not None:
        pytest.skip(problem)
    base, _ = dbutil.POSTGRES_URL.rsplit("/", 1)
    done = run(
        "--json", "usage", cwd=tmp_path, env={"DATABASE_URL": f"{base}/fusion_does_not_exist"}
    )
    assert done.returncode == 3
    error = one_json_document(done.stderr)
    assert error["error"] == "database-missing"
    assert "'fusion_does_not_exist' does not exist" in error["message"]
    assert "not answering" not in error["message"]


def test_all_and_page_size_on_lists(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite://{tmp_path}/f.sqlite3"}
    done = run("numbers", "add", "+442071234000-+442071234059", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr

    def numbers(*args: str) -> Any:
        done = run("--json", *args, "numbers", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        return one_json_document(done.stdout)

    paged = numbers()
    assert (paged["total"], paged["pages"], len(paged["numbers"])) == (60, 3, 25)
    every = numbers("--all")
    assert (every["pages"], len(every["numbers"])) == (1, 60)
    assert len({n["number"] for n in every["numbers"]}) == 60
    tens = numbers("--page-size", "10")
    assert (tens["pages"], len(tens["numbers"])) == (6, 10)
    # A command with an --all of its own keeps it (approvals: any state) and is not paged.
    done = run("--json", "approvals", "--all", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
