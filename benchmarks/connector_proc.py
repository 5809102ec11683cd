"""A lean fake Bot Connector in a process of its own: receives and counts the bots' replies.

    python benchmarks/connector_proc.py --tls DIR --entra-public-key PEM --app-id ID [--http]

Serves the Bot Connector routes under `/amer/` (like https://smba.trafficmanager.net/amer/).
Every request must carry the bot's own token (RS256 from the identity fake, audience
https://api.botframework.com, appid = the bot's), else 401 — checked once per distinct token.
For each reply it notes when it arrived (`time.monotonic_ns()`, the same clock in every
process on the machine) and the card's title, keyed by the activity it answers. The load
generator collects them with `GET /_control/drain` (and forgets them) or counts them with
`GET /_control/count`. Prints one JSON line (`service_url`, `control_url`) when ready; exits
when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import tls_files  # noqa: E402

PREFIX = "/amer/"
AUDIENCE = "https://api.botframework.com"


def title_of(activity: Any, blocks: int = 3) -> str:
    """The first TextBlocks of the first card (its title, its text, a form's reason) joined by
    " | ", else the activity's text: enough to tell a success from a refusal."""
    if not isinstance(activity, dict):
        return ""
    for attachment in activity.get("attachments") or []:
        found: list[str] = []
        stack = [attachment.get("content") if isinstance(attachment, dict) else None]
        while stack and len(found) < blocks:  # depth first, in document order
            node = stack.pop()
            if isinstance(node, dict):
                if node.get("type") == "TextBlock" and isinstance(node.get("text"), str):
                    found.append(str(node["text"])[:200])
                    continue
                stack.extend(reversed([v for v in node.values() if isinstance(v, (dict, list))]))
            elif isinstance(node, list):
                stack.extend(reversed(node))
        if found:
            return " | ".join(found)
    text = activity.get("text")
    return str(text)[:200] if text else ""


class Connector:
    def __init__(self, public_key: str, app_id: str) -> None:
        self.public_key = public_key
        self.app_id = app_id
        self.tokens: dict[str, float] = {}  # token -> exp (seconds since the epoch)
        self.replies: dict[str, tuple[int, str]] = {}
        self.received = 0
        self.refused = 0
        self.ids = itertools.count(1)

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        token = header[7:]
        exp = self.tokens.get(token)
        if exp is not None and exp > time.time():
            return True
        try:
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                audience=AUDIENCE,
                options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.InvalidTokenError:
            return False
        if claims.get("appid") != self.app_id:
            return False
        self.tokens[token] = float(claims["exp"])
        return True

    async def activity(self, request: web.Request) -> web.Response:
        at = time.monotonic_ns()
        if not self.authorized(request):
            self.refused += 1
            return web.json_response({"message": "Authorization has been denied."}, status=401)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": {"code": "BadArgument"}}, status=400)
        answered = request.match_info.get("aid") or (
            body.get("replyToId") if isinstance(body, dict) else None
        )
        self.received += 1
        key = str(answered) if answered else f"send:{self.received}"
        if request.method == "PUT":
            key = f"update:{key}"
        if key in self.replies:  # a second reply to the same activity (a redelivery)
            n = 2
            while f"{key}#{n}" in self.replies:
                n += 1
            key = f"{key}#{n}"
        self.replies[key] = (at, title_of(body))
        status = 200 if request.method == "PUT" else 201
        return web.json_response({"id": str(next(self.ids))}, status=status)

    async def create(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            self.refused += 1
            return web.json_response({"message": "Authorization has been denied."}, status=401)
        return web.json_response({"id": f"a:{next(self.ids)}"}, status=201)

    async def drain(self, request: web.Request) -> web.Response:
        replies, self.replies = self.replies, {}
        return web.json_response(
            {"replies": replies, "received": self.received, "refused": self.refused}
        )

    async def count(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"pending": len(self.replies), "received": self.received, "refused": self.refused}
        )


async def serve(args: argparse.Namespace, public_key: str) -> None:
    tls = tls_files(Path(args.tls))
    connector = Connector(public_key, args.app_id)
    app = web.Application(client_max_size=4 * 1024 * 1024)
    base = f"{PREFIX}v3/conversations"
    app.router.add_post(base, connector.create)
    app.router.add_post(base + "/{cid}/activities", connector.activity)
    app.router.add_post(base + "/{cid}/activities/{aid}", connector.activity)
    app.router.add_put(base + "/{cid}/activities/{aid}", connector.activity)
    control = web.Application()
    control.router.add_get("/_control/drain", connector.drain)
    control.router.add_get("/_control/count", connector.count)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    control_runner = web.AppRunner(control, access_log=None, handle_signals=False)
    await runner.setup()
    await control_runner.setup()
    site = web.TCPSite(
        runner,
        "127.0.0.1",
        0,
        ssl_context=None if args.http else tls.server_ssl_context(),
        backlog=1024,
    )
    await site.start()
    control_site = web.TCPSite(control_runner, "127.0.0.1", 0)
    await control_site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    control_port = control_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "http" if args.http else "https"
    print(
        json.dumps(
            {
                "service_url": f"{scheme}://127.0.0.1:{port}{PREFIX}",
                "control_url": f"http://127.0.0.1:{control_port}",
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)  # until the parent closes stdin
    await runner.cleanup()
    await control_runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls", required=True)
    parser.add_argument("--entra-public-key", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--http", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args, Path(args.entra_public_key).read_text()))


if __name__ == "__main__":
    main()
