"""Teams SSO through the Bot Framework protocol, as Microsoft's bot SSO docs describe it.

1. The first time the bot needs a user's groups (an admin command, in a personal chat, with no
   remembered SSO answer for them) it posts an OAuth card: the Azure Bot's OAuth connection
   (`FUSION_SSO_CONNECTION`), and the `tokenExchangeResource` and sign-in link that the token
   service's `GetSignInResource` gives for this conversation. The command itself goes on,
   decided through Graph as without SSO.
2. Teams does not show such a card: it gets the user a token for the resource's URI
   (`api://botid-APP_ID`) and sends it in a `signin/tokenExchange` invoke. The bot checks the
   token itself (bot/auth/sso.py: signature, issuer, audience, user) and has the token service
   exchange it for the connection; both must work. Then 200, and the token's groups decide the
   next commands without Graph. Otherwise 412 with `failureDetail`, and Teams shows the card's
   sign-in button.
3. After signing in with the button, Teams sends `signin/verifyState` with a code; the token
   service turns it into the user's token (`GetToken`). 200 when it does (its groups are used if
   it is a token for this app), 404 when it does not.

Without an OAuth connection no card is sent; a `signin/tokenExchange` is still checked (the
token read, no exchange). Nothing is ever learned about identity from a token: the caller is the
authenticated activity's.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import aiohttp
from botbuilder.core import CardFactory, InvokeResponse, MessageFactory, TurnContext
from botbuilder.schema import ActionTypes, Activity, CardAction, OAuthCard
from botframework.connector.auth import UserTokenClient

from bot.auth.actor import Actor
from bot.auth.credentials import ClientCredentials
from bot.auth.sso import SsoGroups, SsoRejected, TeamsSso, TokenService, TokenServiceError
from bot.commands.grammar import UsageError, tokenize
from bot.commands.registry import Access, find
from bot.config import Settings

log = logging.getLogger("bot.teams.sso")

TOKEN_EXCHANGE = "signin/tokenExchange"
VERIFY_STATE = "signin/verifyState"
INVOKES = frozenset({TOKEN_EXCHANGE, VERIFY_STATE})
#: Exchange ids answered recently: Teams may send the same exchange more than once.
EXCHANGES_KEPT = 1_000
#: Users offered a card recently (object id → when), so a card goes out once, not per command.
OFFERS_KEPT = 10_000


class SsoFlow:
    def __init__(
        self, settings: Settings, sso: TeamsSso, token_service: TokenService | None
    ) -> None:
        self._app_id = settings.app_id
        self._connection = settings.sso_connection
        self._sso = sso
        self._tokens = token_service if settings.sso_connection else None
        self._offer_every = max(settings.membership_cache_seconds, 60)
        self._offered: dict[str, float] = {}
        self._answered: dict[tuple[str, str, str], InvokeResponse] = {}

    def groups_for(self, object_id: str) -> SsoGroups | None:
        return self._sso.groups_for(object_id)

    # ----- 1. the OAuth card ------------------------------------------------------------------

    async def offer(self, turn_context: TurnContext, actor: Actor) -> None:
        """Post the OAuth card if this user's groups are not known from SSO yet."""
        activity = turn_context.activity
        conversation = activity.conversation
        if (
            self._tokens is None
            or not actor.object_id
            or conversation is None
            or (conversation.conversation_type or "personal") != "personal"
            or self._sso.groups_for(actor.object_id) is not None
        ):
            return
        now = time.monotonic()
        key = actor.object_id.lower()
        if now - self._offered.get(key, float("-inf")) < self._offer_every:
            return
        if len(self._offered) >= OFFERS_KEPT:
            del self._offered[next(iter(self._offered))]
        self._offered[key] = now
        try:
            state = UserTokenClient.create_token_exchange_state(
                self._app_id, self._connection, _botbuilder_activity(activity)
            )
            resource = await self._tokens.sign_in_resource(state)
            card = OAuthCard(
                text="Sign in to Fusion Products",
                connection_name=self._connection,
                token_exchange_resource={
                    "id": resource.exchange_id,
                    "uri": resource.exchange_uri,
                    "providerId": resource.provider_id,
                },
                buttons=[
                    CardAction(
                        type=ActionTypes.signin, title="Sign in", value=resource.sign_in_link
                    )
                ],
            )
            await turn_context.send_activity(
                MessageFactory.attachment(CardFactory.oauth_card(card))
            )
        except (TokenServiceError, TypeError) as exc:
            # SSO is an optimisation: the command is decided through Graph anyway.
            log.warning("no SSO card sent: %s", exc)

    # ----- 2. and 3. the invokes --------------------------------------------------------------

    async def invoke(self, activity: Activity, actor: Actor) -> InvokeResponse:
        value: Mapping[str, Any] = activity.value if isinstance(activity.value, Mapping) else {}
        if activity.name == VERIFY_STATE:
            return await self._verify_state(activity, actor, value)
        exchange_id = str(value["id"]) if isinstance(value.get("id"), str) else ""
        token = str(value["token"]) if isinstance(value.get("token"), str) else ""
        # The same exchange (id and token) sent again: the same answer, not a second exchange.
        key = (actor.object_id.lower(), exchange_id, hashlib.sha256(token.encode()).hexdigest())
        if exchange_id and key in self._answered:
            return self._answered[key]
        answer = await self._token_exchange(activity, actor, value)
        if exchange_id:
            if len(self._answered) >= EXCHANGES_KEPT:
                del self._answered[next(iter(self._answered))]
            self._answered[key] = answer
        return answer

    async def _token_exchange(
        self, activity: Activity, actor: Actor, value: Mapping[str, Any]
    ) -> InvokeResponse:
        token = value.get("token")
        connection = value.get("connectionName")
        try:
            if not isinstance(token, str) or not token:
                raise SsoRejected("no token")
            if self._tokens is not None and connection != self._connection:
                raise SsoRejected(f"the connection {connection!r} is not this bot's")
            # Checked, then exchanged: only a token that passes both counts.
            found = await self._sso.check(
                token, object_id=actor.object_id, tenant_id=actor.tenant_id
            )
            if self._tokens is not None:
                await self._tokens.exchange(
                    _user_id(activity), self._connection, activity.channel_id or "msteams", token
                )
            self._sso.remember(actor.object_id, found)
        except (SsoRejected, TokenServiceError) as exc:
            log.warning("SSO token exchange failed: %s", exc)
            return InvokeResponse(
                status=int(HTTPStatus.PRECONDITION_FAILED),
                body={
                    "id": value.get("id"),
                    "connectionName": value.get("connectionName"),
                    "failureDetail": f"The token could not be used: {exc}",
                },
            )
        return InvokeResponse(
            status=int(HTTPStatus.OK),
            body={"id": value.get("id"), "connectionName": value.get("connectionName")},
        )

    async def _verify_state(
        self, activity: Activity, actor: Actor, value: Mapping[str, Any]
    ) -> InvokeResponse:
        code = value.get("state")
        if self._tokens is None or not isinstance(code, str) or not code or len(code) > 1000:
            return InvokeResponse(status=int(HTTPStatus.NOT_FOUND))
        try:
            token = await self._tokens.user_token(
                _user_id(activity), self._connection, activity.channel_id or "msteams", code
            )
        except TokenServiceError as exc:
            log.warning("SSO sign-in could not be verified: %s", exc)
            return InvokeResponse(status=int(HTTPStatus.NOT_FOUND))
        if token is None:
            return InvokeResponse(status=int(HTTPStatus.NOT_FOUND))
        try:
            await self._sso.exchange(token, object_id=actor.object_id, tenant_id=actor.tenant_id)
        except SsoRejected as exc:
            # Signed in, but the token is not one this bot reads (e.g. for Graph): Graph decides.
            log.info("signed in; the token says nothing about groups here: %s", exc)
        return InvokeResponse(status=int(HTTPStatus.OK))


