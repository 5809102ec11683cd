"""Floor 1: the stock botbuilder 4.17.1 echo bot on CloudAdapter, with our auth settings.

    python benchmarks/floor_echo_bot.py        # environment as for `python app.py`

This is the Bot Framework sample (`02.echo-bot`) as written: `CloudAdapter` with
`ConfigurationBotFrameworkAuthentication`, `adapter.process(request, bot)`, and
`send_activity("Echo: ...")`. It validates every inbound token the stock way (OpenID metadata
and keys from the identity fake) and replies with the stock connector factory (a new msrest
ConnectorClient, msal application and HTTP connection per turn). Configured from the same
environment variables as the bot under test.

One shim: msal validates an authority it does not know by asking login.microsoftonline.com
(instance discovery), which this loopback-only machine cannot reach. The fake's host is added
to msal's list of known Microsoft hosts, so msal treats it exactly as it treats the real
login.microsoftonline.com in production (no discovery; tenant metadata, then the token).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import msal.authority
from aiohttp import web
from botbuilder.core import ActivityHandler, TurnContext
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication


class EchoBot(ActivityHandler):
    async def on_message_activity(self, turn_context: TurnContext) -> None:
        await turn_context.send_activity(f"Echo: {turn_context.activity.text}")


def main() -> None:
    authority = os.environ["FUSION_LOGIN_AUTHORITY"].rstrip("/")
    host = authority.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
    msal.authority.WELL_KNOWN_AUTHORITY_HOSTS = frozenset(
        {*msal.authority.WELL_KNOWN_AUTHORITY_HOSTS, host}
    )
    config = SimpleNamespace(
        APP_ID=os.environ["MicrosoftAppId"],
        APP_PASSWORD=os.environ["MicrosoftAppPassword"],
        APP_TYPE="MultiTenant",
        APP_TENANTID=os.environ.get("MicrosoftAppTenantId", ""),
        TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL=os.environ["FUSION_BOTFRAMEWORK_OPENID_METADATA"],
        TO_CHANNEL_FROM_BOT_LOGIN_URL=f"{authority}/botframework.com",
        TO_CHANNEL_FROM_BOT_OAUTH_SCOPE="https://api.botframework.com",
        # With any endpoint overridden botbuilder wants the whole public-cloud set spelled out.
        TO_BOT_FROM_CHANNEL_TOKEN_ISSUER="https://api.botframework.com",
        TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL=(
            "https://login.microsoftonline.com/botframework.com/v2.0/.well-known/openid-configuration"
        ),
        OAUTH_URL="https://api.botframework.com",
        CALLER_ID="urn:botframework:azure",
        VALIDATE_AUTHORITY=True,
    )
    adapter = CloudAdapter(ConfigurationBotFrameworkAuthentication(config))
    bot = EchoBot()

    async def messages(request: web.Request) -> web.Response:
        return await adapter.process(request, bot)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)


if __name__ == "__main__":
    main()
