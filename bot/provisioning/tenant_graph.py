"""Microsoft Graph v1.0 in a customer's tenant beyond number assignment: Microsoft 365 licenses,
and the paged listings a reconcile reads.

    GET  {graph}/subscribedSkus            → {value: [{skuId, skuPartNumber, appliesTo,
                                              capabilityStatus, consumedUnits,
                                              prepaidUnits: {enabled, suspended, warning}}]}
    POST {graph}/users/{id}/assignLicense  {addLicenses: [{skuId, disabledPlans: []}],
                                            removeLicenses: [skuId]} → 200 + the user
    GET  {graph}/users/{id}/licenseDetails → {value: [{skuId, skuPartNumber, …}]}
    GET  {graph}/users?$select=id,userPrincipalName,assignedLicenses&$top=999
    GET  {graph}/admin/teams/telephoneNumberManagement/numberAssignments
         (both lists paged: follow @odata.nextLink until there is none)

Like `TeamsNumbers` (whose plumbing, checks and errors this shares), a single call never sleeps:
it answers or raises `Retryable` / `Refused`, and the worker decides. A listing is many calls,
made by a reader that waits for nobody else, so it waits out a 429's Retry-After itself (a
bounded number of times) and goes on from the page it was on.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from bot.provisioning.teams_numbers import ROOT, Assignment, Refused, Retryable, TeamsNumbers

GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
SKU_CACHE_SECONDS = 60.0
MAX_PAGES = 10_000
PAGE_RETRIES = 8
MAX_WAIT = 60.0


@dataclass(frozen=True)
class Sku:
    sku_id: str
    part_number: str
    enabled: int
    consumed: int
    applies_to: str
    status: str

    @property
    def free(self) -> int:
        return self.enabled - self.consumed


@dataclass(frozen=True)
class TenantUser:
    object_id: str
    upn: str
    sku_ids: frozenset[str]


def _guid(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and GUID.match(value) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class TenantGraph(TeamsNumbers):
    """Teams numbers (inherited), Microsoft 365 licenses and listings, in customer tenants."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skus: dict[str, tuple[float, list[Sku]]] = {}
        self.waited = 0.0  # seconds listings spent waiting out 429s

    # -- SKUs ----------------------------------------------------------------------------------

    async def subscribed_skus(self, tenant: str, *, fresh: bool = False) -> list[Sku]:
        """The tenant's subscribed SKUs (cached for SKU_CACHE_SECONDS unless `fresh`)."""
        cached = self._skus.get(tenant)
        if cached is not None and not fresh and time.monotonic() - cached[0] < SKU_CACHE_SECONDS:
            return cached[1]
        skus: list[Sku] = []
        for item in await self._all(tenant, f"{self._base}/subscribedSkus", wait=False):
            sku_id = _guid(item.get("skuId"))
            part = item.get("skuPartNumber")
            if sku_id is None or not isinstance(part, str) or not part:
                raise Retryable("Microsoft Graph answered a subscribed SKU without skuId/name.")
            prepaid = item.get("prepaidUnits")
            enabled = _count(prepaid.get("enabled")) if isinstance(prepaid, dict) else 0
            skus.append(
                Sku(
                    sku_id,
                    part,
                    enabled,
                    _count(item.get("consumedUnits")),
                    str(item.get("appliesTo") or ""),
                    str(item.get("capabilityStatus") or ""),
                )
            )
        self._skus[tenant] = (time.monotonic(), skus)
        return skus

    async def sku(self, tenant: str, ref: str, *, fresh: bool = False) -> Sku:
        """The tenant's SKU named by a part number (any case) or a SKU id."""
        wanted = ref.strip().lower()
        skus = await self.subscribed_skus(tenant, fresh=fresh)
        for found in skus:
            if wanted in (found.sku_id, found.part_number.lower()):
                return found
        names = ", ".join(sorted(s.part_number for s in skus)) or "none"
        raise Refused(
            f"Tenant {tenant} has no Microsoft 365 subscription of SKU {ref} "
            f"(it has: {names[:300]})."
        )

    # -- licenses of one user -------------------------------------------------------------------

    async def assign_license(
        self, tenant: str, user: str, add: list[str], remove: list[str]
    ) -> frozenset[str]:
        """Add and remove SKUs (ids) in one call; the user's SKU ids after it."""
        body = {
            "addLicenses": [{"skuId": s, "disabledPlans": []} for s in add],
            "removeLicenses": list(remove),
        }
        _, answer, _ = await self._call(
            tenant, "POST", f"{self._base}/users/{quote(user, safe='@')}/assignLicense", body
        )
        return _sku_ids(answer.get("assignedLicenses"))

    async def license_ids(self, tenant: str, user: str) -> frozenset[str] | None:
        """The SKU ids a user holds now; None if the tenant has no such user."""
        status, body, _ = await self._call(
            tenant,
            "GET",
            f"{self._base}/users/{quote(user, safe='@')}/licenseDetails",
            none_on_404=True,
        )
        if status == 404:
            return None
        value = body.get("value")
        if not isinstance(value, list):
            raise Retryable("Microsoft Graph answered licenseDetails without a list.")
        return _sku_ids(value)

    # -- listings (reconcile) ------------------------------------------------------------------

    async def users(self, tenant: str) -> list[TenantUser]:
        """Every user of the tenant with the SKU ids assigned to them."""
        url = f"{self._base}/users?$select=id,userPrincipalName,assignedLicenses&$top=999"
        found = []
        for item in await self._all(tenant, url):
            object_id = _guid(item.get("id"))
            upn = item.get("userPrincipalName")
            if object_id is None or not isinstance(upn, str):
                continue  # not a user the ledger could know
            found.append(TenantUser(object_id, upn, _sku_ids(item.get("assignedLicenses"))))
        return found

    async def number_assignments(self, tenant: str) -> list[Assignment]:
        """Every number the tenant's Teams knows, with its assignment."""
        url = f"{self._base}{ROOT}/numberAssignments"
        found = []
        for item in await self._all(tenant, url):
            raw = item.get("telephoneNumber")
            if not isinstance(raw, str) or not raw.strip("+").isdigit():
                continue
            target = item.get("assignmentTargetId")
            state = item.get("activationState")
            status = item.get("assignmentStatus")
            found.append(
                Assignment(
                    "+" + raw.lstrip("+"),
                    target if isinstance(target, str) and target else None,
                    state if isinstance(state, str) else None,
                    status if isinstance(status, str) else None,
                )
            )
        return found

    async def _all(self, tenant: str, url: str, *, wait: bool = True) -> list[dict[str, Any]]:
        """Every item of a collection, page after page (@odata.nextLink)."""
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        pages = 0
        while next_url is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise Retryable(f"Microsoft Graph kept paging past {MAX_PAGES} pages.")
            body = await self._page(tenant, next_url, wait)
            value = body.get("value")
            if not isinstance(value, list):
                raise Retryable("Microsoft Graph answered a collection without a list.")
            items.extend(v for v in value if isinstance(v, dict))
            link = body.get("@odata.nextLink")
            next_url = self._same_graph(link) if isinstance(link, str) and link else None
        return items

    async def _page(self, tenant: str, url: str, wait: bool) -> dict[str, Any]:
        for attempt in range(PAGE_RETRIES):
            try:
                _, body, _ = await self._call(tenant, "GET", url)
                return body
            except Retryable as exc:
                if not wait or attempt == PAGE_RETRIES - 1:
                    raise
                delay = exc.retry_after if exc.retry_after is not None else 2.0**attempt
                delay = min(delay, MAX_WAIT)
                self.waited += delay
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _same_graph(self, url: str) -> str:
        parts = urlsplit(url)
        if (parts.scheme.lower(), parts.netloc.lower()) != self._origin or not (
            parts.path + "/"
        ).startswith(self._base_path):
            raise Refused(
                "Microsoft Graph pointed at a next page outside the configured Graph URL "
                f"({parts.scheme}://{parts.netloc}); it is not followed."
            )
        return url


def _sku_ids(value: Any) -> frozenset[str]:
    items = value if isinstance(value, list) else []
    return frozenset(
        sku for sku in (_guid(i.get("skuId")) for i in items if isinstance(i, dict)) if sku
    )