def _botbuilder_activity(activity: Any) -> Activity:
    """The activity in botbuilder's schema (the Agents SDK edge hands over the SDK's own)."""
    if isinstance(activity, Activity) or not hasattr(activity, "model_dump"):
        return activity  # type: ignore[no-any-return]
    found: Activity = Activity().deserialize(
        activity.model_dump(by_alias=True, exclude_none=True, mode="json")
    )
    return found


def sso_flow(
    settings: Settings, session: aiohttp.ClientSession, credentials: ClientCredentials | None
) -> SsoFlow:
    """The SSO flow of a bot with an app id: the token service only with an OAuth connection."""
    tokens = (
        TokenService(session, settings.token_service_url, credentials.connector_token)
        if settings.sso_connection and credentials is not None
        else None
    )
    return SsoFlow(settings, TeamsSso(settings, session), tokens)


def needs_groups(text: str) -> bool:
    """Whether the typed command is decided on the caller's groups (everything but `help` and
    `whoami`, and what is not a command at all)."""
    try:
        spec = find(tokenize(text))
    except UsageError:
        return False
    return spec is not None and spec.access is not Access.PUBLIC


def _user_id(activity: Activity) -> str:
    """The token service keys users by the channel's user id (Teams: `29:…`)."""
    sender = activity.from_property
    return (sender.id if sender else None) or ""
