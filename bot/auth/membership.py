"""Group administrators and approvers through Entra ID: the production Policy.

Who is an administrator is decided from the caller's Entra object id, taken from the
authenticated activity, never from anything the client typed:

1. A Teams SSO token's `groups` claim, when the front door has one, is used as it is (no Graph
   call). When the token says the caller is in too many groups to list (the >200-groups
   overage), the claim is absent and Graph is asked instead.
2. Otherwise Microsoft Graph `checkMemberGroups` with the app-only token: transitive
   membership, at most 20 group ids per call. One call answers both questions (admin and
   approver groups together), and the answer is kept for `membership_cache_seconds`.

Whenever membership cannot be established — Graph down or throttling beyond the retry bound,
no token, nothing configured — the answer is no, and the reason says why. Failures are not
cached: the next request asks again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bot.auth.actor import Actor
from bot.auth.graph import (
    GraphAuthError,
    GraphClient,
    GraphError,
    GraphNotFound,
    GraphUnavailable,
    is_object_id,
)
from bot.auth.policy import NOT_ADMIN, Decision
from bot.config import Settings

log = logging.getLogger("bot.auth.membership")

NOT_APPROVER = (
    "Only members of the approver groups can decide approval requests. "
    "Ask your Fusion administrator if you should be one."
)
OTHER_TENANT = (
    "Sorry — this bot serves only the organisations it was set up for, and yours is not one of "
    "them. If you think that is a mistake, please contact your service provider."
)
GROUP_SETTINGS = "FUSION_ADMIN_GROUP_IDS / FUSION_APPROVER_GROUP_IDS"
MAX_CACHED = 10_000


class GraphPolicy:
    """`Policy` for the Teams front door: tenants from settings, groups through Entra ID."""

    def __init__(
        self,
        settings: Settings,
        graph: GraphClient | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._graph = graph
        self._clock = clock
        self._admin_groups = _unique(settings.admin_group_ids)
        self._approver_groups = _unique(settings.effective_approver_groups)
        self._tenants = {t.lower() for t in settings.effective_allowed_tenants}
        # Both questions in one Graph call: every configured group is checked at once.
        self._all_groups = _unique(self._admin_groups + self._approver_groups)
        self._bad_groups = [g for g in self._all_groups if not is_object_id(g)]
        if self._bad_groups:
            log.warning("group ids that are not Entra object ids: %s", ", ".join(self._bad_groups))
        # object id → (valid until, the configured groups the caller is a transitive member of)
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    # -- Policy ---------------------------------------------------------------------------------

    def tenant_allowed(self, actor: Actor) -> Decision:
        if not self._tenants:
            return Decision(
                False,
                "This bot has no allowed tenants configured (FUSION_ALLOWED_TENANTS or "
                "MicrosoftAppTenantId), so it answers nobody yet. "
                "Ask the bot's operator to set one.",
            )
        if not actor.tenant_id or actor.tenant_id.lower() not in self._tenants:
            return Decision(False, OTHER_TENANT)
        return Decision(True, "tenant allowed")

    async def is_admin(self, actor: Actor) -> Decision:
        return await self._member_of(
            actor, self._admin_groups, "FUSION_ADMIN_GROUP_IDS", "a group administrator", NOT_ADMIN
        )

    async def is_approver(self, actor: Actor) -> Decision:
        setting = (
            "FUSION_APPROVER_GROUP_IDS"
            if self._settings.approver_group_ids
            else "FUSION_ADMIN_GROUP_IDS"
        )
        return await self._member_of(
            actor, self._approver_groups, setting, "an approver", NOT_APPROVER
        )

    # -- the decision ---------------------------------------------------------------------------

    async def _member_of(
        self, actor: Actor, groups: tuple[str, ...], setting: str, role: str, refusal: str
    ) -> Decision:
        if not groups:
            return Decision(
                False,
                f"No groups are configured in {setting}, so nobody is {role} yet. "
                "Ask the bot's operator to set it.",
            )
        if actor.sso_groups is not None and not actor.sso_groups_overage:
            claimed = {g.lower() for g in actor.sso_groups}
            if claimed & {g.lower() for g in groups}:
                return Decision(True, f"{role} (groups claim of your Teams sign-in)")
            return Decision(False, refusal)
        if not actor.object_id or not is_object_id(actor.object_id):
            return Decision(
                False,
                f"Could not check whether you are {role}: this request carries no Entra object id "
                "for you (is the bot being used outside Microsoft Teams?).",
            )
        if self._bad_groups:
            return Decision(
                False,
                f"Could not check whether you are {role}: the bot's group settings contain "
                f"{self._bad_groups[0]!r}, which is not an Entra group object id. "
                f"Ask the bot's operator to correct {GROUP_SETTINGS}.",
            )
        try:
            member_of = await self._graph_groups(actor.object_id)
        except GraphNotFound:
            # The object id is not in this directory (e.g. a guest's home-tenant id).
            return Decision(False, refusal + " (Your account was not found in the directory.)")
        except GraphUnavailable as exc:
            return Decision(
                False,
                f"Could not check whether you are {role}: {exc.message} "
                "Nothing was run — please try again in a minute.",
            )
        except GraphAuthError as exc:
            return Decision(
                False,
                f"Could not check whether you are {role}: {exc.message} "
                "Ask the bot's operator to check its configuration.",
            )
        except GraphError as exc:
            return Decision(
                False,
                f"Could not check whether you are {role}: {exc.message} "
                f"Ask the bot's operator to check {GROUP_SETTINGS}.",
            )
        if member_of & {g.lower() for g in groups}:
            return Decision(True, f"{role} (member of a configured Entra group)")
        return Decision(False, refusal)

    async def _graph_groups(self, object_id: str) -> frozenset[str]:
        """The configured groups `object_id` is a transitive member of (lower-case), cached."""
        key = object_id.lower()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._graph is None:
            raise GraphAuthError(
                "Microsoft Graph is not configured for this bot (no app credentials)."
            )
        found = await self._graph.check_member_groups(object_id, list(self._all_groups))
        member_of = frozenset(g.lower() for g in found)
        ttl = self._settings.membership_cache_seconds
        if ttl > 0:
            if len(self._cache) >= MAX_CACHED:
                self._prune(now)
            self._cache[key] = (self._clock() + ttl, member_of)
        return member_of

    def _prune(self, now: float) -> None:
        for key in [k for k, (until, _) in self._cache.items() if until <= now]:
            del self._cache[key]
        while len(self._cache) >= MAX_CACHED:
            del self._cache[next(iter(self._cache))]


def _unique(ids: tuple[str, ...]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for g in ids:
        seen.setdefault(g.strip().lower(), g.strip())
    return tuple(v for v in seen.values() if v)
