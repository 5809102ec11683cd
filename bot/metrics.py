"""Prometheus metrics of the running bot (`GET /metrics`, prometheus-client's text format).

The counters live in prometheus-client's process-wide registry (with its process and Python
collectors); the modules that see each event call the one-line functions below. Gauges that
are facts of the database (approvals pending) are read when the page is scraped.

    fusion_turns_total{outcome}                    POST /api/messages answered, by outcome
    fusion_turn_duration_seconds                   how long each took (histogram)
    fusion_graph_calls_total{outcome}              Microsoft Graph answers (ok, throttled, …)
    fusion_connector_calls_total{outcome}          Bot Connector answers to replies and sends
    fusion_digest_deliveries_total{status}         digests posted (sent, removed, failed)
    fusion_approvals_pending                       approval requests waiting for a decision
    fusion_provisioning_jobs{state}                provisioning jobs by state (pending, sent, …)
    fusion_reconcile_differences{subscription,kind} differences still open in each
                                                   subscription's newest reconcile

Who may read it: loopback and the networks `FUSION_METRICS_NETWORKS` names (the peer address
of the connection, never a forwarded-for header); anyone else gets 404.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

TURNS = Counter(
    "fusion_turns", "Activities received on /api/messages, by how they were answered", ["outcome"]
)
TURN_SECONDS = Histogram(
    "fusion_turn_duration_seconds",
    "Time from receiving an activity to answering it",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
GRAPH_CALLS = Counter("fusion_graph_calls", "Microsoft Graph answers, by outcome", ["outcome"])
CONNECTOR_CALLS = Counter(
    "fusion_connector_calls", "Bot Connector answers to replies and proactive sends", ["outcome"]
)
DIGEST_DELIVERIES = Counter(
    "fusion_digest_deliveries", "Scheduled digests delivered, by status", ["status"]
)
APPROVALS_PENDING = Gauge(
    "fusion_approvals_pending", "Approval requests waiting for a decision (read at scrape)"
)

PROVISIONING_JOBS = Gauge(
    "fusion_provisioning_jobs", "Provisioning jobs by state (read at scrape)", ["state"]
)

RECONCILE_DIFFERENCES = Gauge(
    "fusion_reconcile_differences",
    "Differences between the tenant and the ledger still open in each subscription's newest "
    "reconcile (read at scrape)",
    ["subscription", "kind"],
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _outcome(status: int | None) -> str:
    """An HTTP answer as an outcome label: few values, so the series stay few."""
    if status is None:
        return "unreachable"
    if status == 429:
        return "throttled"
    if 200 <= status < 300:
        return "ok"
    if status in (401, 403):
        return "refused"
    if status >= 500:
        return "server-error"
    return "client-error"


def turn_answered(status: int, seconds: float) -> None:
    TURNS.labels(_turn_outcome(status)).inc()
    TURN_SECONDS.observe(seconds)


def _turn_outcome(status: int) -> str:
    if status == 401:
        return "unauthenticated"
    if status == 403:
        return "untrusted"
    if status == 412:  # a Teams SSO token exchange that did not work: Teams shows sign-in
        return "sso-failed"
    return _outcome(status)


def graph_answered(status: int | None) -> None:
    GRAPH_CALLS.labels(_outcome(status)).inc()


def connector_answered(status: int | None) -> None:
    CONNECTOR_CALLS.labels(_outcome(status)).inc()


def digest_delivered(status: str) -> None:
    DIGEST_DELIVERIES.labels(status).inc()


def exposition(
    approvals_pending: int | None,
    jobs: dict[str, int] | None = None,
    drift: dict[str, dict[str, int]] | None = None,
    drift_kinds: Iterable[str] = (),
) -> bytes:
    """The page: every metric in Prometheus text format (a gauge whose count could not be read
    keeps its last value). `drift` is subscription → kind → open differences; every kind in
    `drift_kinds` is shown for each subscription, zero included."""
    if approvals_pending is not None:
        APPROVALS_PENDING.set(approvals_pending)
    for state, number in (jobs or {}).items():
        PROVISIONING_JOBS.labels(state).set(number)
    if drift is not None:
        RECONCILE_DIFFERENCES.clear()  # a subscription no longer reconciled drops out
        kinds = list(drift_kinds)
        for code, per_kind in drift.items():
            for kind in kinds or per_kind:
                RECONCILE_DIFFERENCES.labels(code, kind).set(per_kind.get(kind, 0))
    return generate_latest()


class MetricsAudience:
    """Who may scrape: loopback, and the configured networks."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allows(self, peer: str | None) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False  # a Unix socket or something else that is not an IP address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback or any(address in net for net in self._networks)
