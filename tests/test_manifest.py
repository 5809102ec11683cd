"""The Teams app package built by manifest/build.py.

Validates the built manifest against the official JSON schema of its manifestVersion,
taken offline from the pinned npm package in manifest/schema/ (``npm ci`` is run there if
node_modules is missing), checks the zip and the icons, and that bad options are refused.
PNGs are decoded here with zlib, so the tests need no imaging library.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tomllib
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from jsonschema.validators import Draft4Validator, validator_for

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_DIR = ROOT / "manifest"
BUILD = MANIFEST_DIR / "build.py"
SCHEMA_PROJECT = MANIFEST_DIR / "schema"
SCHEMA_PACKAGE = SCHEMA_PROJECT / "node_modules" / "@microsoft" / "app-manifest"
SCHEMA_URL = (
    "https://developer.microsoft.com/json-schemas/teams/v{version}/MicrosoftTeams.schema.json"
)

APP_ID = "6f1c2e3a-1b2c-4d5e-8f90-123456789abc"
HOST = "fusion-bot.example.com"
VERSION = "1.4.2"
PACKAGE_FILES = {"manifest.json", "color.png", "outline.png"}
COMMANDS = [
    "help",
    "whoami",
    "products",
    "usage",
    "allocate",
    "release",
    "numbers",
    "approvals",
    "audit",
    "digest here",
]
BUILD_ENV_NAMES = (
    "MicrosoftAppId",
    "FUSION_PUBLIC_HOST",
    "FUSION_DEVELOPER_NAME",
    "FUSION_DEVELOPER_URL",
    "FUSION_PRIVACY_URL",
    "FUSION_TERMS_URL",
)


# --------------------------------------------------------------------------- helpers


def run_build(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run manifest/build.py in a clean environment (no build settings inherited)."""
    environ = {k: v for k, v in os.environ.items() if k not in BUILD_ENV_NAMES}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, str(BUILD), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def build_ok(tmp_path: Path, args: Sequence[str], env: Mapping[str, str] | None = None) -> Path:
    out = tmp_path / "appPackage.zip"
    result = run_build([*args, "--out", str(out)], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    return out


def read_manifest(package: Path) -> dict[str, Any]:
    with zipfile.ZipFile(package) as zf:
        return json.loads(zf.read("manifest.json").decode("utf-8"))


def read_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """Decode an 8-bit, non-interlaced PNG to (width, height, RGBA pixels), with zlib only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r} chunk"
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and interlace == 0, f"unsupported PNG: depth {depth}, interlace {interlace}"
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    palette = b"".join(body for kind, body in chunks if kind == b"PLTE")
    trns = b"".join(body for kind, body in chunks if kind == b"tRNS")
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    assert len(raw) == height * (stride + 1), "IDAT has the wrong length"

    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
            else:
                assert ftype == 0, f"bad filter type {ftype}"
        rows.append(line)
        prev = line

    def key_alpha(colour: tuple[int, ...]) -> int:
        if not trns:  # tRNS for grey/RGB names one 16-bit colour that is transparent
            return 255
        key = struct.unpack(f">{len(colour)}H", trns[: 2 * len(colour)])
        return 0 if key == colour else 255

    pixels: list[tuple[int, int, int, int]] = []
    for line in rows:
        for x in range(width):
            px = line[x * channels : (x + 1) * channels]
            if ctype == 6:
                pixels.append((px[0], px[1], px[2], px[3]))
            elif ctype == 2:
                pixels.append((px[0], px[1], px[2], key_alpha((px[0], px[1], px[2]))))
            elif ctype == 4:
                pixels.append((px[0], px[0], px[0], px[1]))
            elif ctype == 0:
                pixels.append((px[0], px[0], px[0], key_alpha((px[0],))))
            else:
                index = px[0]
                r, g, b = palette[3 * index : 3 * index + 3]
                pixels.append((r, g, b, trns[index] if index < len(trns) else 255))
    return width, height, pixels


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("package")
    return build_ok(tmp, ["--app-id", APP_ID, "--host", HOST, "--version", VERSION])


@pytest.fixture(scope="module")
def manifest(package: Path) -> dict[str, Any]:
    return read_manifest(package)


@pytest.fixture(scope="session")
def schema_package() -> Path:
    """The pinned @microsoft/app-manifest, installed with `npm ci` if it is missing."""
    if not (SCHEMA_PACKAGE / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                f"the official manifest schemas are not installed and npm is not on PATH: "
                f"run `npm ci` in {SCHEMA_PROJECT.relative_to(ROOT)}"
            )
        result = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=SCHEMA_PROJECT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            pytest.fail(f"`npm ci` in {SCHEMA_PROJECT} failed:\n{result.stdout}\n{result.stderr}")
    lock = json.loads((SCHEMA_PROJECT / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/@microsoft/app-manifest"]["version"]
    installed = json.loads((SCHEMA_PACKAGE / "package.json").read_text())["version"]
    assert installed == pinned, f"node_modules has {installed}, the lock pins {pinned}: run npm ci"
    return SCHEMA_PACKAGE


# --------------------------------------------------------------------------- the package


def test_zip_holds_exactly_the_manifest_and_the_two_icons_at_its_root(package: Path) -> None:
    with zipfile.ZipFile(package) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
        assert sorted(names) == sorted(PACKAGE_FILES)  # no folders, no duplicates, no extras
        for name in ("color.png", "outline.png"):
            assert zf.read(name) == (MANIFEST_DIR / name).read_bytes()


def test_manifest_validates_against_the_official_schema_of_its_version(
    manifest: dict[str, Any], schema_package: Path
) -> None:
    version = manifest["manifestVersion"]
    assert re.fullmatch(r"1\.\d+", version), version
    assert manifest["$schema"] == SCHEMA_URL.format(version=version)
    teams_schemas = schema_package / "build" / "json-schemas" / "teams"
    schema_file = teams_schemas / f"v{version}" / "MicrosoftTeams.schema.json"
    assert schema_file.is_file(), f"@microsoft/app-manifest ships no schema for {version}"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert schema["properties"]["manifestVersion"].get("const") == version

    # No check_schema(): a few patterns in unrelated parts (Office add-in "extensions") use
    # ECMA-262 \p{L}, which Python's re cannot compile; validation compiles patterns lazily.
    cls = validator_for(schema, default=Draft4Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors
    )


def test_microsofts_own_validator_accepts_the_manifest(
    package: Path, schema_package: Path, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH (needed by manifest/schema/validate.cjs)")
    manifest_file = tmp_path / "manifest.json"
    with zipfile.ZipFile(package) as zf:
        manifest_file.write_bytes(zf.read("manifest.json"))
    result = subprocess.run(
        [node, str(SCHEMA_PROJECT / "validate.cjs"), str(manifest_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    broken = json.loads(manifest_file.read_text())
    broken["accentColor"] = "blue"
    manifest_file.write_text(json.dumps(broken))
    result = subprocess.run(
        [node, str(SCHEMA_PROJECT / "validate.cjs"), str(manifest_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "accentColor" in result.stdout


def test_manifest_is_filled_in_for_this_bot(manifest: dict[str, Any]) -> None:
    assert "{{" not in json.dumps(manifest)
    assert manifest["id"] == APP_ID
    assert manifest["version"] == VERSION
    assert manifest["validDomains"] == [HOST]
    assert manifest["webApplicationInfo"] == {"id": APP_ID, "resource": f"api://botid-{APP_ID}"}
    assert manifest["icons"] == {"color": "color.png", "outline": "outline.png"}
    assert re.fullmatch(r"#[0-9A-Fa-f]{6}", manifest["accentColor"])

    developer = manifest["developer"]
    assert 0 < len(developer["name"]) <= 32
    assert developer["websiteUrl"] == f"https://{HOST}/"
    assert developer["privacyUrl"] == f"https://{HOST}/privacy"
    assert developer["termsOfUseUrl"] == f"https://{HOST}/terms"

    assert manifest["name"]["short"] and len(manifest["name"]["short"]) <= 30
    assert 20 <= len(manifest["description"]["short"]) <= 80
    full = manifest["description"]["full"]
    assert 200 <= len(full) <= 4000
    for topic in ("number", "Teams seats", "SIP channels", "licenses", "service packs", "approv"):
        assert topic in full

    [bot] = manifest["bots"]
    assert bot["botId"] == APP_ID
    assert sorted(bot["scopes"]) == ["groupChat", "personal", "team"]
    assert bot["supportsFiles"] is False
    assert bot["isNotificationOnly"] is False


def test_command_lists_cover_every_scope_with_the_main_commands(manifest: dict[str, Any]) -> None:
    [bot] = manifest["bots"]
    covered: list[str] = []
    for command_list in bot["commandLists"]:
        covered += command_list["scopes"]
        titles = [c["title"] for c in command_list["commands"]]
        assert titles == COMMANDS
        for command in command_list["commands"]:
            assert len(command["title"]) <= 32, command
            assert 0 < len(command.get("description", "")) <= 128, command
    assert sorted(covered) == sorted(bot["scopes"]), "each scope in exactly one command list"


def test_package_is_reproducible(tmp_path: Path, package: Path) -> None:
    again = build_ok(tmp_path, ["--app-id", APP_ID, "--host", HOST, "--version", VERSION])
    assert again.read_bytes() == package.read_bytes()


# --------------------------------------------------------------------------- icons


def test_color_icon_is_192_square_and_full_colour(package: Path) -> None:
    with zipfile.ZipFile(package) as zf:
        width, height, pixels = read_png(zf.read("color.png"))
    assert (width, height) == (192, 192)
    assert all(p[3] == 255 for p in pixels), "the colour icon should be opaque"
    colours = {p[:3] for p in pixels}
    assert len(colours) > 8, "expected a coloured glyph on a coloured background"
    background = pixels[0][:3]
    assert background != (255, 255, 255) and len(set(background)) > 1, "coloured background"


def test_outline_icon_is_32_square_white_on_transparent(package: Path) -> None:
    with zipfile.ZipFile(package) as zf:
        width, height, pixels = read_png(zf.read("outline.png"))
    assert (width, height) == (32, 32)
    offending = [
        (i % width, i // width, p)
        for i, p in enumerate(pixels)
        if p[3] != 0 and p[:3] != (255, 255, 255)
    ]
    assert not offending, f"non-white visible pixels, e.g. {offending[:5]}"
    corners = [pixels[0], pixels[width - 1], pixels[-width], pixels[-1]]
    assert all(p[3] == 0 for p in corners), "the background must be transparent"
    opaque = sum(1 for p in pixels if p[3] == 255)
    assert 100 <= opaque <= 800, f"expected a visible glyph, {opaque} opaque pixels"


def test_icons_script_still_draws_the_committed_icons(tmp_path: Path) -> None:
    pytest.importorskip("PIL", reason="Pillow is only needed to redraw the icons")
    result = subprocess.run(
        [sys.executable, str(MANIFEST_DIR / "icons.py"), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("color.png", "outline.png"):
        w1, h1, drawn = read_png((tmp_path / name).read_bytes())
        w2, h2, committed = read_png((MANIFEST_DIR / name).read_bytes())
        assert (w1, h1) == (w2, h2)
        # Allow for small anti-aliasing differences between Pillow versions.
        worst = max(
            abs(a - b)
            for p, q in zip(drawn, committed, strict=True)
            for a, b in zip(p, q, strict=True)
        )
        assert worst <= 16, f"{name} differs from manifest/icons.py output: run it and commit"


# --------------------------------------------------------------------------- options


def test_settings_can_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "MicrosoftAppId": APP_ID.upper(),
        "FUSION_PUBLIC_HOST": "Bot.Example.ORG",
        "FUSION_DEVELOPER_NAME": "Contoso Voice",
        "FUSION_PRIVACY_URL": "https://contoso.example/privacy",
    }
    out = build_ok(tmp_path, [], env)
    manifest = read_manifest(out)
    assert manifest["id"] == APP_ID  # normalised to lower case
    assert manifest["validDomains"] == ["bot.example.org"]
    assert manifest["developer"]["name"] == "Contoso Voice"
    assert manifest["developer"]["privacyUrl"] == "https://contoso.example/privacy"
    assert manifest["developer"]["termsOfUseUrl"] == "https://bot.example.org/terms"
    with (ROOT / "pyproject.toml").open("rb") as f:
        assert manifest["version"] == tomllib.load(f)["project"]["version"]


def test_options_win_over_the_environment(tmp_path: Path) -> None:
    other = "0b7e5c1d-2222-4333-8444-555566667777"
    env = {"MicrosoftAppId": other, "FUSION_PUBLIC_HOST": "env.example.org"}
    manifest = read_manifest(build_ok(tmp_path, ["--app-id", APP_ID, "--host", HOST], env))
    assert manifest["id"] == APP_ID and manifest["validDomains"] == [HOST]


def test_missing_settings_are_named(tmp_path: Path) -> None:
    result = run_build(["--host", HOST], tmp_path)
    assert result.returncode == 2
    assert "--app-id" in result.stderr and "MicrosoftAppId" in result.stderr
    result = run_build(["--app-id", APP_ID], tmp_path)
    assert result.returncode == 2
    assert "--host" in result.stderr and "FUSION_PUBLIC_HOST" in result.stderr


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    result = run_build(
        ["--app-id", APP_ID], tmp_path, {"FUSION_PUBLIC_HOST": "https://x.example.com"}
    )
    assert result.returncode == 2
    assert "FUSION_PUBLIC_HOST" in result.stderr and "scheme" in result.stderr


@pytest.mark.parametrize(
    "app_id",
    [
        "not-a-guid",
        "6f1c2e3a1b2c4d5e8f90123456789abc",  # no hyphens
        "{6f1c2e3a-1b2c-4d5e-8f90-123456789abc}",  # registry-style braces
        "6f1c2e3a-1b2c-4d5e-8f90-123456789abg",  # not hex
        "6f1c2e3a-1b2c-4d5e-8f90-123456789abc0",  # too long
        "00000000-0000-0000-0000-000000000000",
        "",
    ],
)
def test_an_app_id_that_is_not_a_guid_is_refused(tmp_path: Path, app_id: str) -> None:
    result = run_build([f"--app-id={app_id}", "--host", HOST, "--out", "x.zip"], tmp_path)
    assert result.returncode == 2, result.stdout
    assert "--app-id" in result.stderr and "GUID" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("https://fusion-bot.example.com", "scheme"),
        ("http://fusion-bot.example.com/", "scheme"),
        ("fusion-bot.example.com/api/messages", "path"),
        ("fusion-bot.example.com/", "path"),
        ("fusion-bot.example.com?x=1", "path"),
        ("fusion-bot.example.com:443", "port"),
        ("user@fusion-bot.example.com", "user"),
        ("10.1.2.3", "IP address"),
        ("[2001:db8::1]", "IP address"),
        ("localhost", "domain"),
        ("*.example.com", "wildcard"),
        ("fusion_bot.example.com", "valid host name"),
        ("-bot.example.com", "valid host name"),
        ("bot..example.com", "valid host name"),
        ("fusion bot.example.com", "valid host name"),
        ("bücher.example.com", "punycode"),
        ("", "empty"),
    ],
)
def test_a_host_that_is_not_a_bare_host_name_is_refused(
    tmp_path: Path, host: str, why: str
) -> None:
    result = run_build(["--app-id", APP_ID, f"--host={host}", "--out", "x.zip"], tmp_path)
    assert result.returncode == 2, result.stdout
    assert "--host" in result.stderr and why in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--version", "1.0"],
        ["--version", "v1.2.3"],
        ["--version", "01.2.3"],
        ["--version", "1.2.3-beta"],
        ["--developer-url", "http://insecure.example.com/"],
        ["--privacy-url", "privacy"],
        ["--developer-name", "x" * 33],
    ],
)
def test_other_bad_options_are_refused(tmp_path: Path, args: list[str]) -> None:
    result = run_build(["--app-id", APP_ID, "--host", HOST, *args, "--out", "x.zip"], tmp_path)
    assert result.returncode == 2, result.stdout
    assert args[0] in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.zip").exists()
