"""Stored conversation references: where the bot may post proactively (digests, approvals).

The edge calls `remember` on every turn, so a reference is always the latest one Teams sent
and survives restarts. A conversation where the bot was removed or blocked (HTTP 403 from
the Bot Connector, or a "bot removed" conversation update) is marked inactive and skipped;
being addressed there again makes it active again.

These rows are plumbing, not ledger data: they are not audited. Subscribing a conversation
to a digest is (see `digests.subscribe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tortoise.exceptions import IntegrityError

from bot.domain.errors import InvalidInput
from bot.domain.models import ConversationRef

MAX_ID = 512
# Per-activity fields: they change on every turn and are of no use for posting later.
_VOLATILE = ("activityId", "activity_id", "locale")


def _conversation_id(reference: Mapping[str, Any]) -> str:
    conversation = reference.get("conversation")
    cid = conversation.get("id") if isinstance(conversation, Mapping) else None
    if not isinstance(cid, str) or not cid.strip():
        raise InvalidInput("The conversation reference has no conversation id.")
    if len(cid) > MAX_ID:
        raise InvalidInput(f"The conversation id is {len(cid)} characters long; at most {MAX_ID}.")
    return cid


def _stable(reference: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reference.items() if k not in _VOLATILE and v is not None}


async def remember(
    reference: Mapping[str, Any], tenant_id: str | None, service_url: str
) -> ConversationRef:
    """Store or refresh the reference of the conversation an activity came from.

    `reference` is a serialized Bot Framework ConversationReference (`conversation.id`,
    `serviceUrl`, `bot`, `user`, `channelId`...). The caller has already checked that
    `service_url` is a trusted Bot Connector URL. Writes only when something changed, so the
    usual turn costs one indexed read.
    """
    cid = _conversation_id(reference)
    if not isinstance(service_url, str) or not service_url or len(service_url) > MAX_ID:
        raise InvalidInput("The conversation reference has no usable service URL.")
    tenant = (tenant_id or None) and str(tenant_id)[:64]
    stable = _stable(reference)
    row = await ConversationRef.get_or_none(conversation_id=cid)
    if row is None:
        try:
            return await ConversationRef.create(
                conversation_id=cid,
                reference=stable,
                tenant_id=tenant,
                service_url=service_url,
                active=True,
            )
        except IntegrityError:
            # Another instance stored it between our read and our insert: refresh theirs.
            row = await ConversationRef.get(conversation_id=cid)
    if (row.reference, row.tenant_id, row.service_url, row.active) != (
        stable,
        tenant,
        service_url,
        True,
    ):
        row.reference, row.tenant_id, row.service_url, row.active = (
            stable,
            tenant,
            service_url,
            True,
        )
        await row.save(
            update_fields=["reference", "tenant_id", "service_url", "active", "updated_at"]
        )
    return row


async def find(conversation_id: str) -> ConversationRef | None:
    return await ConversationRef.get_or_none(conversation_id=conversation_id)


async def mark_inactive(conversation_id: str) -> bool:
    """The bot was removed or blocked there: stop posting. True if it was active."""
    changed = await ConversationRef.filter(conversation_id=conversation_id, active=True).update(
        active=False, updated_at=datetime.now(UTC)
    )
    return changed > 0
