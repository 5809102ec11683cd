"""The usage digest as an Adaptive Card: summary facts, alerts, forecast, one page of products
with a bar each, changes since the last digest, pending approvals.

The frame is the template `cards/digest.json`; the sections are built here from the Digest
reply with the renderer's building blocks. The card stays under the renderer's size limit:
if a page would not fit, products are dropped from its end and the note says how many.
"""

from __future__ import annotations

from typing import Any

from bot.commands.reply import Digest
from bot.commands.words import action_noun, event_sentence, relative, when
from bot.domain.digests import DigestReport, ProductLine
from bot.domain.reconcile import drift_lines
from bot.teams.blocks import (
    MAX_CARD_BYTES,
    NBSP,
    VERB_PAGE,
    bind,
    card_size,
    cut,
    execute,
    figure,
    heading,
    percent,
    record,
    template,
    text,
    unbroken,
)

# Bar colours: comfortable, getting full, at or over the alert threshold.
WARN_FROM = 0.75
#: Records per list (alerts, changes, approvals): the card reads in about two phone screens.
LIST_CAP = 5


def _tone(share: float, threshold: float) -> str:
    if share >= threshold:
        return "attention"
    if share >= min(WARN_FROM, threshold):
        return "warning"
    return "good"


#: Characters of a utilisation bar (fits 360 px beside its figures' first words).
BAR_CHARS = 16
_BAR_COLOR = {"good": "Good", "warning": "Warning", "attention": "Attention"}


def bar(share: float, tone: str) -> dict[str, Any]:
    """A utilisation bar as a text run: █ filled to `share` (0..1), ░ for the rest, coloured
    by the alert threshold (one line high, unlike styled columns with their padding)."""
    filled = max(0, min(BAR_CHARS, round(BAR_CHARS * share)))
    return {
        "type": "TextRun",
        "text": "█" * filled + "░" * (BAR_CHARS - filled),
        "fontType": "Monospace",
        "color": _BAR_COLOR.get(tone, "Default"),
    }


def _product(p: ProductLine, threshold: float, first: bool) -> list[dict[str, Any]]:
    """A pool: its name, then its bar and figures on one line."""
    tone = _tone(p.utilisation, threshold)
    color = {"attention": "Attention", "warning": "Warning"}.get(tone, "Default")
    figures = (
        f" {percent(p.utilisation)} · {figure(p.allocated)} of {figure(p.capacity)} allocated · "
        f"{figure(p.in_use)} in use"
    )
    return [
        {
            "type": "Container",
            "spacing": "None" if first else "Small",
            "items": [
                text(f"**{p.name}**", spacing="None", color=color),
                {
                    "type": "RichTextBlock",
                    "spacing": "None",
                    "inlines": [
                        bar(p.utilisation, tone),
                        {"type": "TextRun", "text": figures, "isSubtle": True, "size": "Small"},
                    ],
                },
            ],
        }
    ]


#: Pools drawn in the trend chart (the fullest), and points per line (one a week, or less).
TREND_POOLS = 4
TREND_POINTS = 8


