"""The Microsoft 365 license part of the fake Graph (mixed into ``FakeGraph``), per tenant, as
Graph v1.0's docs describe it:

``GET /v1.0/subscribedSkus`` (skuId, skuPartNumber, appliesTo, capabilityStatus, consumedUnits,
prepaidUnits), ``POST /v1.0/users/{id|upn}/assignLicense`` (``addLicenses`` of ``{skuId,
disabledPlans}``, ``removeLicenses`` of skuIds; 200 with the user and its ``assignedLicenses``;
all or nothing: a request that fails changes nothing), ``GET /v1.0/users/{id}/licenseDetails``,
``GET /v1.0/users`` (``$select``, ``$top`` up to 999, ``@odata.nextLink``).

Errors as Graph words them: 400 ``Request_BadRequest`` for a user without a usage location, for
mutually exclusive plans, for a SKU with no free unit or unknown to the tenant, for removing a
license the user does not hold; 404 ``Request_ResourceNotFound`` for an unknown user; 403 without
``LicenseAssignment.ReadWrite.All`` (or ``Directory.ReadWrite.All``). Throttling and outages come
from the shared gate (``throttle``, ``rate_limit``, ``down``).

Scripting: ``add_sku``, ``set_usage_location``, ``exclusive(sku_a, sku_b)``,
``fail_license(user, message)`` (the next assignLicense of that user fails), ``atomic = False``
(a failing request keeps the licenses it added before the one that failed, as a partly
applied request would), ``give_license`` / ``take_license`` (a change made by hand in the admin
center), and ``licenses(tenant, user)`` to read the state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ._server import CLAIMS, error_body

LICENSE_ROLES = frozenset(
    {"LicenseAssignment.ReadWrite.All", "Directory.ReadWrite.All", "User.ReadWrite.All"}
)
MAX_USERS_TOP = 999


@dataclass
class FakeSku:
    sku_id: str
    part_number: str
    enabled: int
    applies_to: str = "User"
    status: str = "Enabled"

    def json(self, consumed: int) -> dict[str, Any]:
        return {
            "capabilityStatus": self.status,
            "consumedUnits": consumed,
            "id": f"tenant_{self.sku_id}",
            "prepaidUnits": {"enabled": self.enabled, "suspended": 0, "warning": 0},
            "servicePlans": [],
            "skuId": self.sku_id,
            "skuPartNumber": self.part_number,
            "appliesTo": self.applies_to,
        }


def _bad(message: str) -> web.Response:
    return web.json_response(error_body("Request_BadRequest", message), status=400)


class LicensesMixin:
    """State and handlers of Microsoft 365 licenses; FakeGraph provides users and the gate."""

    users: dict[str, Any]
    graph_url: str
    _dir_lock: threading.Lock

    def init_licenses(self) -> None:
        self.skus: dict[str, dict[str, FakeSku]] = {}  # tenant → skuId → SKU
        self.user_licenses: dict[tuple[str, str], set[str]] = {}  # (tenant, user id) → skuIds
        self.usage_locations: dict[str, str | None] = {}  # user id → location (default "GB")
        self.exclusive_pairs: set[frozenset[str]] = set()
        self.license_failures: dict[str, str] = {}  # user id → message of its next failure
        self.atomic = True
        self.users_page_size: int | None = None  # server-side page size of GET /users

    # -- scripting ------------------------------------------------------------------------------
    def add_sku(self, tenant: str, sku_id: str, part_number: str, enabled: int) -> FakeSku:
        with self._dir_lock:
            sku = FakeSku(sku_id.lower(), part_number, enabled)
            self.skus.setdefault(tenant, {})[sku.sku_id] = sku
            return sku

    def set_usage_location(self, user_id: str, location: str | None) -> None:
        with self._dir_lock:
            self.usage_locations[user_id] = location

    def exclusive(self, sku_a: str, sku_b: str) -> None:
        with self._dir_lock:
            self.exclusive_pairs.add(frozenset({sku_a.lower(), sku_b.lower()}))

    def fail_license(self, user_id: str, message: str) -> None:
        with self._dir_lock:
            self.license_failures[user_id] = message

    def give_license(self, tenant: str, user_id: str, sku_id: str) -> None:
        with self._dir_lock:
            self.user_licenses.setdefault((tenant, user_id), set()).add(sku_id.lower())

    def take_license(self, tenant: str, user_id: str, sku_id: str) -> None:
        with self._dir_lock:
            self.user_licenses.get((tenant, user_id), set()).discard(sku_id.lower())

    def licenses(self, tenant: str, user_id: str) -> set[str]:
        with self._dir_lock:
            return set(self.user_licenses.get((tenant, user_id), set()))

    def consumed(self, tenant: str, sku_id: str) -> int:
        with self._dir_lock:
            return self._consumed(tenant, sku_id.lower())

    def _consumed(self, tenant: str, sku_id: str) -> int:
        return sum(
            1 for (t, _), held in self.user_licenses.items() if t == tenant and sku_id in held
        )

    # -- HTTP -----------------------------------------------------------------------------------
    def add_license_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1.0/subscribedSkus", self._subscribed_skus)
        app.router.add_post("/v1.0/users/{id}/assignLicense", self._assign_license)
        app.router.add_get("/v1.0/users/{id}/licenseDetails", self._license_details)
        app.router.add_get("/v1.0/users", self._list_users)

    @staticmethod
    def _license_tenant(request: web.Request) -> str:
        claims = request.get(CLAIMS) or {}
        return str(claims.get("tid") or "-")

    @staticmethod
    def _may_license(request: web.Request) -> bool:
        claims = request.get(CLAIMS)
        return claims is None or bool(LICENSE_ROLES & set(claims.get("roles", [])))

    def _denied(self) -> web.Response:
        return web.json_response(
            error_body(
                "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            ),
            status=403,
        )

    def _user_key(self, key: str) -> str | None:
        with self._dir_lock:
            if key in self.users:
                return key
            for user in self.users.values():
                if user.user_principal_name.lower() == key.lower():
                    return str(user.id)
        return None

    @staticmethod
    def _unknown_user(key: str) -> web.Response:
        return web.json_response(
            error_body(
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property "
                "objects are not present.",
            ),
            status=404,
        )

    async def _subscribed_skus(self, request: web.Request) -> web.Response:
        if not self._may_license(request):
            return self._denied()
        tenant = self._license_tenant(request)
        with self._dir_lock:
            value = [
                s.json(self._consumed(tenant, s.sku_id)) for s in self.skus.get(tenant, {}).values()
            ]
        return web.json_response(
            {"@odata.context": f"{self.graph_url}/$metadata#subscribedSkus", "value": value}
        )

    def _assigned(self, tenant: str, user_id: str) -> list[dict[str, Any]]:
        held = sorted(self.user_licenses.get((tenant, user_id), set()))
        return [{"disabledPlans": [], "skuId": s} for s in held]

    async def _assign_license(self, request: web.Request) -> web.Response:
        if not self._may_license(request):
            return self._denied()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _bad("The request body must be a JSON object.")
        add, remove = body.get("addLicenses"), body.get("removeLicenses")
        if not isinstance(add, list) or not isinstance(remove, list):
            return _bad("addLicenses and removeLicenses are required (they may be empty).")
        adding = []
        for item in add:
            sku = item.get("skuId") if isinstance(item, dict) else None
            if not isinstance(sku, str) or not isinstance(item.get("disabledPlans", []), list):
                return _bad("Each of addLicenses is an assignedLicense: {skuId, disabledPlans}.")
            adding.append(sku.lower())
        if not all(isinstance(r, str) for r in remove):
            return _bad("removeLicenses is a collection of skuIds.")
        removing = [r.lower() for r in remove]
        key = request.match_info["id"]
        user_id = self._user_key(key)
        if user_id is None:
            return self._unknown_user(key)
        tenant = self._license_tenant(request)
        with self._dir_lock:
            skus = self.skus.get(tenant, {})
            held = self.user_licenses.setdefault((tenant, user_id), set())
            scripted = self.license_failures.pop(user_id, None)
            after = set(held)
            error: str | None = None
            for sku in removing:
                if sku not in skus:
                    error = f"License {sku} does not correspond to a valid company License."
                elif sku not in after:
                    error = "User does not have a corresponding license."
                if error:
                    break
                after.discard(sku)
            applied: list[str] = []
            for sku in adding if error is None else []:
                if sku not in skus:
                    error = f"License {sku} does not correspond to a valid company License."
                elif self.usage_locations.get(user_id, "GB") is None:
                    error = (
                        "License assignment cannot be done for user with invalid usage location."
                    )
                elif sku not in after and skus[sku].enabled - self._consumed(tenant, sku) < 1:
                    error = (
                        "License assignment failed because there are no available licenses "
                        f"for {skus[sku].part_number}."
                    )
                else:
                    clash = next(
                        (o for o in after if frozenset({o, sku}) in self.exclusive_pairs), None
                    )
                    if clash is not None:
                        a, b = skus[clash].part_number, skus[sku].part_number
                        error = (
                            "License assignment failed because service plans of "
                            f"{a} and {b} are mutually exclusive."
                        )
                if error is None and scripted is not None and sku == adding[-1]:
                    error = scripted
                if error:
                    break
                after.add(sku)
                applied.append(sku)
                if not self.atomic:
                    held.add(sku)  # a partly applied request keeps what it added so far
            if error is None and scripted is not None and not adding:
                error = scripted
            if error is not None:
                return _bad(error)
            held.clear()
            held.update(after)
            user = self.users[user_id]
            answer = {
                "@odata.context": f"{self.graph_url}/$metadata#users/$entity",
                "id": user.id,
                "userPrincipalName": user.user_principal_name,
                "displayName": user.display_name,
                "assignedLicenses": self._assigned(tenant, user_id),
            }
        return web.json_response(answer)

    async def _license_details(self, request: web.Request) -> web.Response:
        if not self._may_license(request):
            return self._denied()
        key = request.match_info["id"]
        user_id = self._user_key(key)
        if user_id is None:
            return self._unknown_user(key)
        tenant = self._license_tenant(request)
        with self._dir_lock:
            skus = self.skus.get(tenant, {})
            value = [
                {
                    "id": f"{s}_{user_id}",
                    "skuId": s,
                    "skuPartNumber": skus[s].part_number if s in skus else None,
                    "servicePlans": [],
                }
                for s in sorted(self.user_licenses.get((tenant, user_id), set()))
            ]
        return web.json_response(
            {
                "@odata.context": f"{self.graph_url}/$metadata#users('{key}')/licenseDetails",
                "value": value,
            }
        )

    async def _list_users(self, request: web.Request) -> web.Response:
        try:
            top = int(request.query.get("$top", "100"))
            skip = int(request.query.get("$skiptoken", "0"))
        except ValueError:
            return _bad("Invalid $top or $skiptoken.")
        if not 1 <= top <= MAX_USERS_TOP or skip < 0:
            return _bad(
                f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_USERS_TOP} "
                "inclusive."
            )
        page_size = min(top, self.users_page_size or top)
        tenant = self._license_tenant(request)
        select = [s for s in request.query.get("$select", "").split(",") if s]
        with self._dir_lock:
            users = sorted(self.users.values(), key=lambda u: u.id)
            page = []
            for user in users[skip : skip + page_size]:
                item = {
                    **user.json(),
                    "assignedLicenses": self._assigned(tenant, user.id),
                }
                if select:
                    item = {k: v for k, v in item.items() if k in select or k == "id"}
                page.append(item)
        result: dict[str, Any] = {
            "@odata.context": f"{self.graph_url}/$metadata#users",
            "value": page,
        }
        if skip + page_size < len(users):
            query = f"$top={top}&$skiptoken={skip + page_size}"
            if select:
                query += f"&$select={','.join(select)}"
            result["@odata.nextLink"] = f"{self.graph_url}/users?{query}"
        return web.json_response(result)


class HandChanges:
    """Changes made in the Teams admin center by hand (mixed into ``FakeGraph``)."""

    teams: dict[str, dict[str, Any]]
    _dir_lock: threading.Lock

    def assign_by_hand(
        self, tenant: str, number: str, target_id: str | None, state: str = "activated"
    ) -> None:
        """Teams holds ``number`` for ``target_id`` (None: in the tenant, unassigned)."""
        from .graph import TeamsNumber

        with self._dir_lock:
            self.teams.setdefault(tenant, {})[number] = TeamsNumber(
                number, "directRouting", target_id, state, "primary" if target_id else None
            )
