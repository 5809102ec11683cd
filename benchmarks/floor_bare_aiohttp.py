"""Floor 2: bare aiohttp doing the same round trip, and nothing else.

    python benchmarks/floor_bare_aiohttp.py    # environment as for `python app.py`

Parses the posted activity and POSTs the reply to `serviceUrl/v3/conversations/{id}/
activities/{id}` on one kept-alive session, signed with the bot's token (asked for once at
start from the identity fake). No inbound token validation, no SDK: what a turn costs when
the framework costs nothing — the upper bound for any bot on this machine.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
from aiohttp import web

TOKEN = web.AppKey("token", str)
HTTP = web.AppKey("http", aiohttp.ClientSession)


async def _session(app: web.Application) -> AsyncIterator[None]:
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
    connector = aiohttp.TCPConnector(ssl=context, limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:
        authority = os.environ["FUSION_LOGIN_AUTHORITY"].rstrip("/")
        form = {
            "grant_type": "client_credentials",
            "client_id": os.environ["MicrosoftAppId"],
            "client_secret": os.environ["MicrosoftAppPassword"],
            "scope": "https://api.botframework.com/.default",
        }
        async with http.post(f"{authority}/botframework.com/oauth2/v2.0/token", data=form) as resp:
            resp.raise_for_status()
            app[TOKEN] = (await resp.json())["access_token"]
        app[HTTP] = http
        yield


async def messages(request: web.Request) -> web.Response:
    activity = await request.json()
    conversation = activity["conversation"]
    reply = {
        "type": "message",
        "text": f"Echo: {activity.get('text')}",
        "from": activity["recipient"],
        "recipient": activity["from"],
        "conversation": conversation,
        "replyToId": activity["id"],
    }
    base = activity["serviceUrl"].rstrip("/")
    url = (
        f"{base}/v3/conversations/{quote(conversation['id'], safe='')}"
        f"/activities/{quote(activity['id'], safe='')}"
    )
    headers = {"Authorization": f"Bearer {request.app[TOKEN]}"}
    async with request.app[HTTP].post(url, json=reply, headers=headers) as resp:
        await resp.read()
    return web.Response(status=201)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    app = web.Application()
    app.cleanup_ctx.append(_session)
    app.router.add_post("/api/messages", messages)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)


if __name__ == "__main__":
    main()