def _trend(report: DigestReport) -> list[dict[str, Any]]:
    """The last weeks' utilisation of the fullest pools: a Chart.Line where Teams draws charts,
    with a sentence per pool (first → last) as its fallback for clients without charts."""
    by_name = {p.name: p for p in report.products if not p.open_capacity and p.capacity}
    pools = sorted(
        (n for n, pts in report.trends.items() if n in by_name and len(pts) >= 2),
        key=lambda n: (-by_name[n].utilisation, n),
    )[:TREND_POOLS]
    if not pools:
        return []
    lines, sentences = [], []
    for name in pools:
        points = report.trends[name]
        step = max(1, -(-len(points) // TREND_POINTS))
        kept = points[::step]
        if kept[-1] != points[-1]:
            kept.append(points[-1])
        capacity = by_name[name].capacity
        lines.append(
            {
                "legend": name,
                "values": [
                    {"x": f"{d.day} {d:%b}", "y": round(100 * v / capacity)} for d, v in kept
                ],
            }
        )
        first, last = points[0], points[-1]
        sentences.append(
            f"**{name}**: {percent(first[1] / capacity)} on {first[0].day} {first[0]:%b} → "
            f"{percent(last[1] / capacity)} on {last[0].day} {last[0]:%b}"
        )
    fallback = {
        "type": "Container",
        "items": [text(line, spacing="Small") for line in sentences],
    }
    return [
        heading("Trend (allocated ÷ capacity, %)"),
        {
            "type": "Chart.Line",
            "title": "Allocated ÷ capacity (%)",
            "colorSet": "categorical",
            "data": lines,
            "fallback": fallback,
        },
    ]


def _open_licenses(lines: list[ProductLine]) -> list[dict[str, Any]]:
    """Licenses without a capacity in one short paragraph: they cannot run out."""
    if not lines:
        return []
    names = ", ".join(
        f"{p.name} ({figure(p.in_use)})" if p.in_use else p.name for p in lines[: LIST_CAP * 4]
    )
    more = len(lines) - min(len(lines), LIST_CAP * 4)
    return [
        text(
            f"**{figure(len(lines))} licenses with open capacity**, "
            f"{figure(sum(p.in_use for p in lines))} in use",
            spacing="Medium",
        ),
        text(
            names + (f" and {more:,} more" if more > 0 else ""),
            isSubtle=True,
            size="Small",
            spacing="None",
        ),
    ]


def _alerts(report: DigestReport) -> list[dict[str, Any]]:
    """The pools and subscriptions near exhaustion, with their forecast, named first."""
    if not report.pool_alerts and not report.subscription_alerts_total and not report.forecasts:
        return []
    out = [heading("Running out", "Attention")]
    forecast = {f.product: f for f in report.forecasts}
    named: set[str] = set()
    for p in report.pool_alerts[:LIST_CAP]:
        named.add(p.name)
        f = forecast.get(p.name)
        left = f"{figure(p.capacity - p.allocated)} left to allocate"
        soon = f" · runs out in about {figure(round(f.days))} days" if f else ""
        out.append(
            record(
                f"**{p.name}** {percent(p.utilisation)} allocated, over the "
                f"{report.threshold_percent}{NBSP}% alert",
                left + soon,
                first=True,
            )
        )
    for f in report.forecasts[:LIST_CAP]:
        if f.product in named:
            continue
        out.append(
            record(
                f"**{f.product}** runs out in about {figure(round(f.days))} days",
                f"{figure(f.headroom)} left, allocations growing {f.per_day:,.1f} a day "
                f"(around {f.runs_out_on.day} {f.runs_out_on:%b})",
                first=True,
            )
        )
    for a in report.subscription_alerts[:LIST_CAP]:
        out.append(
            record(
                f"**{a.code}** {a.product} {percent(a.share)} in use",
                f"{figure(a.in_use)} of {figure(a.allocated)} allocated in use",
                first=True,
            )
        )
    more = report.subscription_alerts_total - min(len(report.subscription_alerts), LIST_CAP)
    if more > 0:
        out.append(text(f"… and {more:,} more subscriptions.", isSubtle=True))
    return out


def _changes(report: DigestReport) -> list[dict[str, Any]]:
    if report.changes_since is None:
        return []
    out = [heading(f"Changes since {when(report.changes_since)}")]
    if not report.changes_total:
        out.append(text("No changes.", isSubtle=True))
        return out
    shown = report.changes[:LIST_CAP]
    kinds = ", ".join(
        f"{figure(n)} {action_noun(action, n)}"
        for action, n in list(report.changes_by_action.items())[:6]
    )
    out.append(text(f"**{figure(report.changes_total)} changes**: {kinds}", spacing="Small"))
    for c in shown:
        sentence = event_sentence(
            cut(c.actor, 40), c.action, cut(c.target, 80), c.before, c.after, details=False
        )
        out.append(text(sentence, spacing="Small"))
        out.append(
            text(f"{when(c.at)} · via {c.source}", isSubtle=True, size="Small", spacing="None")
        )
    more = report.changes_total - len(shown)
    if more > 0:
        out.append(text(f"… and {more:,} more changes (`audit`).", isSubtle=True))
    return out


def _approvals(report: DigestReport) -> list[dict[str, Any]]:
    if not report.approvals_total:
        return []
    out = [heading(f"Pending approvals ({report.approvals_total:,})", "Warning")]
    for a in report.approvals[:LIST_CAP]:
        out.append(
            record(
                cut(a.summary, 120),
                f"{a.short_id or a.id} · asked by {cut(a.requester, 40)} · "
                f"expires {relative(a.expires_at)}",
                first=True,
            )
        )
    more = report.approvals_total - min(len(report.approvals), LIST_CAP)
    if more > 0:
        out.append(text(f"… and {more:,} more (`approvals`).", isSubtle=True))
    return out


def _provisioning(report: DigestReport) -> list[dict[str, Any]]:
    pending, failed = report.provisioning_pending, report.provisioning_failed
    if not pending and not failed:
        return []
    parts = [f"{pending:,} still being set up"] if pending else []
    if failed:
        parts.append(f"{failed:,} failed (`provisioning --state failed`)")
    return [
        heading("Numbers in Teams", "Warning" if failed else "Default"),
        text("; ".join(parts) + "."),
    ]


def _drift(report: DigestReport) -> list[dict[str, Any]]:
    lines = drift_lines(report.drift)
    if not lines:
        return []
    codes = sorted(c for c, kinds in report.drift.items() if kinds)
    hint = f"`reconcile {codes[0]}`" if len(codes) == 1 else "`reconcile`"
    return [
        heading("Teams and the ledger", "Warning"),
        text("; ".join(lines) + f". See and fix each with {hint}."),
    ]


def _card(reply: Digest, keep: int | None) -> dict[str, Any]:
    report: DigestReport = reply.report
    threshold = report.threshold_percent / 100
    start = (reply.page - 1) * reply.page_size
    products = report.products[start : start + reply.page_size]
    shown = products if keep is None else products[:keep]
    sections: list[dict[str, Any]] = []
    if reply.page == 1:
        sections += _alerts(report) + _trend(report)
    if shown:
        title = "Products" + (f" (page {reply.page} of {reply.pages})" if reply.pages > 1 else "")
        sections.append(heading(title))
        pools = [p for p in shown if not p.open_capacity]
        for i, p in enumerate(pools):
            sections += _product(p, threshold, i == 0)
        sections += _open_licenses([p for p in shown if p.open_capacity])
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
    over = len(report.pool_alerts) + report.subscription_alerts_total
    summary = (
        f"{figure(len(report.products))} products · "
        + (f"{figure(over)} near exhaustion" if over else "none near exhaustion")
        + f" · {figure(report.approvals_total)} pending approvals"
    )
    return bind(
        template("digest"),
        {
            "tone": tone,
            "title": f"Usage digest · {when(report.generated_at)}",
            "subtitle": summary if reply.page == 1 else "",
            "facts": [],
            "sections": sections,
            "note": note
            or f"Bars are allocated ÷ capacity, amber from {percent(WARN_FROM)}, red from "
            f"{report.threshold_percent}{NBSP}%.",
            "paging": f"Page {reply.page} of {reply.pages}" if reply.pages > 1 else "",
            "actions": actions,
        },
    )


def digest_card(reply: Digest) -> dict[str, Any]:
    """The digest card, never over MAX_CARD_BYTES."""
    card = unbroken(_card(reply, None))
    keep = reply.page_size
    while card_size(card) > MAX_CARD_BYTES and keep > 0:
        keep = keep * 3 // 4 if keep > 4 else keep - 1
        card = unbroken(_card(reply, keep))
    return card
