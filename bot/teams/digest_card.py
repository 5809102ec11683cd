"""The usage digest as an Adaptive Card: summary facts, alerts, forecast, one page of products
with a bar each, changes since the last digest, pending approvals.

The frame is the template `cards/digest.json`; the sections are built here from the Digest
reply with the renderer's building blocks. The card stays under the renderer's size limit:
if a page would not fit, products are dropped from its end and the note says how many.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from bot.commands.reply import Digest
from bot.domain.digests import DigestReport, ProductLine
from bot.domain.reconcile import drift_lines
from bot.teams.render import (
    MAX_CARD_BYTES,
    VERB_PAGE,
    _cell,
    _cut,
    bind,
    card_size,
    execute,
    template,
)

# Bar colours: comfortable, getting full, at or over the alert threshold.
WARN_FROM = 0.75


def _tone(share: float, threshold: float) -> str:
    if share >= threshold:
        return "attention"
    if share >= min(WARN_FROM, threshold):
        return "warning"
    return "good"


def _pct(share: float) -> str:
    return f"{100 * share:.0f} %"


def _heading(text: str, color: str = "Default") -> dict[str, Any]:
    return {
        "type": "TextBlock",
        "text": text,
        "weight": "Bolder",
        "size": "Medium",
        "color": color,
        "spacing": "Large",
        "separator": True,
        "wrap": True,
    }


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "TextBlock",
        "text": _cut(text, 4000),
        "wrap": True,
        "spacing": "Small",
        **extra,
    }


def bar(share: float, style: str) -> dict[str, Any]:
    """A horizontal bar filled to `share` (0..1): two weighted columns, the filled one coloured."""
    filled = max(0, min(100, round(100 * share)))
    columns = [
        {"type": "Column", "width": filled, "style": style, "minHeight": "8px", "items": []},
        {
            "type": "Column",
            "width": 100 - filled,
            "style": "emphasis",
            "minHeight": "8px",
            "spacing": "None",
            "items": [],
        },
    ]
    return {
        "type": "ColumnSet",
        "spacing": "Small",
        "minHeight": "8px",
        "columns": [c for c in columns if c["width"]],
    }


def _product(p: ProductLine, threshold: float) -> list[dict[str, Any]]:
    if p.open_capacity:
        figures = f"{p.allocated:,} allocated · open capacity · {p.in_use:,} in use"
    else:
        figures = (
            f"{p.allocated:,} of {p.capacity:,} allocated ({_pct(p.utilisation)}) · "
            f"{p.in_use:,} in use"
        )
    header = {
        "type": "ColumnSet",
        "spacing": "Medium",
        "columns": [
            {
                "type": "Column",
                "width": "stretch",
                "items": [_text(f"**{p.name}** · {p.kind}", spacing="None")],
            },
            {
                "type": "Column",
                "width": "auto",
                "items": [
                    _text(figures, spacing="None", isSubtle=True, horizontalAlignment="Right")
                ],
            },
        ],
    }
    if p.open_capacity:
        return [header]
    return [header, bar(p.utilisation, _tone(p.utilisation, threshold))]


def _alerts(report: DigestReport, threshold: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not report.pool_alerts and not report.subscription_alerts_total:
        return out
    out.append(_heading(f"Near exhaustion (≥ {report.threshold_percent} %)", "Attention"))
    if report.pool_alerts:
        pools = ", ".join(
            f"**{p.name}** {_pct(p.utilisation)} ({p.capacity - p.allocated:,} left)"
            for p in report.pool_alerts[:10]
        )
        more = len(report.pool_alerts) - 10
        out.append(_text(f"Pools: {pools}" + (f" and {more} more" if more > 0 else "")))
    if report.subscription_alerts:
        rows = [
            {
                "type": "TableRow",
                "style": "emphasis",
                "cells": [
                    _cell("Subscription", bold=True),
                    _cell("Product", bold=True),
                    _cell("In use", bold=True, right=True),
                    _cell("Share", bold=True, right=True),
                ],
            }
        ]
        for a in report.subscription_alerts:
            rows.append(
                {
                    "type": "TableRow",
                    "cells": [
                        _cell(a.code),
                        _cell(a.product),
                        _cell(f"{a.in_use:,} / {a.allocated:,}", right=True),
                        _cell(_pct(a.share), right=True),
                    ],
                }
            )
        out.append(
            {
                "type": "Table",
                "spacing": "Small",
                "firstRowAsHeader": True,
                "columns": [{"width": 2}, {"width": 2}, {"width": 2}, {"width": 1}],
                "rows": rows,
            }
        )
        more = report.subscription_alerts_total - len(report.subscription_alerts)
        if more > 0:
            out.append(_text(f"… and {more:,} more subscriptions.", isSubtle=True))
    return out


def _forecasts(report: DigestReport) -> list[dict[str, Any]]:
    if not report.forecasts:
        return []
    lines = [
        f"- **{f.product}**: about {f.days:,.0f} days left ({f.runs_out_on:%Y-%m-%d}), "
        f"allocations growing {f.per_day:,.1f} a day, {f.headroom:,} left"
        for f in report.forecasts[:10]
    ]
    return [_heading("Forecast"), _text("\n".join(lines))]


def _changes(report: DigestReport) -> list[dict[str, Any]]:
    if report.changes_since is None:
        return []
    since = f"{report.changes_since.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    out = [_heading(f"Changes since {since}")]
    if not report.changes_total:
        out.append(_text("No changes.", isSubtle=True))
        return out
    by_action = ", ".join(
        f"{action} ×{n}" for action, n in list(report.changes_by_action.items())[:8]
    )
    out.append(_text(f"{report.changes_total:,} changes: {by_action}"))
    lines = [
        f"- {c.at.astimezone(UTC):%m-%d %H:%M} {_cut(c.actor, 40)}: {c.action} {_cut(c.target, 80)}"
        for c in report.changes
    ]
    out.append(_text("\n".join(lines), isSubtle=True))
    return out


def _approvals(report: DigestReport) -> list[dict[str, Any]]:
    if not report.approvals_total:
        return []
    lines = [
        f"- `{a.id}` {_cut(a.summary, 120)} — {_cut(a.requester, 40)}, "
        f"expires {a.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        for a in report.approvals
    ]
    more = report.approvals_total - len(report.approvals)
    if more > 0:
        lines.append(f"- … and {more} more (`approvals`)")
    return [
        _heading(f"Pending approvals ({report.approvals_total})", "Warning"),
        _text("\n".join(lines)),
    ]


def _provisioning(report: DigestReport) -> list[dict[str, Any]]:
    pending, failed = report.provisioning_pending, report.provisioning_failed
    if not pending and not failed:
        return []
    parts = [f"{pending:,} still being set up"] if pending else []
    if failed:
        parts.append(f"{failed:,} failed (`provisioning --state failed`)")
    return [
        _heading("Numbers in Teams", "Warning" if failed else "Default"),
        _text("; ".join(parts) + "."),
    ]


def _drift(report: DigestReport) -> list[dict[str, Any]]:
    lines = drift_lines(report.drift)
    if not lines:
        return []
    codes = sorted(c for c, kinds in report.drift.items() if kinds)
    hint = f"`reconcile {codes[0]}`" if len(codes) == 1 else "`reconcile`"
    return [
        _heading("Teams and the ledger", "Warning"),
        _text("; ".join(lines) + f". See and fix each with {hint}."),
    ]


def _card(reply: Digest, keep: int | None) -> dict[str, Any]:
    report: DigestReport = reply.report
    threshold = report.threshold_percent / 100
    start = (reply.page - 1) * reply.page_size
    products = report.products[start : start + reply.page_size]
    shown = products if keep is None else products[:keep]
    sections: list[dict[str, Any]] = []
    if reply.page == 1:
        sections += _alerts(report, threshold) + _forecasts(report)
    if shown:
        title = "Products" + (f" (page {reply.page} of {reply.pages})" if reply.pages > 1 else "")
        sections.append(_heading(title))
        for p in shown:
            sections += _product(p, threshold)
    if reply.page == 1:
        sections += _changes(report) + _approvals(report) + _provisioning(report)
        sections += _drift(report)
    note = ""
    if len(shown) < len(products):
        note = f"{len(products) - len(shown)} more products on this page did not fit in a card."
    if not report.products:
        note = "No products yet."
    tone = (
        "attention"
        if report.pool_alerts
        else "warning"
        if report.subscription_alerts_total
        else "good"
    )
    actions = (
        [execute("Next page", VERB_PAGE, {"command": reply.next_command})]
        if reply.next_command
        else []
    )
    facts = [{"title": k, "value": v} for k, v in reply.facts]
    return bind(
        template("digest"),
        {
            "tone": tone,
            "title": reply.title,
            "subtitle": f"Alert threshold {report.threshold_percent} % · "
            "utilisation is allocated ÷ capacity",
            "facts": facts if reply.page == 1 else [],
            "sections": sections,
            "note": note,
            "paging": f"Page {reply.page} of {reply.pages}" if reply.pages > 1 else "",
            "actions": actions,
        },
    )


def digest_card(reply: Digest) -> dict[str, Any]:
    """The digest card, never over MAX_CARD_BYTES."""
    card = _card(reply, None)
    keep = reply.page_size
    while card_size(card) > MAX_CARD_BYTES and keep > 0:
        keep = keep * 3 // 4 if keep > 4 else keep - 1
        card = _card(reply, keep)
    return card
