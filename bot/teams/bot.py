"""The activity handler: a Teams turn in, one Adaptive Card out.

A typed message has the bot's @mention stripped and runs through the one command dispatcher;
a card button (Action.Execute invoke, or the Action.Submit fallback that arrives as a message
with a `value`) goes to `bot.teams.card_actions`. The caller is built from the authenticated
activity (Entra object id, name, tenant, conversation), never from card data. Turns keep the stored
conversation reference that proactive posts (digests, approvals) use up to date: a turn whose
conversation, sender and service URL look as they did on a turn of the last minute skips the
database (most turns do); anything new, and every conversation at least once a minute, is
stored (which also makes a conversation marked inactive active again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from botbuilder.core import InvokeResponse, TurnContext
from botbuilder.schema import (
    Activity,
    ActivityTypes,
    AdaptiveCardInvokeResponse,
    AdaptiveCardInvokeValue,
)

from bot.auth.actor import Actor
from bot.auth.policy import Policy
from bot.commands.dispatch import run_text
from bot.commands.registry import Context, Services
from bot.commands.reply import Reply
from bot.commands.words import known_zone
from bot.config import Settings
from bot.domain import conversations
from bot.teams.approval_cards import after_reply, card_activity
from bot.teams.botbuilder_internals import RepairedActivityHandler
from bot.teams.card_actions import handle_card_action, same_answer
from bot.teams.render import render
from bot.teams.sso import INVOKES as SSO_INVOKES
from bot.teams.sso import SsoFlow, needs_groups

log = logging.getLogger("bot.teams.bot")

#: How long a stored conversation reference is taken as current without looking again.
REFERENCE_FRESH_SECONDS = 60.0
#: Conversations whose last stored reference this process remembers.
REFERENCES_KEPT = 10_000
#: Idempotency keys of activities (card forms have `form:` keys of their own).
ACTIVITY_KEY_PREFIX = "activity:"
#: A turn still working after this long shows Teams' typing indicator until its answer.
TYPING_AFTER_SECONDS = 0.5


class TypingIndicator:
    """Teams' typing indicator for a turn that takes longer than `delay` seconds: one typing
    activity, sent only if no answer went out first. A send once begun is let finish (never
    cut off mid-request), so the indicator always arrives before the answer."""

    def __init__(self, turn_context: TurnContext, delay: float) -> None:
        self._turn = turn_context
        self._sending = False
        self._task = asyncio.create_task(self._run(delay))

    async def _run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._sending = True
        try:
            await self._turn.send_activity(Activity(type=ActivityTypes.typing))
        except Exception as exc:  # the answer still goes out; the indicator is a courtesy
            log.info("typing indicator not sent: %r", exc)

    async def stop(self) -> None:
        """Before the turn's first card: no indicator after it."""
        if self._sending:
            await asyncio.shield(self._task)
        else:
            self._task.cancel()


class CardInPlace:
    """The turn's answer as one card: a bulk operation posts it with its first progress report
    and updates it as it goes; the final answer replaces it (or is posted, when nothing was)."""

    def __init__(self, turn_context: TurnContext) -> None:
        self._turn = turn_context
        self.activity_id: str | None = None

    async def show(self, reply: Reply) -> str | None:
        activity = card_activity(render(reply))
        if self.activity_id is None:
            sent = await self._turn.send_activity(activity)
            self.activity_id = sent.id if sent else None
        else:
            activity.id = self.activity_id
            await self._turn.update_activity(activity)
        return self.activity_id

    async def show_progress(self, reply: Reply) -> None:
        # Progress is a courtesy: a failed update must not stop the bulk operation itself.
        try:
            await self.show(reply)
        except Exception:
            log.warning("could not show progress", exc_info=True)


def tenant_of(activity: Activity) -> str | None:
    """The Entra tenant of the conversation (Teams puts it in channelData.tenant.id)."""
    data = activity.channel_data if isinstance(activity.channel_data, Mapping) else {}
    tenant = data.get("tenant")
    if isinstance(tenant, Mapping) and isinstance(tenant.get("id"), str) and tenant["id"]:
        return str(tenant["id"])
    conversation = activity.conversation
    if conversation is None:
        return None
    extra = getattr(conversation, "additional_properties", None) or {}  # botbuilder's schema
    found = conversation.tenant_id or extra.get("tenantId")
    return found if isinstance(found, str) and found else None


