"""Who may do what: the decisions behind the one authorization gate.

A Policy answers two questions about an authenticated Actor — is this a group
administrator, is this an approver — with a Decision that carries the reason. When it cannot
tell (Graph down, throttled, misconfigured) the answer is no, and the reason says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.auth.actor import Actor


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class Policy(Protocol):
    async def is_admin(self, actor: Actor) -> Decision: ...

    async def is_approver(self, actor: Actor) -> Decision: ...

    def tenant_allowed(self, actor: Actor) -> Decision: ...


NOT_ADMIN = (
    "Only group administrators can use this command. "
    "Ask your Fusion administrator to add you to an admin group."
)


class DevPolicy:
    """Local development mode: the admins are listed in FUSION_DEV_ADMINS (`*` for anyone)."""

    def __init__(self, dev_admins: tuple[str, ...]) -> None:
        self._admins = {a.lower() for a in dev_admins}

    def _listed(self, actor: Actor) -> bool:
        ids = {x.lower() for x in (actor.object_id, actor.upn or "") if x}
        return "*" in self._admins or bool(ids & self._admins)

    async def is_admin(self, actor: Actor) -> Decision:
        if self._listed(actor):
            return Decision(True, "listed in FUSION_DEV_ADMINS (local development mode)")
        return Decision(False, NOT_ADMIN + " (local development mode: FUSION_DEV_ADMINS)")

    async def is_approver(self, actor: Actor) -> Decision:
        return await self.is_admin(actor)

    def tenant_allowed(self, actor: Actor) -> Decision:
        return Decision(True)


class OperatorPolicy:
    """The command line: whoever can run it on the server is the operator, and an admin."""

    async def is_admin(self, actor: Actor) -> Decision:
        return Decision(True, "operator at the command line")

    async def is_approver(self, actor: Actor) -> Decision:
        return Decision(True, "operator at the command line")

    def tenant_allowed(self, actor: Actor) -> Decision:
        return Decision(True)
