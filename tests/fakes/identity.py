"""Fake Bot Framework channel token issuer + fake Entra ID (login.microsoftonline.com) authority."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from ._server import INFO, RecordedRequest, ThreadedServer
from .tls import TLSFiles

__all__ = [
    "BAD_CHANNEL_TOKEN_KINDS",
    "BOT_FRAMEWORK_ISSUER",
    "BOT_FRAMEWORK_TENANT_ID",
    "FakeIdentityProvider",
    "SigningKey",
]

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
BOT_FRAMEWORK_TENANT_ID = "d6d49420-f39b-4df7-a1dc-d59a935871db"  # the real botframework.com tenant
DEFAULT_TENANT_ID = "11111111-2222-4333-8444-555555555555"
CHANNEL_METADATA_PATH = "/v1/.well-known/openidconfiguration"
CHANNEL_JWKS_PATH = "/v1/.well-known/keys"

BAD_CHANNEL_TOKEN_KINDS: tuple[str, ...] = (
    "expired",  # exp 10 min ago: beyond the 5 min clock skew
    "not_yet_valid",  # nbf 10 min ahead
    "wrong_audience",  # aud is another app id
    "wrong_issuer",  # iss is not https://api.botframework.com
    "wrong_signing_key",  # a JWKS kid, but signed by a key that is not in the JWKS
    "unknown_kid",  # kid not in the JWKS
    "service_url_mismatch",  # serviceurl claim differs from the activity's serviceUrl
    "missing_service_url",  # no serviceurl claim at all
    "unendorsed_key",  # signed by a JWKS key whose endorsements lack the channel id
    "alg_none",  # unsigned
    "hs256_public_key",  # HMAC-SHA256 with the public key PEM as secret (key confusion)
    "garbage",  # not a JWT
)


@dataclass
class SigningKey:
    """An RSA signing key and the endorsements its JWK advertises."""

    kid: str
    private_key: rsa.RSAPrivateKey
    endorsements: list[str] = field(default_factory=list)

    def jwk(self, *, with_endorsements: bool) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "x5t": self.kid, "use": "sig"})
        if with_endorsements:
            jwk["endorsements"] = list(self.endorsements)
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


Seconds = float | dt.timedelta


def _seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


@dataclass
class _App:
    secret: str
    roles: list[str]
    tenants: set[str] | None  # None: any tenant (multi-tenant app)
    object_id: str


class FakeIdentityProvider(ThreadedServer):
    """HTTPS fake of both Microsoft identity services a Teams bot meets.

    a) Bot Framework channel token issuer (what https://login.botframework.com serves):
       ``GET /v1/.well-known/openidconfiguration`` (issuer https://api.botframework.com, jwks_uri,
       RS256) and ``GET /v1/.well-known/keys`` (JWKS whose keys carry ``endorsements``).
       ``channel_token(app_id, service_url, ...)`` signs a token like the Bot Connector sends to a
       bot; ``bad_channel_token(kind, ...)`` / ``bad_channel_tokens(...)`` make each invalid
       variant in ``BAD_CHANNEL_TOKEN_KINDS``.  Because botbuilder fetches these documents with a
       bare ``requests.get`` (which trusts only ``REQUESTS_CA_BUNDLE``), the same routes are also
       served over plain http on a second port: ``channel_metadata_url_http``.  The metadata URLs
       carry a per-instance ``?fake=<id>`` query so botbuilder's process-wide, URL-keyed metadata
       cache can never serve a previous fake's keys when a port number is reused.
    b) Entra ID authority for msal client credentials:
       ``/{tenant}/v2.0/.well-known/openid-configuration``,
       ``POST /{tenant}/oauth2/v2.0/token`` (client_credentials; checks registered apps; ``scope``
       ``<resource>/.default`` becomes ``aud``), ``/common/discovery/instance``, and
       ``/{tenant}/discovery/v2.0/keys``.  ``verify_access_token(token, audience)`` checks tokens it
       issued (for the other fakes); ``token_request_count`` counts POSTs to the token endpoint.

    Constructor: ``FakeIdentityProvider(apps={client_id: secret}, tenant_id=..., channel_keys=
    {kid: endorsements}, tls=None)``.  Tenants known by default: ``tenant_id``,
    ``botframework.com`` / its GUID; add more with ``add_tenant``.
    """

    def __init__(
        self,
        apps: Mapping[str, str] | None = None,
        *,
        tenant_id: str = DEFAULT_TENANT_ID,
        channel_keys: Mapping[str, Sequence[str]] | None = None,
        token_lifetime: float = 3600,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(https=True, tls=tls)
        self.tenant_id = tenant_id
        self.token_lifetime = token_lifetime
        self.instance_id = uuid.uuid4().hex[:12]
        self._cfg_lock = threading.Lock()
        self._tenants: dict[str, str] = {
            tenant_id: tenant_id,
            "botframework.com": BOT_FRAMEWORK_TENANT_ID,
            BOT_FRAMEWORK_TENANT_ID: BOT_FRAMEWORK_TENANT_ID,
        }
        self._apps: dict[str, _App] = {}
        for client_id, secret in (apps or {}).items():
            self.register_app(client_id, secret)
        keys = channel_keys or {"bf-key-1": ["msteams", "emulator"], "bf-key-webchat": ["webchat"]}
        self.channel_keys: dict[str, SigningKey] = {
            kid: SigningKey(kid, _new_rsa(), list(endorsements))
            for kid, endorsements in keys.items()
        }
        self.default_kid = next(iter(self.channel_keys))
        self.rogue_key = SigningKey("rogue", _new_rsa(), [])  # never published
        self.entra_key = SigningKey(f"entra-{self.instance_id}", _new_rsa(), [])
        self._token_failures: deque[tuple[int, Any]] = deque()

    # -- configuration -----------------------------------------------------------------------
    def register_app(
        self,
        client_id: str,
        secret: str,
        *,
        roles: Iterable[str] = (),
        tenants: Iterable[str] | None = None,
    ) -> None:
        """Register an app registration (``tenants=None``: usable from every known tenant)."""
        with self._cfg_lock:
            self._apps[client_id] = _App(
                secret=secret,
                roles=list(roles),
                tenants={self._tenants.get(t, t) for t in tenants} if tenants is not None else None,
                object_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{client_id}")),
            )

    def add_tenant(self, name: str, tenant_id: str | None = None) -> str:
        """Make a tenant (GUID or domain name) known; returns its GUID."""
        tid = tenant_id or (name if _is_guid(name) else str(uuid.uuid5(uuid.NAMESPACE_DNS, name)))
        with self._cfg_lock:
            self._tenants[name] = tid
            self._tenants[tid] = tid
        return tid

    def fail_token_requests(
        self, count: int = 1, status: int = 503, error: str = "temporarily_unavailable"
    ) -> None:
        """Answer the next ``count`` token requests with ``status`` and an OAuth error body."""
        body = {"error": error, "error_description": f"AADSTS90000: scripted failure ({status})"}
        with self._cfg_lock:
            self._token_failures.extend((status, body) for _ in range(count))

    def answer_token_requests(self, count: int, body: Any, status: int = 200) -> None:
        """Answer the next ``count`` token requests ``status`` with ``body`` as JSON, whatever
        it is (a malformed token response: no ``access_token``, a number, a string...)."""
        with self._cfg_lock:
            self._token_failures.extend((status, body) for _ in range(count))

    # -- addresses ---------------------------------------------------------------------------
    def extra_listeners(self) -> Iterable[str]:
        return ("plain",)

    @property
    def http_base_url(self) -> str:
        """Plain-http twin of ``base_url`` (same routes, for botbuilder's metadata fetch)."""
        return f"http://127.0.0.1:{self.port_of('plain')}"

    @property
    def channel_metadata_url(self) -> str:
        """HTTPS Bot Framework OpenID metadata URL (botbuilder trusts it via REQUESTS_CA_BUNDLE)."""
        return f"{self.base_url}{CHANNEL_METADATA_PATH}?fake={self.instance_id}"

    @property
    def channel_metadata_url_http(self) -> str:
        """Plain-http Bot Framework OpenID metadata URL (works with no CA setup)."""
        return f"{self.http_base_url}{CHANNEL_METADATA_PATH}?fake={self.instance_id}"

    def authority(self, tenant: str | None = None) -> str:
        """msal authority URL, ``https://127.0.0.1:PORT/<tenant>``."""
        return f"{self.base_url}/{tenant or self.tenant_id}"

    def entra_jwks_url(self, tenant: str | None = None) -> str:
        return f"{self.base_url}/{tenant or self.tenant_id}/discovery/v2.0/keys"

    # -- Bot Framework channel tokens ----------------------------------------------------------
    def channel_token(
        self,
        app_id: str,
        service_url: str,
        *,
        kid: str | None = None,
        key: SigningKey | rsa.RSAPrivateKey | bytes | None = None,
        exp_delta: Seconds = 3600,
        nbf_delta: Seconds = -60,
        issuer: str = BOT_FRAMEWORK_ISSUER,
        audience: str | None = None,
        alg: str = "RS256",
        extra_claims: Mapping[str, Any] | None = None,
        omit: Iterable[str] = (),
    ) -> str:
        """A token like the Bot Connector sends a bot (claims iss, aud, serviceurl, nbf, exp, iat).

        ``kid`` names the header key id (default: the first channel key); ``key`` overrides the
        signing key (a ``SigningKey``, an RSA private key, or bytes as HMAC secret for ``HS*``);
        ``exp_delta``/``nbf_delta`` are seconds (or timedelta) relative to now; ``alg="none"``
        makes an unsigned token; ``omit`` drops claims.
        """
        kid = kid or self.default_kid
        now = int(time.time())
        claims: dict[str, Any] = {
            "serviceurl": service_url,
            "nbf": now + int(_seconds(nbf_delta)),
            "exp": now + int(_seconds(exp_delta)),
            "iat": now,
            "iss": issuer,
            "aud": audience if audience is not None else app_id,
        }
        claims.update(extra_claims or {})
        for name in omit:
            claims.pop(name, None)
        header = {"alg": alg, "typ": "JWT", "kid": kid, "x5t": kid}
        if alg == "none":
            return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."
        if alg.startswith("HS"):
            secret = (
                key if isinstance(key, bytes) else self._channel_signing_key(kid, None).public_pem()
            )
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[
                alg
            ]
            signing_input = (
                f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
            )
            signature = hmac.new(secret, signing_input.encode(), digest).digest()
            return f"{signing_input}.{_b64(signature)}"
        assert not isinstance(key, bytes), "bytes keys are for HS* algorithms"
        signing = self._channel_signing_key(kid, key)
        return jwt.encode(
            claims, signing.private_key, algorithm=alg, headers={"kid": kid, "x5t": kid}
        )

    def _channel_signing_key(
        self, kid: str, key: SigningKey | rsa.RSAPrivateKey | None
    ) -> SigningKey:
        if isinstance(key, SigningKey):
            return key
        if isinstance(key, rsa.RSAPrivateKey):
            return SigningKey(kid, key)
        return self.channel_keys.get(kid, self.rogue_key)

    def bad_channel_token(
        self, kind: str, app_id: str, service_url: str, *, channel_id: str = "msteams"
    ) -> str:
        """One invalid token of ``kind`` (see ``BAD_CHANNEL_TOKEN_KINDS``) for an activity with
        ``service_url`` and ``channel_id`` sent to ``app_id``."""
        token = self.channel_token
        match kind:
            case "expired":
                return token(app_id, service_url, exp_delta=-600, nbf_delta=-4200)
            case "not_yet_valid":
                return token(app_id, service_url, nbf_delta=600, exp_delta=4200)
            case "wrong_audience":
                return token(app_id, service_url, audience="00000000-0000-0000-0000-00000000beef")
            case "wrong_issuer":
                return token(app_id, service_url, issuer="https://sts.windows.net/evil/")
            case "wrong_signing_key":
                return token(app_id, service_url, kid=self.default_kid, key=self.rogue_key)
            case "unknown_kid":
                return token(app_id, service_url, kid="kid-not-in-jwks", key=self.rogue_key)
            case "service_url_mismatch":
                return token(app_id, service_url.rstrip("/") + ".attacker.invalid/")
            case "missing_service_url":
                return token(app_id, service_url, omit=("serviceurl",))
            case "unendorsed_key":
                # an empty endorsement list is not checked by botbuilder: skip such keys
                unendorsed = [
                    k
                    for k in self.channel_keys.values()
                    if k.endorsements and channel_id not in k.endorsements
                ]
                if not unendorsed:
                    raise ValueError(f"no channel key has endorsements without {channel_id!r}")
                return token(app_id, service_url, kid=unendorsed[0].kid)
            case "alg_none":
                return token(app_id, service_url, alg="none")
            case "hs256_public_key":
                return token(app_id, service_url, alg="HS256")
            case "garbage":
                return "not-a-jwt." + _b64(b"\x00garbage\xff") + ".x"
        raise ValueError(f"unknown bad token kind {kind!r}; known: {BAD_CHANNEL_TOKEN_KINDS}")

    def bad_channel_tokens(
        self, app_id: str, service_url: str, *, channel_id: str = "msteams"
    ) -> dict[str, str]:
        """Every ``BAD_CHANNEL_TOKEN_KINDS`` variant, by kind."""
        return {
            kind: self.bad_channel_token(kind, app_id, service_url, channel_id=channel_id)
            for kind in BAD_CHANNEL_TOKEN_KINDS
        }

    # -- Entra tokens --------------------------------------------------------------------------
    def _tid(self, tenant: str) -> str | None:
        with self._cfg_lock:
            return self._tenants.get(tenant)

    def entra_issuer(self, tenant_id: str) -> str:
        return f"https://sts.windows.net/{tenant_id}/"

    def mint_access_token(
        self,
        client_id: str,
        resource: str,
        *,
        tenant: str | None = None,
        exp_delta: Seconds | None = None,
        key: SigningKey | None = None,
        roles: Iterable[str] | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """An app-only (v1-style) access token as the token endpoint issues it, minted directly."""
        tid = self._tid(tenant or self.tenant_id) or (tenant or self.tenant_id)
        app = self._apps.get(client_id)
        now = int(time.time())
        lifetime = self.token_lifetime if exp_delta is None else _seconds(exp_delta)
        oid = app.object_id if app else str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{client_id}"))
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": self.entra_issuer(tid),
            "iat": now,
            "nbf": now - 5,
            "exp": now + int(lifetime),
            "appid": client_id,
            "azp": client_id,
            "appidacr": "1",
            "idtyp": "app",
            "oid": oid,
            "sub": oid,
            "tid": tid,
            "ver": "1.0",
            "roles": list(roles) if roles is not None else (list(app.roles) if app else []),
            "uti": uuid.uuid4().hex,
        }
        claims.update(extra_claims or {})
        signing = key or self.entra_key
        return jwt.encode(
            claims,
            signing.private_key,
            algorithm="RS256",
            headers={"kid": signing.kid, "x5t": signing.kid},
        )

    def user_token(
        self,
        object_id: str,
        audience: str,
        *,
        tenant: str | None = None,
        upn: str | None = None,
        name: str | None = None,
        groups: Sequence[str] | None = None,
        overage: bool = False,
        graph_url: str | None = None,
        exp_delta: Seconds | None = None,
        nbf_delta: Seconds = -5,
        issuer: str | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """A v2 delegated user token (e.g. Teams SSO) with a ``groups`` claim, or, with
        ``overage=True``, the ``_claim_names``/``_claim_sources`` overage indicator instead.

        ``issuer`` defaults to this authority's own v2.0 issuer (``{base_url}/{tid}/v2.0``, as
        its OpenID metadata says); ``key`` signs with another key (e.g. ``rogue_key``)."""
        tid = self._tid(tenant or self.tenant_id) or (tenant or self.tenant_id)
        now = int(time.time())
        lifetime = self.token_lifetime if exp_delta is None else _seconds(exp_delta)
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": issuer if issuer is not None else f"{self.base_url}/{tid}/v2.0",
            "iat": now,
            "nbf": now + int(_seconds(nbf_delta)),
            "exp": now + int(lifetime),
            "oid": object_id,
            "sub": object_id,
            "tid": tid,
            "ver": "2.0",
            "preferred_username": upn or f"{object_id}@example.test",
            "name": name or object_id,
        }
        if overage:
            graph = graph_url or "https://graph.microsoft.com/v1.0"
            claims["_claim_names"] = {"groups": "src1"}
            claims["_claim_sources"] = {
                "src1": {"endpoint": f"{graph}/users/{object_id}/getMemberGroups"}
            }
        elif groups is not None:
            claims["groups"] = list(groups)
        signing = key or self.entra_key
        return jwt.encode(
            claims,
            signing.private_key,
            algorithm="RS256",
            headers={"kid": signing.kid, "x5t": signing.kid},
        )

    def verify_access_token(self, token: str, audience: str) -> dict[str, Any]:
        """Claims of an access token this fake issued for ``audience``; raises
        ``jwt.InvalidTokenError`` if it is not (bad signature/kid/alg, expired, wrong aud/iss)."""
        header = jwt.get_unverified_header(token)
        if header.get("kid") != self.entra_key.kid:
            raise jwt.InvalidTokenError(f"unknown kid {header.get('kid')!r}")
        claims: dict[str, Any] = jwt.decode(
            token,
            self.entra_key.private_key.public_key(),
            algorithms=["RS256"],
            audience=audience,
            options={"require": ["exp", "iat", "nbf", "aud", "iss", "tid"]},
        )
        with self._cfg_lock:
            known = set(self._tenants.values())
        if claims["tid"] not in known or claims["iss"] != self.entra_issuer(claims["tid"]):
            raise jwt.InvalidIssuerError(f"issuer {claims['iss']!r} not from this fake")
        return claims

    @property
    def token_requests(self) -> list[RecordedRequest]:
        """Requests to any ``/oauth2/v2.0/token`` endpoint."""
        return [
            r for r in self.requests if r.method == "POST" and r.path.endswith("/oauth2/v2.0/token")
        ]

    @property
    def token_request_count(self) -> int:
        return len(self.token_requests)

    # -- HTTP ----------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(CHANNEL_METADATA_PATH, self._channel_metadata)
        app.router.add_get(CHANNEL_JWKS_PATH, self._channel_jwks)
        app.router.add_get("/common/discovery/instance", self._instance_discovery)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._tenant_metadata)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._entra_jwks)
        app.router.add_get("/{tenant}/discovery/keys", self._entra_jwks)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        return app

    @staticmethod
    def _origin(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def _channel_metadata(self, request: web.Request) -> web.Response:
        origin = self._origin(request)
        return web.json_response(
            {
                "issuer": BOT_FRAMEWORK_ISSUER,
                "authorization_endpoint": "https://invalid.botframework.com",
                "jwks_uri": f"{origin}{CHANNEL_JWKS_PATH}?fake={self.instance_id}",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _channel_jwks(self, request: web.Request) -> web.Response:
        keys = [k.jwk(with_endorsements=True) for k in self.channel_keys.values()]
        return web.json_response({"keys": keys})

    async def _entra_jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.entra_key.jwk(with_endorsements=False)]})

    async def _instance_discovery(self, request: web.Request) -> web.Response:
        origin = self._origin(request)
        endpoint = request.query.get("authorization_endpoint", "")
        segments = [s for s in urlparse(endpoint).path.split("/") if s]
        tenant = segments[0] if segments else "common"
        return web.json_response(
            {
                "tenant_discovery_endpoint": (
                    f"{origin}/{tenant}/v2.0/.well-known/openid-configuration"
                ),
                "api-version": "1.1",
                "metadata": [
                    {
                        "preferred_network": request.host,
                        "preferred_cache": request.host,
                        "aliases": [request.host],
                    }
                ],
            }
        )

    async def _tenant_metadata(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        tid = self._tid(tenant)
        if tid is None and tenant not in ("common", "organizations"):
            return web.json_response(
                {
                    "error": "invalid_tenant",
                    "error_description": f"AADSTS90002: Tenant '{tenant}' not found.",
                    "error_codes": [90002],
                },
                status=400,
            )
        origin = self._origin(request)
        issuer_tid = tid or "{tenantid}"
        return web.json_response(
            {
                "token_endpoint": f"{origin}/{tenant}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{origin}/{tenant}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{origin}/{issuer_tid}/v2.0",
                "authorization_endpoint": f"{origin}/{tenant}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{origin}/{tenant}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{origin}/{tenant}/oauth2/v2.0/logout",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "msgraph_host": "graph.microsoft.com",
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        def oauth_error(status: int, error: str, code: int, description: str) -> web.Response:
            request[INFO]["error"] = error
            return web.json_response(
                {
                    "error": error,
                    "error_description": f"AADSTS{code}: {description}",
                    "error_codes": [code],
                    "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                    "trace_id": str(uuid.uuid4()),
                    "correlation_id": str(uuid.uuid4()),
                },
                status=status,
            )

        with self._cfg_lock:
            failure = self._token_failures.popleft() if self._token_failures else None
        if failure is not None:
            return web.json_response(failure[1], status=failure[0])
        tenant = request.match_info["tenant"]
        tid = self._tid(tenant)
        if tid is None:
            return oauth_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        form = await request.post()
        client_id = str(form.get("client_id", ""))
        secret = str(form.get("client_secret", ""))
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        request[INFO].update(client_id=client_id, scope=form.get("scope"), tenant=tenant)
        if form.get("grant_type") != "client_credentials":
            return oauth_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        with self._cfg_lock:
            app = self._apps.get(client_id)
        if app is None:
            return oauth_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory.",
            )
        if app.tenants is not None and tid not in app.tenants:
            return oauth_error(
                400,
                "unauthorized_client",
                700016,
                f"Application '{client_id}' was not found in the directory '{tenant}'.",
            )
        if not secret or not hmac.compare_digest(secret, app.secret):
            return oauth_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        scopes = str(form.get("scope", "")).split()
        resource_scopes = [s for s in scopes if s not in ("openid", "profile", "offline_access")]
        if len(resource_scopes) != 1 or not resource_scopes[0].endswith("/.default"):
            return oauth_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {' '.join(scopes)!r} is not valid. "
                "Client credential flows must have a scope value with /.default suffixed "
                "to the resource identifier (application ID URI).",
            )
        resource = resource_scopes[0][: -len("/.default")]
        token = self.mint_access_token(client_id, resource, tenant=tid)
        request[INFO]["audience"] = resource
        lifetime = int(self.token_lifetime)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }
        )


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