def activity_key(activity: Activity) -> str | None:
    """What makes an activity the same one again: Teams redelivers an activity it got no answer
    for with the same id, but message ids are unique only within a conversation. So the key is
    the tenant, the conversation and the id together, hashed (fixed length, whatever the
    lengths of the three: a cut-off key could make two activities one)."""
    if not activity.id:
        return None
    conversation = activity.conversation.id if activity.conversation else None
    scope = json.dumps([tenant_of(activity) or "", conversation or "", str(activity.id)])
    return ACTIVITY_KEY_PREFIX + hashlib.sha256(scope.encode()).hexdigest()


def actor_from(activity: Activity, source: str) -> Actor:
    """Who is calling, from the authenticated activity."""
    sender = activity.from_property
    return Actor(
        object_id=(sender.aad_object_id if sender else None) or "",
        name=(sender.name if sender else None) or "",
        tenant_id=tenant_of(activity),
        source=source,
        correlation_id=activity.id,
        # The same activity delivered again has one effect (a card submission's form key
        # replaces this one: `bot.teams.cards`).
        idempotency_key=activity_key(activity),
        conversation_id=activity.conversation.id if activity.conversation else None,
        timezone=client_timezone(activity),
    )


def client_timezone(activity: Activity) -> str | None:
    """The IANA time zone of the `clientInfo` entity Teams sends with a message, if valid."""
    for entity in activity.entities if isinstance(activity.entities, list) else []:
        kind = getattr(entity, "type", None)
        if not isinstance(kind, str) or kind.lower() != "clientinfo":
            continue
        zone = (entity.additional_properties or {}).get("timezone")
        if isinstance(zone, str) and 0 < len(zone) <= 64 and known_zone(zone):
            return zone
    return None


def command_text(activity: Activity) -> str:
    """The typed text without the bot's @mention (`<at>Bot</at>`) around it."""
    text = activity.text if isinstance(activity.text, str) else ""
    bot_id = activity.recipient.id if activity.recipient else None
    for entity in activity.entities if isinstance(activity.entities, list) else []:
        kind = getattr(entity, "type", None)
        if not isinstance(kind, str) or kind.lower() != "mention":
            continue
        extra = entity.additional_properties or {}
        mentioned = extra.get("mentioned", getattr(entity, "mentioned", None))
        mention = extra.get("text", getattr(entity, "text", None))
        # The Agents SDK parses a mention into a model (`Mention.mentioned.id`).
        mentioned_id = (
            mentioned.get("id")
            if isinstance(mentioned, Mapping)
            else getattr(mentioned, "id", None)
        )
        if mentioned is not None and mentioned_id == bot_id and isinstance(mention, str):
            text = text.replace(mention, " ") if mention else text
    return text.replace("\u00a0", " ").strip()


