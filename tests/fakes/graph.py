"""Fake Microsoft Graph: the group-membership calls an admin check needs, and Teams number
management (assignNumber / unassignNumber / operations / numberAssignments) per tenant."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jwt
from aiohttp import web

from ._server import CLAIMS, INFO, Failure, ThreadedServer, error_body
from .graph_licenses import HandChanges, LicensesMixin
from .identity import FakeIdentityProvider
from .tls import TLSFiles

__all__ = ["FakeGraph", "GraphGroup", "GraphUser", "TeamsNumber"]

MAX_CHECK_IDS = 20
MAX_TOP = 999
TEAMS = "/v1.0/admin/teams/telephoneNumberManagement"
TEAMS_ROLE = "TeamsTelephoneNumber.ReadWrite.All"
NUMBER_TYPES = ("directRouting", "callingPlan", "operatorConnect")
CATEGORIES = ("primary", "private", "alternate")
NO_TENANT = "-"  # the tenant of calls made without identity checks


@dataclass
class TeamsNumber:
    """A number as a tenant's Teams holds it (numberAssignment)."""

    telephone_number: str
    number_type: str
    target_id: str | None = None
    activation_state: str | None = None
    assignment_category: str | None = None
    location_id: str | None = None

    def json(self, graph_url: str, tenant: str) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.teamsAdministration.numberAssignment",
            "id": f"{tenant}|{self.telephone_number}",
            "telephoneNumber": self.telephone_number,
            "operatorId": None,
            "numberType": self.number_type,
            "activationState": self.activation_state or "activated",
            "capabilities": ["userAssignment", "voiceApplicationAssignment"],
            "locationId": self.location_id,
            "civicAddressId": None,
            "networkSiteId": None,
            "assignmentTargetId": self.target_id,
            "assignmentCategory": self.assignment_category,
            "portInStatus": None,
            "assignmentStatus": "userAssigned" if self.target_id else "unassigned",
            "isoCountryCode": None,
            "city": None,
            "numberSource": "online",
            "supportedCustomerActions": ["locationUpdate"],
            "reverseNumberLookupOptions": [],
        }


@dataclass
class _Operation:
    id: str
    tenant: str
    action: str  # assign | unassign
    number: str
    target_id: str | None
    ready_at: float  # time.monotonic()
    failure: str | None  # statusDetail when it fails
    before: TeamsNumber | None  # the number as it was (restored when an assign fails)
    created: str
    done: bool = False


@dataclass
class GraphUser:
    id: str
    user_principal_name: str
    display_name: str

    def json(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.user",
            "id": self.id,
            "userPrincipalName": self.user_principal_name,
            "displayName": self.display_name,
        }


@dataclass
class GraphGroup:
    id: str
    display_name: str
    security_enabled: bool = True
    members: list[str] = field(default_factory=list)  # direct members: user or group ids

    def json(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.group",
            "id": self.id,
            "displayName": self.display_name,
            "securityEnabled": self.security_enabled,
        }


def _kind(path: str) -> str:
    if path.startswith(TEAMS):
        for kind in ("unassignNumber", "assignNumber", "operations", "numberAssignments"):
            if kind in path:
                return kind
    for kind in ("assignLicense", "licenseDetails", "subscribedSkus"):
        if path.endswith(f"/{kind}"):
            return kind
    if path == "/v1.0/users":
        return "users"
    for kind in ("checkMemberGroups", "getMemberGroups", "transitiveMembers"):
        if f"/{kind}" in path:
            return kind
    return "user" if path.startswith("/v1.0/users/") else "other"


