"""Build the Teams app package (manifest.json + icons, zipped) for the Fusion Products bot.

    python manifest/build.py --app-id GUID --host HOST
                              [--version X.Y.Z] [--out build/appPackage.zip]

Options left out are read from the environment: ``MicrosoftAppId`` (the bot's Entra app
id, also used as the Teams app id and for SSO) and ``FUSION_PUBLIC_HOST`` (the public host
name the bot is served on, e.g. ``fusion-bot.example.com``).  The developer details shown
in the Teams store default to the bot's own host and can be overridden by options or by
``FUSION_DEVELOPER_NAME``, ``FUSION_DEVELOPER_URL``, ``FUSION_PRIVACY_URL`` and
``FUSION_TERMS_URL``.  The version defaults to the project version in ``pyproject.toml``.

The package holds exactly ``manifest.json``, ``color.png`` and ``outline.png`` at its root.
Standard library only, so it runs anywhere Python 3.11 does.  Exit status: 0 on success,
2 for bad options, 1 if the template or icons in ``manifest/`` are broken.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import struct
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "manifest.template.json"
PYPROJECT = HERE.parent / "pyproject.toml"
ICONS = {"color.png": (192, 192), "outline.png": (32, 32)}
DEFAULT_OUT = Path("build") / "appPackage.zip"
DEFAULT_DEVELOPER_NAME = "Fusion Products bot operator"

ENV_APP_ID = "MicrosoftAppId"
ENV_HOST = "FUSION_PUBLIC_HOST"
ENV_DEVELOPER_NAME = "FUSION_DEVELOPER_NAME"
ENV_DEVELOPER_URL = "FUSION_DEVELOPER_URL"
ENV_PRIVACY_URL = "FUSION_PRIVACY_URL"
ENV_TERMS_URL = "FUSION_TERMS_URL"

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
SEMVER_RE = re.compile(r"^(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)$")
LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
PLACEHOLDER_RE = re.compile(r"\{\{([A-Z_]+)\}\}")
# A fixed timestamp makes the zip byte-for-byte reproducible.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class OptionError(ValueError):
    """A bad option value; the message says what is wrong and what is expected."""


class TemplateError(RuntimeError):
    """The files in manifest/ themselves are broken."""


# --------------------------------------------------------------------------- validation


def parse_app_id(value: str, source: str = "--app-id") -> str:
    """The bot's Microsoft App Id: a GUID in the 8-4-4-4-12 form, returned in lower case."""
    value = value.strip()
    if not GUID_RE.match(value):
        raise OptionError(
            f"{source} must be a GUID like 00000000-0000-0000-0000-000000000000 "
            f"(the bot's Microsoft App Id), got {value!r}"
        )
    if set(value) <= {"0", "-"}:
        raise OptionError(f"{source} is the all-zero GUID; use the bot's real Microsoft App Id")
    return value.lower()


def parse_host(value: str, source: str = "--host") -> str:
    """A bare DNS host name (no scheme, port, path or wildcard), returned in lower case."""
    host = value.strip()
    example = "e.g. fusion-bot.example.com"
    if not host:
        raise OptionError(f"{source} is empty; give the bot's public host name, {example}")
    if "://" in host or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", host):
        raise OptionError(
            f"{source} must be a bare host name without a scheme, {example} "
            f"(not https://fusion-bot.example.com), got {value!r}"
        )
    if any(c in host for c in "/?#"):
        raise OptionError(
            f"{source} must be a bare host name without a path, {example}, got {value!r}"
        )
    if "@" in host:
        raise OptionError(
            f"{source} must be a bare host name without user info, {example}, got {value!r}"
        )
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise OptionError(
            f"{source} must be a DNS host name, not an IP address, {example}, got {value!r}"
        )
    if ":" in host:
        raise OptionError(
            f"{source} must be a bare host name without a port (Teams reaches the bot on 443), "
            f"{example}, got {value!r}"
        )
    if "*" in host:
        raise OptionError(
            f"{source} must be one host name, not a wildcard, {example}, got {value!r}"
        )
    if not host.isascii():
        raise OptionError(
            f"{source} must be ASCII; write an internationalised name in its xn-- (punycode) form, "
            f"got {value!r}"
        )
    host = host.lower()
    labels = host.split(".")
    if len(host) > 253 or not all(LABEL_RE.match(label) for label in labels):
        raise OptionError(
            f"{source} is not a valid host name (letters, digits and hyphens in dot-separated "
            f"labels of at most 63 characters), {example}, got {value!r}"
        )
    if len(labels) < 2:
        raise OptionError(
            f"{source} must be a fully qualified public host name with a domain, {example}, "
            f"got {value!r}"
        )
    if labels[-1].isdigit():
        raise OptionError(f"{source} must end in a top-level domain, {example}, got {value!r}")
    return host


def parse_version(value: str) -> str:
    value = value.strip()
    if not SEMVER_RE.match(value):
        raise OptionError(f"--version must be MAJOR.MINOR.PATCH, e.g. 1.4.0, got {value!r}")
    return value


def parse_https_url(source: str, value: str) -> str:
    value = value.strip()
    if not re.match(r"^https://[^\s/?#]+(?:[/?#]\S*)?$", value) or len(value) > 2048:
        raise OptionError(f"{source} must be an https:// URL, got {value!r}")
    return value


def parse_developer_name(source: str, value: str) -> str:
    value = value.strip()
    if not value or len(value) > 32:
        raise OptionError(f"{source} must be 1 to 32 characters, got {value!r}")
    return value


# --------------------------------------------------------------------------- building


