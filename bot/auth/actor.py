"""Who is calling: built by the front door from what it authenticated, never from card data."""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.change import Origin


@dataclass(frozen=True)
class Actor:
    object_id: str
    name: str
    tenant_id: str | None = None
    upn: str | None = None
    # chat, card, cli, approval, schedule: where the request came in.
    source: str = "chat"
    # The Teams activity id (or the CLI run id): written into every audit event.
    correlation_id: str | None = None
    # Makes a retried delivery of the same request a no-op.
    idempotency_key: str | None = None
    # The `groups` claim of a Teams SSO token, when one came with the request.
    sso_groups: tuple[str, ...] | None = None
    sso_groups_overage: bool = False
    # The conversation the request came from (for approval cards and digests).
    conversation_id: str | None = None
    # The reader's IANA time zone (Teams' clientInfo entity), for the dates answers show.
    timezone: str | None = None

    def origin(self) -> Origin:
        return Origin(
            actor_id=self.object_id or self.upn or "unknown",
            actor_name=self.name,
            source=self.source,
            correlation_id=self.correlation_id,
            idempotency_key=self.idempotency_key,
        )