class FakeGraph(LicensesMixin, HandChanges, ThreadedServer):
    """HTTPS fake of Microsoft Graph v1.0 group membership (``graph_url`` = ``base_url + "/v1.0"``).

    ``POST /v1.0/{users|directoryObjects}/{id}/checkMemberGroups`` (``{"groupIds": [...]}``, at
    most 20, else 400; answers the ids the object is a *transitive* member of),
    ``POST .../getMemberGroups`` (``{"securityEnabledOnly": bool}``; the overage path),
    ``GET /v1.0/groups/{id}/transitiveMembers`` and ``.../transitiveMembers/microsoft.graph.user``
    (``$top`` paging via ``@odata.nextLink``, ``$select``), ``GET /v1.0/users/{id-or-upn}``.
    Every call needs a bearer token that ``identity.verify_access_token(token, audience)``
    accepts (audience https://graph.microsoft.com; else 401 InvalidAuthenticationToken); with
    ``required_roles`` the token must hold one of them (else 403 Authorization_RequestDenied).
    Directory: ``add_user``, ``add_group`` (members may be groups: nesting is transitive),
    ``add_member``.  Trouble: ``down("refuse"|"503")``/``up()``, ``throttle(n, retry_after)``,
    ``fail(n, status)``.  ``call_count`` / ``count(kind)`` count calls.
    """

    def __init__(
        self,
        identity: FakeIdentityProvider | None,
        *,
        audience: str = "https://graph.microsoft.com",
        required_roles: Iterable[str] | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(https=True, tls=tls)
        self.identity = identity
        self.audience = audience
        self.required_roles = set(required_roles) if required_roles is not None else None
        self.users: dict[str, GraphUser] = {}
        self.groups: dict[str, GraphGroup] = {}
        self._failures: deque[Failure] = deque()
        self._down_503 = False
        self._dir_lock = threading.Lock()
        # Teams number management, per tenant id (the token's tid).
        self.teams: dict[str, dict[str, TeamsNumber]] = {}
        self._operations: dict[str, _Operation] = {}
        self.operation_delay = 0.2  # seconds from 202 until the operation has finished
        self._number_failures: dict[str, str] = {}  # number → statusDetail of its next operation
        self._rate: tuple[int, float] | None = None  # (requests, per seconds) per tenant
        self._rate_log: dict[str, deque[float]] = {}
        self.operation_count = 0
        self.init_licenses()
        # A Location to answer instead of the operation's own (a malformed answer).
        self.location_override: str | None = None

    @property
    def graph_url(self) -> str:
        """Graph base with version, like ``https://graph.microsoft.com/v1.0``."""
        return f"{self.base_url}/v1.0"

    # -- directory ---------------------------------------------------------------------------
    def add_user(
        self, user_id: str, upn: str | None = None, display_name: str | None = None
    ) -> GraphUser:
        with self._dir_lock:
            user = GraphUser(user_id, upn or f"{user_id}@example.test", display_name or user_id)
            self.users[user_id] = user
            return user

    def add_group(
        self,
        group_id: str,
        members: Iterable[str] = (),
        *,
        display_name: str | None = None,
        security_enabled: bool = True,
    ) -> GraphGroup:
        """Add a group with direct ``members`` (group ids, user ids; unknown ids become users)."""
        with self._dir_lock:
            group = GraphGroup(group_id, display_name or group_id, security_enabled)
            self.groups[group_id] = group
            self.users.pop(group_id, None)  # it may have been auto-created as a member earlier
        for member in members:
            self.add_member(group_id, member)
        return group

    def add_member(self, group_id: str, member_id: str) -> None:
        if member_id not in self.groups and member_id not in self.users:
            self.add_user(member_id)
        with self._dir_lock:
            members = self.groups[group_id].members
            if member_id not in members:
                members.append(member_id)

    def remove_member(self, group_id: str, member_id: str) -> None:
        with self._dir_lock:
            members = self.groups[group_id].members
            if member_id in members:
                members.remove(member_id)

    def transitive_groups(self, object_id: str) -> list[str]:
        """Ids of every group ``object_id`` is a direct or nested member of."""
        with self._dir_lock:
            found: list[str] = []
            frontier = [object_id]
            while frontier:
                current = frontier.pop()
                for group in self.groups.values():
                    if current in group.members and group.id not in found:
                        found.append(group.id)
                        frontier.append(group.id)
            return found

    def transitive_members(self, group_id: str) -> list[GraphUser | GraphGroup]:
        """Users and groups below ``group_id``, each once, depth-first in insertion order."""
        with self._dir_lock:
            seen: set[str] = {group_id}
            result: list[GraphUser | GraphGroup] = []

            def walk(gid: str) -> None:
                for member in self.groups[gid].members:
                    if member in seen:
                        continue
                    seen.add(member)
                    if member in self.groups:
                        result.append(self.groups[member])
                        walk(member)
                    elif member in self.users:
                        result.append(self.users[member])

            walk(group_id)
            return result

    # -- trouble -----------------------------------------------------------------------------
    def down(self, mode: str = "refuse") -> None:
        """``"refuse"``: connections are refused; ``"503"``: every call answers 503."""
        if mode == "refuse":
            self.refuse_connections()
        elif mode == "503":
            self._down_503 = True
        else:
            raise ValueError("mode must be 'refuse' or '503'")

    def up(self) -> None:
        self._down_503 = False
        self.accept_connections()

    def throttle(self, count: int, retry_after: float = 2.0) -> None:
        """Answer the next ``count`` calls 429 TooManyRequests with ``Retry-After``."""
        failure = Failure(429, retry_after, error_body("TooManyRequests", "Too many requests."))
        with self._dir_lock:
            self._failures.extend(failure for _ in range(count))

    def fail(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` calls with ``status``."""
        failure = Failure(status, None, error_body("UnknownError", f"scripted {status}"))
        with self._dir_lock:
            self._failures.extend(failure for _ in range(count))

    def answer_malformed(self, count: int, raw: bytes, status: int = 200) -> None:
        """Answer the next ``count`` calls ``status`` with the body ``raw`` (not what the API
        documents: ``{"value": null}``, a number, a string, not JSON)."""
        with self._dir_lock:
            self._failures.extend(Failure.malformed(raw, status) for _ in range(count))

    def rate_limit(self, requests: int | None, per_seconds: float = 10.0) -> None:
        """Throttle like Graph: more than ``requests`` calls of one tenant within ``per_seconds``
        are answered 429 with a Retry-After of the seconds until one is allowed again (``None``:
        no limit)."""
        with self._dir_lock:
            self._rate = (requests, per_seconds) if requests else None
            self._rate_log.clear()

    def fail_number(self, number: str, detail: str = "The number cannot be assigned.") -> None:
        """The next operation on ``number`` fails with ``statusDetail`` ``detail`` (Teams keeps
        the number as it was)."""
        with self._dir_lock:
            self._number_failures[number] = detail

    def teams_number(self, tenant: str, number: str) -> TeamsNumber | None:
        """The number as ``tenant``'s Teams holds it now (finished operations applied)."""
        self._settle()
        with self._dir_lock:
            found = self.teams.get(tenant, {}).get(number)
            return None if found is None else TeamsNumber(**found.__dict__)

    def teams_numbers(self, tenant: str) -> dict[str, TeamsNumber]:
        """Every number ``tenant``'s Teams holds (assigned or not), finished operations applied."""
        self._settle()
        with self._dir_lock:
            return {k: TeamsNumber(**v.__dict__) for k, v in self.teams.get(tenant, {}).items()}

    def assigned(self, tenant: str) -> dict[str, str]:
        """Number → target object id of every activated assignment in ``tenant``."""
        return {
            n: t.target_id
            for n, t in self.teams_numbers(tenant).items()
            if t.target_id and t.activation_state == "activated"
        }

    def count(self, kind: str | None = None) -> int:
        """Calls received, failed ones included (``kind``: checkMemberGroups, getMemberGroups,
        transitiveMembers, user)."""
        return sum(1 for r in self.requests if kind is None or r.info.get("kind") == kind)

    # -- HTTP --------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        for collection in ("users", "directoryObjects"):
            app.router.add_post(
                f"/v1.0/{collection}/{{id}}/checkMemberGroups", self._check_member_groups
            )
            app.router.add_post(
                f"/v1.0/{collection}/{{id}}/getMemberGroups", self._get_member_groups
            )
        app.router.add_get("/v1.0/users/{id}", self._get_user)
        self.add_license_routes(app)
        app.router.add_post(f"{TEAMS}/numberAssignments/assignNumber", self._assign_number)
        app.router.add_post(f"{TEAMS}/numberAssignments/unassignNumber", self._unassign_number)
        app.router.add_get(f"{TEAMS}/numberAssignments", self._number_assignments)
        app.router.add_get(TEAMS + "/{operation:operations.*}", self._get_operation)
        app.router.add_get("/v1.0/groups/{id}/transitiveMembers", self._transitive_members)
        app.router.add_get(
            "/v1.0/groups/{id}/transitiveMembers/microsoft.graph.user", self._transitive_members
        )
        return app

    @web.middleware
    async def _gate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Scripted trouble first (a sick service checks nothing), then the bearer token."""
        request[INFO]["kind"] = _kind(request.path)
        with self._dir_lock:
            failure = (
                Failure(503, None, error_body("ServiceUnavailable", "down"))
                if self._down_503
                else (self._failures.popleft() if self._failures else None)
            )
        if failure is not None:
            return failure.response()
        auth = request.headers.get("Authorization", "")
        teams_call = request.path.startswith(TEAMS)
        if self.identity is not None:
            try:
                if not auth.startswith("Bearer "):
                    raise jwt.InvalidTokenError("no bearer token")
                claims = self.identity.verify_access_token(auth[7:], self.audience)
            except jwt.InvalidTokenError as exc:
                request[INFO]["auth_error"] = str(exc)
                return web.json_response(
                    error_body(
                        "InvalidAuthenticationToken", f"Access token validation failure. {exc}"
                    ),
                    status=401,
                )
            request[CLAIMS] = claims
            roles = set(claims.get("roles", []))
            if teams_call and TEAMS_ROLE not in roles:
                return web.json_response(
                    error_body(
                        "Forbidden",
                        f"Missing role permissions on the request: {TEAMS_ROLE} is required.",
                    ),
                    status=403,
                )
            if (
                not teams_call
                and self.required_roles is not None
                and not self.required_roles & roles
            ):
                return web.json_response(
                    error_body(
                        "Authorization_RequestDenied",
                        "Insufficient privileges to complete the operation.",
                    ),
                    status=403,
                )
        throttled = self._over_rate(self._tenant(request))
        if throttled is not None:
            request[INFO]["throttled"] = True
            return Failure(
                429, throttled, error_body("TooManyRequests", "Too many requests.")
            ).response()
        return await handler(request)

    # -- Teams number management -------------------------------------------------------------
    @staticmethod
    def _tenant(request: web.Request) -> str:
        claims = request.get(CLAIMS) or {}
        return str(claims.get("tid") or NO_TENANT)

    def _over_rate(self, tenant: str) -> float | None:
        """Seconds to wait if this call of ``tenant`` is over the rate limit, else None."""
        with self._dir_lock:
            if self._rate is None:
                return None
            limit, window = self._rate
            now = time.monotonic()
            log = self._rate_log.setdefault(tenant, deque())
            while log and log[0] <= now - window:
                log.popleft()
            if len(log) >= limit:
                return float(max(1, math.ceil(log[0] + window - now)))
            log.append(now)
            return None

    def _settle(self) -> None:
        """Apply every operation whose time has come (Teams finishes them in the background)."""
        now = time.monotonic()
        with self._dir_lock:
            for op in self._operations.values():
                if op.done or op.ready_at > now:
                    continue
                op.done = True
                numbers = self.teams.setdefault(op.tenant, {})
                if op.failure is not None:
                    if op.before is None:
                        numbers.pop(op.number, None)
                    else:
                        numbers[op.number] = op.before
                elif op.action == "assign":
                    numbers[op.number].activation_state = "activated"
                else:
                    entry = numbers.get(op.number)
                    if entry is not None:
                        entry.target_id = None
                        entry.activation_state = "activated"
                        entry.assignment_category = None
                        entry.location_id = None

    def _bad(self, message: str) -> web.Response:
        return web.json_response(error_body("BadRequest", message), status=400)

    def _accepted(self, request: web.Request, op: _Operation) -> web.Response:
        with self._dir_lock:
            self._operations[op.id] = op
            self.operation_count += 1
        request[INFO]["number"] = op.number
        location = self.location_override or (
            f"{self.graph_url}/admin/teams/telephoneNumberManagement/operations('{op.id}')"
        )
        return web.Response(status=202, headers={"Location": location})

    def _new_operation(
        self, tenant: str, action: str, number: str, target: str | None, failure: str | None
    ) -> _Operation:
        with self._dir_lock:
            before = self.teams.get(tenant, {}).get(number)
            scripted = self._number_failures.pop(number, None)
        return _Operation(
            id=uuid.uuid4().hex,
            tenant=tenant,
            action=action,
            number=number,
            target_id=target,
            ready_at=time.monotonic() + self.operation_delay,
            failure=scripted or failure,
            before=None if before is None else TeamsNumber(**before.__dict__),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    async def _assign_number(self, request: web.Request) -> web.Response:
        self._settle()
        body = await self._json_body(request)
        if body is None:
            return self._bad("The request body must be a JSON object.")
        number, target = body.get("telephoneNumber"), body.get("assignmentTargetId")
        number_type = body.get("numberType")
        category = body.get("assignmentCategory", "primary")
        location = body.get("locationId")
        if not isinstance(number, str) or not number.strip("+").isdigit():
            return self._bad("telephoneNumber is a mandatory parameter (digits, + optional).")
        if not isinstance(target, str) or not target:
            return self._bad("assignmentTargetId is a mandatory parameter.")
        if number_type not in NUMBER_TYPES:
            return self._bad(f"numberType must be one of {', '.join(NUMBER_TYPES)}.")
        if category not in CATEGORIES:
            return self._bad(f"assignmentCategory must be one of {', '.join(CATEGORIES)}.")
        if location is not None and not isinstance(location, str):
            return self._bad("locationId must be a string.")
        number = "+" + number.lstrip("+")
        tenant = self._tenant(request)
        failure = None
        with self._dir_lock:
            current = self.teams.get(tenant, {}).get(number)
            if target not in self.users:
                failure = f"The user {target} was not found in the tenant."
            elif current is not None and current.target_id and current.target_id != target:
                failure = "The telephone number is already assigned to another user."
            elif any(
                n.target_id == target and k != number for k, n in self.teams.get(tenant, {}).items()
            ):
                failure = "The user already has a primary telephone number assigned."
        op = self._new_operation(tenant, "assign", number, target, failure)
        if op.failure is None:
            with self._dir_lock:
                self.teams.setdefault(tenant, {})[number] = TeamsNumber(
                    number, number_type, target, "assignmentPending", category, location
                )
        return self._accepted(request, op)

    async def _unassign_number(self, request: web.Request) -> web.Response:
        self._settle()
        body = await self._json_body(request)
        if body is None:
            return self._bad("The request body must be a JSON object.")
        number, number_type = body.get("telephoneNumber"), body.get("numberType")
        if not isinstance(number, str) or not number.strip("+").isdigit():
            return self._bad("telephoneNumber is a mandatory parameter (digits, + optional).")
        if number_type not in NUMBER_TYPES:
            return self._bad(f"numberType must be one of {', '.join(NUMBER_TYPES)}.")
        number = "+" + number.lstrip("+")
        tenant = self._tenant(request)
        with self._dir_lock:
            current = self.teams.get(tenant, {}).get(number)
        failure = None if current and current.target_id else "The telephone number is not assigned."
        return self._accepted(
            request, self._new_operation(tenant, "unassign", number, None, failure)
        )

    async def _get_operation(self, request: web.Request) -> web.Response:
        self._settle()
        raw = request.match_info["operation"].removeprefix("operations")
        op_id = raw.strip("/").removeprefix("('").removesuffix("')")
        with self._dir_lock:
            op = self._operations.get(op_id)
        if op is None or op.tenant != self._tenant(request):
            return self._not_found(op_id)
        status = ("failed" if op.failure else "succeeded") if op.done else "running"
        detail: dict[str, Any] = {
            "resourceLocation": (
                f"{self.graph_url}/admin/teams/telephoneNumberManagement/numberAssignments/"
                f"{op.tenant}|{op.number}"
            ),
            "status": status,
        }
        if op.done and op.failure:
            detail["statusDetail"] = op.failure
        # As the documented example answers it: the operation inside "value".
        return web.json_response(
            {
                "value": {
                    "@odata.type": (
                        "#microsoft.graph.teamsAdministration.telephoneNumberLongRunningOperation"
                    ),
                    "id": op.id,
                    "createdDateTime": op.created,
                    "status": status,
                    "numbers": [detail],
                }
            }
        )

    async def _number_assignments(self, request: web.Request) -> web.Response:
        self._settle()
        tenant = self._tenant(request)
        with self._dir_lock:
            numbers = list(self.teams.get(tenant, {}).values())
        wanted = request.query.get("$filter")
        if wanted is not None:
            field, _, value = wanted.partition(" eq ")
            if field.strip() != "telephoneNumber" or not value.strip().startswith("'"):
                return self._bad("Only $filter=telephoneNumber eq '+E164' is supported here.")
            number = "+" + value.strip().strip("'").lstrip("+")
            numbers = [n for n in numbers if n.telephone_number == number]
        try:
            top = int(request.query.get("$top", "500"))
            skip = int(request.query.get("$skip", "0"))
        except ValueError:
            return self._bad("Invalid $top or $skip.")
        if not 1 <= top <= 1000 or skip < 0:
            return self._bad("$top must be between 1 and 1000.")
        page = numbers[skip : skip + top]
        result: dict[str, Any] = {
            "@odata.context": (
                f"{self.graph_url}/$metadata#admin/teams/telephoneNumberManagement"
                "/numberAssignments"
            ),
            "value": [n.json(self.graph_url, tenant) for n in page],
        }
        if skip + top < len(numbers):  # paged like Graph: the next page's link
            query = f"$top={top}&$skip={skip + top}"
            if wanted is not None:
                query += "&$filter=" + quote(wanted)
            result["@odata.nextLink"] = f"{self.graph_url}{request.path[5:]}?{query}"
        return web.json_response(result)

    def _resolve_user(self, request: web.Request) -> str | None:
        key = request.match_info["id"]
        with self._dir_lock:
            if key in self.users or key in self.groups:
                return key
            if "/users/" in request.path:
                for user in self.users.values():
                    if user.user_principal_name.lower() == key.lower():
                        return user.id
        return None

    @staticmethod
    def _not_found(key: str) -> web.Response:
        return web.json_response(
            error_body(
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property "
                "objects are not present.",
            ),
            status=404,
        )

    @staticmethod
    def _bad_request(message: str) -> web.Response:
        return web.json_response(error_body("Request_BadRequest", message), status=400)

    async def _json_body(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def _check_member_groups(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        ids = body.get("groupIds") if body else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return self._bad_request("Invalid request: groupIds must be an array of strings.")
        if len(ids) > MAX_CHECK_IDS:
            return self._bad_request(
                f"The request has {len(ids)} group ids; at most {MAX_CHECK_IDS} are allowed."
            )
        object_id = self._resolve_user(request)
        if object_id is None:
            return self._not_found(request.match_info["id"])
        member_of = set(self.transitive_groups(object_id))
        return web.json_response(
            {
                "@odata.context": f"{self.graph_url}/$metadata#Collection(Edm.String)",
                "value": [i for i in ids if i in member_of],
            }
        )

    async def _get_member_groups(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        security_only = body.get("securityEnabledOnly") if body else None
        if not isinstance(security_only, bool):
            return self._bad_request("Invalid request: securityEnabledOnly (boolean) is required.")
        object_id = self._resolve_user(request)
        if object_id is None:
            return self._not_found(request.match_info["id"])
        groups = self.transitive_groups(object_id)
        with self._dir_lock:
            value = [g for g in groups if not security_only or self.groups[g].security_enabled]
        return web.json_response(
            {
                "@odata.context": f"{self.graph_url}/$metadata#Collection(Edm.String)",
                "value": value,
            }
        )

    async def _get_user(self, request: web.Request) -> web.Response:
        object_id = self._resolve_user(request)
        with self._dir_lock:
            user = self.users.get(object_id or "")
        if user is None:
            return self._not_found(request.match_info["id"])
        return web.json_response(
            {"@odata.context": f"{self.graph_url}/$metadata#users/$entity", **user.json()}
        )

    async def _transitive_members(self, request: web.Request) -> web.Response:
        group_id = request.match_info["id"]
        with self._dir_lock:
            known = group_id in self.groups
        if not known:
            return self._not_found(group_id)
        try:
            top = int(request.query.get("$top", "100"))
            skip = int(request.query.get("$skiptoken", "0"))
        except ValueError:
            return self._bad_request("Invalid $top or $skiptoken.")
        if not 1 <= top <= MAX_TOP or skip < 0:
            return self._bad_request(
                f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_TOP} inclusive."
            )
        members = self.transitive_members(group_id)
        if request.path.endswith("/microsoft.graph.user"):
            members = [m for m in members if isinstance(m, GraphUser)]
        select = [s for s in request.query.get("$select", "").split(",") if s]
        page = []
        for member in members[skip : skip + top]:
            item = member.json()
            if select:
                item = {k: v for k, v in item.items() if k in select or k in ("@odata.type", "id")}
            page.append(item)
        result: dict[str, Any] = {
            "@odata.context": f"{self.graph_url}/$metadata#directoryObjects",
            "value": page,
        }
        if skip + top < len(members):
            query = f"$top={top}&$skiptoken={skip + top}"
            if select:
                query += f"&$select={','.join(select)}"
            result["@odata.nextLink"] = f"{request.scheme}://{request.host}{request.path}?{query}"
        return web.json_response(result)