def project_version() -> str:
    try:
        with PYPROJECT.open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise OptionError(
            f"--version not given and no project version could be read from {PYPROJECT}: {exc}"
        ) from exc


def fill(node: Any, values: Mapping[str, str]) -> Any:
    """Replace every {{NAME}} in the strings of a parsed JSON document."""
    if isinstance(node, dict):
        return {key: fill(item, values) for key, item in node.items()}
    if isinstance(node, list):
        return [fill(item, values) for item in node]
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise TemplateError(f"{TEMPLATE.name} uses an unknown placeholder {{{{{name}}}}}")
            return values[name]

        return PLACEHOLDER_RE.sub(substitute, node)
    return node


def render_manifest(values: Mapping[str, str], template: Path = TEMPLATE) -> dict[str, Any]:
    try:
        document = json.loads(template.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TemplateError(f"cannot read {template}: {exc}") from exc
    manifest = fill(document, values)
    leftover = PLACEHOLDER_RE.search(json.dumps(manifest))
    if leftover:
        raise TemplateError(f"placeholder {leftover.group(0)} was not filled")
    return manifest


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def read_icons(directory: Path = HERE) -> dict[str, bytes]:
    icons = {}
    for name, expected in ICONS.items():
        path = directory / name
        try:
            data = path.read_bytes()
            size = png_size(data)
        except (OSError, ValueError) as exc:
            raise TemplateError(
                f"{path}: {exc} (regenerate with python manifest/icons.py)"
            ) from exc
        if size != expected:
            raise TemplateError(
                f"{path} is {size[0]}x{size[1]}, Teams needs {expected[0]}x{expected[1]}"
            )
        icons[name] = data
    return icons


def write_package(out: Path, manifest: Mapping[str, Any], icons: Mapping[str, bytes]) -> None:
    """Write the zip atomically: exactly manifest.json and the icons, at the root."""
    files = {"manifest.json": (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()}
    files.update(icons)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- command line


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python manifest/build.py",
        description="Build the Teams app package (manifest.json, color.png, outline.png).",
    )
    parser.add_argument("--app-id", help=f"the bot's Microsoft App Id, a GUID (env {ENV_APP_ID})")
    parser.add_argument(
        "--host",
        help=f"public host name the bot is served on, e.g. fusion-bot.example.com (env {ENV_HOST})",
    )
    parser.add_argument(
        "--version", help="app version X.Y.Z (default: the version in pyproject.toml)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"zip to write (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--developer-name",
        help=f"publisher name shown in Teams, at most 32 characters "
        f"(env {ENV_DEVELOPER_NAME}, default: {DEFAULT_DEVELOPER_NAME!r})",
    )
    parser.add_argument(
        "--developer-url",
        help=f"publisher web site (env {ENV_DEVELOPER_URL}, default: https://HOST/)",
    )
    parser.add_argument(
        "--privacy-url",
        help=f"privacy statement (env {ENV_PRIVACY_URL}, default: https://HOST/privacy)",
    )
    parser.add_argument(
        "--terms-url", help=f"terms of use (env {ENV_TERMS_URL}, default: https://HOST/terms)"
    )
    return parser


def resolve_values(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """The placeholder values, from options, then the environment, then defaults."""
    app_id = args.app_id if args.app_id is not None else _env(environ, ENV_APP_ID)
    if app_id is None:
        raise OptionError(f"no app id: pass --app-id GUID or set {ENV_APP_ID}")
    host = args.host if args.host is not None else _env(environ, ENV_HOST)
    if host is None:
        raise OptionError(f"no host: pass --host HOST or set {ENV_HOST}")
    app_id = parse_app_id(app_id, "--app-id" if args.app_id is not None else ENV_APP_ID)
    host = parse_host(host, "--host" if args.host is not None else ENV_HOST)
    version = parse_version(args.version) if args.version is not None else project_version()
    if not SEMVER_RE.match(version):
        raise OptionError(
            f"the version in {PYPROJECT} ({version!r}) is not MAJOR.MINOR.PATCH; pass --version"
        )

    def pick(option: str, given: str | None, env_name: str, default: str) -> tuple[str, str]:
        """The value and where it came from (for error messages)."""
        if given is not None:
            return option, given
        from_env = _env(environ, env_name)
        return (env_name, from_env) if from_env is not None else (option, default)

    developer_name = pick(
        "--developer-name", args.developer_name, ENV_DEVELOPER_NAME, DEFAULT_DEVELOPER_NAME
    )
    developer_url = pick(
        "--developer-url", args.developer_url, ENV_DEVELOPER_URL, f"https://{host}/"
    )
    privacy_url = pick(
        "--privacy-url", args.privacy_url, ENV_PRIVACY_URL, f"https://{host}/privacy"
    )
    terms_url = pick("--terms-url", args.terms_url, ENV_TERMS_URL, f"https://{host}/terms")
    return {
        "APP_ID": app_id,
        "HOST": host,
        "VERSION": version,
        "DEVELOPER_NAME": parse_developer_name(*developer_name),
        "DEVELOPER_URL": parse_https_url(*developer_url),
        "PRIVACY_URL": parse_https_url(*privacy_url),
        "TERMS_URL": parse_https_url(*terms_url),
    }


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        values = resolve_values(args, os.environ if environ is None else environ)
    except OptionError as exc:
        parser.error(str(exc))  # prints usage and the error, exits with status 2
    try:
        manifest = render_manifest(values)
        icons = read_icons()
        write_package(args.out, manifest, icons)
    except TemplateError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{parser.prog}: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out} (manifest {manifest['manifestVersion']}, app {values['APP_ID']}, "
        f"host {values['HOST']}, version {values['VERSION']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