class FusionBot(RepairedActivityHandler):
    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        services: Services,
        sso: SsoFlow | None = None,
        reference_of: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        # The stored conversation reference as JSON, from the SDK's activity (an edge's own).
        self._reference_of = reference_of or _serialized_reference
        self._policy = policy
        self._services = services
        self._sso = sso
        # conversation id -> (what its stored reference was made from, when it was stored)
        self._stored: dict[str, tuple[tuple[Any, ...], float]] = {}

    def _context(self, actor: Actor, services: Services | None = None) -> Context:
        return Context(
            actor=actor,
            settings=self._settings,
            policy=self._policy,
            services=services or self._services,
        )

    def _actor(self, activity: Activity, source: str) -> Actor:
        """The caller, with the groups their last valid Teams SSO token listed (if remembered)."""
        actor = actor_from(activity, source)
        found = self._sso.groups_for(actor.object_id) if self._sso else None
        if found is None:
            return actor
        return replace(actor, sso_groups=found.groups, sso_groups_overage=found.overage)

    async def on_turn(self, turn_context: TurnContext) -> None:
        await self._track_conversation(turn_context.activity)
        await super().on_turn(turn_context)

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        text = command_text(activity)
        if not text and isinstance(activity.value, Mapping):
            # Action.Submit fallback: the card's data comes back as a message with a value;
            # the card module answers it (updating the clicked card where it can).
            actor = self._actor(activity, "card")
            await handle_card_action(turn_context, actor, self._context(actor))
            return
        actor = self._actor(activity, "chat")
        if self._sso is not None and needs_groups(text):
            if self._policy.tenant_allowed(actor).allowed:
                await self._sso.offer(turn_context, actor)  # Teams SSO: an OAuth card, once
        card = CardInPlace(turn_context)
        typing = TypingIndicator(turn_context, TYPING_AFTER_SECONDS)

        async def progress(report: Reply) -> None:
            await typing.stop()  # the progress card is showing: no indicator after it
            await card.show_progress(report)

        services = replace(self._services, progress=progress)
        try:
            reply = await run_text(text, self._context(actor, services))
            reply = await same_answer(reply)  # a redelivered activity: what the first one did
        finally:
            await typing.stop()
        await after_reply(turn_context, reply, await card.show(reply))

    async def on_adaptive_card_invoke(
        self, turn_context: TurnContext, invoke_value: AdaptiveCardInvokeValue
    ) -> AdaptiveCardInvokeResponse | None:
        actor = self._actor(turn_context.activity, "card")
        return await handle_card_action(turn_context, actor, self._context(actor))

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse | None:
        if turn_context.activity.name in SSO_INVOKES:
            return await self._sign_in(turn_context.activity)
        return await super().on_invoke_activity(turn_context)

    async def _sign_in(self, activity: Activity) -> InvokeResponse:
        """Teams SSO's invokes (bot/teams/sso.py); identity stays the authenticated activity's."""
        if self._sso is None:
            log.warning("SSO invoke refused: local development mode")
            value = activity.value if isinstance(activity.value, Mapping) else {}
            return InvokeResponse(
                status=int(HTTPStatus.PRECONDITION_FAILED),
                body={
                    "id": value.get("id"),
                    "connectionName": value.get("connectionName"),
                    "failureDetail": "This bot does not use Teams SSO (local development mode).",
                },
            )
        return await self._sso.invoke(activity, actor_from(activity, "chat"))

    async def _track_conversation(self, activity: Activity) -> None:
        """Keep the conversation reference current (or mark it gone when the bot is removed).

        Conversations of tenants the bot does not serve are not kept."""
        if not activity.conversation or not activity.conversation.id or not activity.service_url:
            return
        cid = activity.conversation.id
        try:
            if _bot_removed(activity):
                self._stored.pop(cid, None)
                await conversations.mark_inactive(cid)
                return
            if not self._policy.tenant_allowed(actor_from(activity, "chat")).allowed:
                return
            seen = _reference_source(activity)
            stored = self._stored.get(cid)
            now = time.monotonic()
            fresh = stored is not None and now - stored[1] < REFERENCE_FRESH_SECONDS
            if fresh and stored is not None and stored[0] == seen:
                return
            reference = self._reference_of(activity)
            await conversations.remember(reference, tenant_of(activity), activity.service_url)
            self._stored.pop(cid, None)
            if len(self._stored) >= REFERENCES_KEPT:
                del self._stored[next(iter(self._stored))]
            self._stored[cid] = (seen, now)
        except Exception:  # the command still runs; only later proactive posts are affected
            self._stored.pop(cid, None)
            log.warning("could not store the conversation reference", exc_info=True)


def _serialized_reference(activity: Activity) -> dict[str, Any]:
    found: dict[str, Any] = TurnContext.get_conversation_reference(activity).serialize()
    return found


def _account(account: Any) -> tuple[Any, ...]:
    if account is None:
        return ()
    return (account.id, account.name, getattr(account, "aad_object_id", None), account.role)


def _reference_source(activity: Activity) -> tuple[Any, ...]:
    """What a stored conversation reference is made from (all but the per-activity fields)."""
    conversation = activity.conversation
    return (
        activity.service_url,
        activity.channel_id,
        tenant_of(activity),
        _account(activity.from_property),
        _account(activity.recipient),
        (
            conversation.id,
            conversation.name,
            conversation.conversation_type,
            conversation.is_group,
            conversation.tenant_id,
        )
        if conversation
        else (),
    )


def _bot_removed(activity: Activity) -> bool:
    bot_id = activity.recipient.id if activity.recipient else None
    if activity.type == ActivityTypes.conversation_update:
        return any(m.id == bot_id for m in activity.members_removed or [])
    if activity.type == ActivityTypes.installation_update:
        return (activity.action or "").lower().startswith("remove")
    return False
