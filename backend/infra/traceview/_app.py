"""The viewer's web app: server-rendered pages over a `SpanQueries` store, a JSON API for the
CLI, the dashboard over the running services, and the OTLP/HTTP ingest route.

Pages: search (`/`), a trace's waterfall (`/trace/{id}`) and statistics (`/trace/{id}/stats`),
an order across its linked traces (`/order/{key}`), two traces compared (`/compare`), the
tick-to-trade breakdown (`/stages`), the bot's decisions and funnel (`/decisions`), the service
map (`/map`) and the dashboard (`/dashboard`). No build step: two small files under `static/`.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from . import _analysis as analysis
from ._queries import BUSINESS_KEYS, SearchQuery, SpanQueries, StageQuantiles
from ._rollup import WindowRollup, breakdown, window_of_spans
from ._store import StoredSpan

STATIC = Path(__file__).with_name("static")
DEFAULT_WINDOW = "15m"
MAX_DECISIONS = 500
"""The decisions page lists at most this many of the window's newest decisions."""
MAX_WINDOW_SPANS = 50_000
"""Statistics over a window read at most this many of its newest spans (about a second of
work on a 2-core machine; `python -m bench.viewer`)."""

_COLOURS = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
]
_NAV = [
    ("/", "Search"),
    ("/decisions", "Decisions"),
    ("/stages", "Tick-to-trade"),
    ("/map", "Service map"),
    ("/compare", "Compare"),
    ("/dashboard", "Dashboard"),
]
_ERROR_CHIP = " <span class=err>error</span>"
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadQuery(ValueError):
    """A query parameter that cannot be understood; the message names it."""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def parse_window(text: str | None, default: str = DEFAULT_WINDOW) -> float:
    """`30s`, `15m`, `2h`, `1d` in seconds."""
    text = text or default
    m = _WINDOW.match(text)
    if not m or float(m.group(1)) <= 0:
        raise BadQuery(f"window={text!r}: expected a positive number and a unit, like 15m or 2h")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def _float(params: QueryParams, name: str) -> float | None:
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(f"{name}={raw!r}: expected a number of milliseconds") from None
    if value < 0:
        raise BadQuery(f"{name}={raw!r}: must not be negative")
    return value


def parse_attributes(text: str) -> dict[str, str]:
    """`key=value` pairs, separated by blanks, commas or new lines."""
    out = {}
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadQuery(f"attribute {item!r}: expected key=value")
        out[key] = value
    return out


def parse_search(params: QueryParams, now_ns: int | None = None) -> SearchQuery:
    """The search form's (and `/api/traces`') parameters as a `SearchQuery`."""
    now_ns = now_ns or time.time_ns()
    lookback = params.get("lookback", "").strip()
    since = now_ns - int(parse_window(lookback) * 1e9) if lookback else None
    error_text = params.get("error", "").strip().lower()
    if error_text not in ("", "any", "true", "false", "yes", "no", "1", "0"):
        raise BadQuery(f"error={error_text!r}: expected true or false")
    error = None if error_text in ("", "any") else error_text in ("true", "yes", "1")
    limit_text = params.get("limit", "").strip() or "20"
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        raise BadQuery(f"limit={limit_text!r}: expected a whole number from 1 to 1000")
    min_ms, max_ms = _float(params, "min_ms"), _float(params, "max_ms")
    if min_ms is not None and max_ms is not None and min_ms > max_ms:
        raise BadQuery(f"min_ms={min_ms} is above max_ms={max_ms}")
    return SearchQuery(
        service=params.get("service", "").strip() or None,
        operation=params.get("operation", "").strip() or None,
        min_ms=min_ms,
        max_ms=max_ms,
        error=error,
        attributes=parse_attributes(params.get("attr", "")),
        business_key=params.get("key", "").strip() or None,
        since_ns=since,
        include_noise=params.get("noise", "") in ("1", "true", "on", "yes"),
        limit=int(limit_text),
    )


def _read_view(view: WindowRollup, window: str) -> str:
    """What a statistic over a window was computed from: roll-ups and/or spans."""
    parts = []
    if view.rolled_minutes:
        parts.append(f"per-minute roll-ups of {view.rolled_minutes} minutes")
    if view.spans_read or not parts:
        newest = "the newest " if view.spans_limited else ""
        parts.append(f"{newest}{view.spans_read} spans not rolled up yet")
    return f"The last {window}: " + " and ".join(parts) + "."


def _kept(view: WindowRollup) -> int:
    """Decisions kept with their traces in the window."""
    return sum(row[0] for row in view.funnel.values())


def _when(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9)) + f".{(ns // 1_000_000) % 1000:03d}"


def _event_time(span: StoredSpan, index: int) -> str:
    """When a span's event happened: the time of day and the offset from the span's start."""
    times = span.event_times_ns
    at = times[index] if index < len(times) else 0
    if not at:
        return ""
    return (
        f"<span class='muted event-time'>at {_when(at)} "
        f"(+{_ms((at - span.start_ns) / 1e6)} ms)</span> "
    )


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def page(title: str, body: str, *, here: str = "", status: int = 200) -> HTMLResponse:
    nav = "".join(
        f"<a href='{href}'{' class=here' if href == here else ''}>{label}</a>"
        for href, label in _NAV
    )
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{esc(title)} · Quantum Trader traces</title>"
        "<link rel='stylesheet' href='/static/viewer.css'>"
        "<script src='/static/viewer.js'></script></head>"
        f"<body><nav>{nav}</nav><main>{body}</main></body></html>",
        status_code=status,
    )


def error_page(title: str, message: str, *, status: int = 400, here: str = "") -> HTMLResponse:
    return page(
        title, f"<h2>{esc(title)}</h2><div class='error-box'>{esc(message)}</div>", here=here,
        status=status,
    )  # fmt: skip


def _colours(services: Iterable[str]) -> dict[str, str]:
    return {svc: _COLOURS[i % len(_COLOURS)] for i, svc in enumerate(sorted(set(services)))}


def _legend(colour: Mapping[str, str]) -> str:
    items = "".join(
        f"<span><span style='color:{c}'>■</span> {esc(svc)}</span>" for svc, c in colour.items()
    )
    return f"<p class='legend'>{items}</p>"


def _attribute_table(attributes: Mapping[str, Any]) -> str:
    if not attributes:
        return ""
    rows = "".join(
        f"<tr><td><code>{esc(k)}</code></td><td>{esc(v)}</td></tr>"
        for k, v in sorted(attributes.items())
    )
    return f"<table class='attrs'>{rows}</table>"


def search_matches(spans: Sequence[StoredSpan], params: QueryParams) -> set[str]:
    """The spans a search matched, to highlight in its trace: those the store named
    (`highlight`), those carrying the business key (`key`), and those with every attribute
    asked for (`attr`)."""
    found = set(filter(None, params.get("highlight", "").split(",")))
    key = params.get("key", "").strip()
    if key:
        found |= {
            s.span_id
            for s in spans
            if any(
                str(v) == key
                for k, v in s.attributes.items()
                if k.rsplit(".", 1)[-1] in BUSINESS_KEYS
            )
        }
    try:
        wanted = parse_attributes(params.get("attr", ""))
    except BadQuery:
        wanted = {}
    if wanted:
        found |= {
            s.span_id
            for s in spans
            if all(str(s.attributes.get(k)) == v for k, v in wanted.items())
        }
    return found


class _Waterfall:
    """Rows of spans on one time axis: a trace, or every trace of an order."""

    def __init__(self, spans: Sequence[StoredSpan]) -> None:
        self.start = min(s.start_ns for s in spans)
        self.total = max(max(s.end_ns for s in spans) - self.start, 1)
        self.colour = _colours(s.service for s in spans)

    def pct(self, ns: int) -> float:
        return (ns - self.start) / self.total * 100

    def rows(
        self,
        spans: Sequence[StoredSpan],
        *,
        critical: Sequence[analysis.PathSegment] = (),
        highlight: AbstractSet[str] = frozenset(),
        linked_from: Mapping[str, list[StoredSpan]] | None = None,
        logs: Callable[[StoredSpan], str] | None = None,
        on_page: AbstractSet[str] = frozenset(),
    ) -> str:
        cp_by_span: dict[str, list[analysis.PathSegment]] = {}
        for seg in critical:
            cp_by_span.setdefault(seg.span_id, []).append(seg)
        ordered = analysis.tree_order(spans)
        has_children = {
            ordered[i][0].span_id
            for i in range(len(ordered) - 1)
            if ordered[i + 1][1] > ordered[i][1]
        }
        out = []
        for s, depth in ordered:
            classes = ["row"]
            if s.span_id in cp_by_span:
                classes.append("crit")
            if s.span_id in highlight:
                classes.append("match")
            if s.error:
                classes.append("err")
            text = " ".join(
                [s.service, s.name, s.kind, s.span_id]
                + [f"{k}={v}" for k, v in s.attributes.items()]
            ).lower()
            left, width = self.pct(s.start_ns), max((s.end_ns - s.start_ns) / self.total * 100, 0.2)
            cp = "".join(
                f"<div class='cp {g.kind}' title='critical path ({g.kind})' "
                f"style='left:{self.pct(g.start_ns):.3f}%;"
                f"width:{max(g.duration_ms * 1e6 / self.total * 100, 0.2):.3f}%'></div>"
                for g in cp_by_span.get(s.span_id, [])
            )
            toggle = (
                "<span class='toggle' title='collapse/expand'>▾</span>"
                if s.span_id in has_children
                else "<span class='toggle-none' style='display:inline-block;width:1.1em'></span>"
            )
            links_out = "".join(
                f"<div>link → <a class='span-link' href='{self._span_href(t, sp, on_page)}'>"
                f"{esc(t[:16])}… / {esc(sp)}</a></div>"
                for t, sp in s.links
            )
            links_in = "".join(
                f"<div>linked from ← <a class='span-link' "
                f"href='{self._span_href(o.trace_id, o.span_id, on_page)}'>"
                f"{esc(o.service)}: {esc(o.name)}</a> <code>{esc(o.trace_id[:16])}…</code></div>"
                for o in (linked_from or {}).get(s.span_id, [])
            )
            chips = ""
            if s.links:
                chips += f" <span class='chip link'>{len(s.links)} link(s) →</span>"
            if (linked_from or {}).get(s.span_id):
                chips += " <span class='chip link'>← linked</span>"
            events = "".join(
                f"<div class='event'>event <b>{esc(name)}</b> {_event_time(s, i)}"
                f"{esc(attrs) if attrs else ''}</div>"
                for i, (name, attrs) in enumerate(s.events)
            )
            same_page_links = " ".join(sp for t, sp in s.links if t in on_page)
            link_attr = f" data-links='{esc(same_page_links)}'" if same_page_links else ""
            out.append(
                f"<div class='{' '.join(classes)}' id='span-{esc(s.span_id)}' "
                f"data-span='{esc(s.span_id)}' data-trace='{esc(s.trace_id)}' "
                f"data-service='{esc(s.service)}' data-depth='{depth}' "
                f"data-text='{esc(text)}'{link_attr}>"
                f"<div class='name' style='padding-left:{6 + 14 * depth}px'>{toggle}"
                f"<span style='color:{self.colour[s.service]}'>■</span> "
                f"<b>{esc(s.service)}</b> {esc(analysis.operation(s))} "
                f"<span class='muted'>{esc(s.kind)} "
                f"{_ms(s.duration_ms)} ms</span>{_ERROR_CHIP if s.error else ''}"
                f"{chips}<details><summary>details</summary><div>span <a "
                f"href='#span-{esc(s.span_id)}'>{esc(s.span_id)}</a>"
                f"{' (on the critical path)' if s.span_id in cp_by_span else ''}</div>"
                f"{_attribute_table(s.attributes)}{events}"
                f"{links_out}{links_in}{logs(s) if logs else ''}</details></div>"
                f"<div class='lane'><div class='bar' style='left:{left:.3f}%;width:{width:.3f}%;"
                f"background:{self.colour[s.service]}'></div>{cp}</div></div>"
            )
        return "".join(out)

    @staticmethod
    def _span_href(trace_id: str, span_id: str, on_page: AbstractSet[str]) -> str:
        if trace_id in on_page:
            return f"#span-{esc(span_id)}"
        return f"/trace/{esc(trace_id)}#span-{esc(span_id)}"


def _ingest_routes(store: object) -> list[BaseRoute]:
    """OTLP/HTTP on the viewer's own port, so `OTLP_ENDPOINT=http://host:16686` works: the
    collector's `/v1/traces` and `/v1/logs` when the store ingests OTLP, else a `/v1/traces`
    into `store.add_otlp` (an in-memory store), else none."""
    if callable(getattr(store, "ingest_otlp", None)) and callable(
        getattr(store, "ingest_otlp_logs", None)
    ):
        from ._collector import Ingest, ingest_routes

        return ingest_routes(cast(Ingest, store))
    add = getattr(store, "add_otlp", None)
    if not callable(add):
        return []

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            add(body)
        except Exception as exc:  # a bad payload is the sender's problem, not ours
            return JSONResponse({"error": f"cannot decode OTLP request: {exc}"}, status_code=400)
        return Response(b"", media_type="application/x-protobuf")

    return [Route("/v1/traces", receive, methods=["POST"])]


def create_app(
    store: SpanQueries,
    *,
    ingest_routes: Sequence[BaseRoute] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The viewer over `store`. `ingest_routes` (the collector's OTLP/HTTP routes) are mounted
    first; when not given, a store with `add_otlp` still takes OTLP/HTTP on `POST /v1/traces`.
    `extra_routes` add pages: `quantum_trader.dashboard` adds the dashboard, which talks to
    the running services (this package knows none of them)."""

    def window_ns(request: Request) -> tuple[str, int, int]:
        text = request.query_params.get("window", "").strip() or DEFAULT_WINDOW
        until = time.time_ns()
        return text, until - int(parse_window(text) * 1e9), until

    # Search ---------------------------------------------------------------------------------

    async def index(request: Request) -> HTMLResponse:
        p = request.query_params
        try:
            query = parse_search(p)
        except BadQuery as exc:
            return error_page("Search", str(exc), here="/")
        found = store.search(query)
        rows = []
        for t in found:
            err = f"<span class='err'>{t.errors} errors</span>" if t.errors else ""
            carried = {"highlight": ",".join(t.matched_span_ids)} | {
                k: p[k] for k in ("key", "attr") if p.get(k, "").strip()
            }
            highlight = f"?{urlencode(carried)}" if any(carried.values()) else ""
            rows.append(
                f"<tr class='result'><td>{_when(t.start_ns)}</td><td><a class='trace-link' "
                f"href='/trace/{esc(t.trace_id)}{esc(highlight)}'>{esc(t.root)}</a><br>"
                f"<code class='muted'>{esc(t.trace_id)}</code></td>"
                f"<td>{esc(', '.join(t.services))}</td><td class='num'>{t.spans}</td>"
                f"<td class='num'>{_ms(t.duration_ms)} ms</td><td>{err}</td>"
                f"<td><label><input type='checkbox' name='t' value='{esc(t.trace_id)}'> "
                "compare</label></td></tr>"
            )

        def field(name: str, label: str, size: int = 14, placeholder: str = "") -> str:
            return (
                f"<label>{label}<input name='{name}' size='{size}' placeholder='{esc(placeholder)}'"
                f" value='{esc(p.get(name, ''))}'></label>"
            )

        error_value = p.get("error", "")
        options = "".join(
            f"<option value='{v}'{' selected' if error_value == v else ''}>{label}</option>"
            for v, label in (("", "any"), ("true", "errors only"), ("false", "no errors"))
        )
        noise = " checked" if query.include_noise else ""
        stats = store.stats()
        body = (
            "<h2>Traces</h2><form class='filters' id='search'>"
            + field("key", "business key", 24, "client order id, order id, symbol")
            + field("service", "service")
            + field("operation", "operation")
            + field("min_ms", "min ms", 6)
            + field("max_ms", "max ms", 6)
            + field("attr", "attributes", 24, "key=value key=value")
            + field("lookback", "lookback", 5, "1h")
            + field("limit", "limit", 4, "20")
            + f"<label>error<select name='error'>{options}</select></label>"
            f"<label><span><input type='checkbox' name='noise' value='1'{noise}> include "
            "health checks, scrapes, idle polling</span></label>"
            "<button>Search</button></form>"
            f"<p class='muted'>{len(found)} traces, newest first. Store: {stats.spans} spans in "
            f"{stats.traces} traces, {stats.received_spans} received, {stats.dropped_spans} "
            f"dropped, {stats.evicted_spans} evicted.</p>"
            "<form action='/compare' id='pick'><table id='results'><tr><th>start</th>"
            "<th>root</th><th>services</th><th class='num'>spans</th>"
            "<th class='num'>duration</th><th></th><th><button>compare the two ticked"
            "</button></th></tr>" + "".join(rows) + "</table></form>"
        )
        return page("search", body, here="/")

    # One trace ------------------------------------------------------------------------------

    def linked_into(trace_id: str) -> dict[str, list[StoredSpan]]:
        """Spans of other traces whose links point into this trace, by the span linked to."""
        out: dict[str, list[StoredSpan]] = {}
        for other in store.linked_traces(trace_id):
            if other == trace_id:
                continue
            for s in store.trace(other):
                for t, sp in s.links:
                    if t == trace_id:
                        out.setdefault(sp, []).append(s)
        return out

    def log_lines(s: StoredSpan) -> str:
        records = store.logs_for_span(s.trace_id, s.span_id)
        if not records:
            return ""
        lines = "".join(
            f"<div class='log'><code>{_when(r.time_ns)} {esc(r.severity)} {esc(r.body)}</code>"
            f"</div>"
            for r in records
        )
        return f"<div><b>logs</b>{lines}</div>"

    async def trace_page(request: Request) -> HTMLResponse:
        trace_id = request.path_params["trace_id"].lower()
        spans = store.trace(trace_id)
        if not spans:
            return error_page("Trace not found", f"no trace {trace_id} in the store", status=404)
        highlight = search_matches(spans, request.query_params)
        critical = analysis.critical_path(spans)
        wf = _Waterfall(spans)
        rows = wf.rows(
            spans,
            critical=critical,
            highlight=highlight,
            linked_from=linked_into(trace_id),
            logs=log_lines,
            on_page={trace_id},
        )
        services = sorted({s.service for s in spans})
        crit_ms = sum(g.duration_ms for g in critical if g.kind == "work")
        orders = sorted(
            {
                str(v)
                for s in spans
                for k, v in s.attributes.items()
                if k.rsplit(".", 1)[-1] == "client_order_id" and v
            }
        )
        order_links = " ".join(f"<a href='/order/{quote(o)}'>{esc(o)}</a>" for o in orders)
        body = (
            f"<h2>Trace <code>{esc(trace_id)}</code></h2>"
            f"<p id='summary'>{len(spans)} spans, {len(services)} services "
            f"({esc(', '.join(services))}), {_ms(wf.total / 1e6)} ms; critical path "
            f"{_ms(crit_ms)} ms of work over {len({g.span_id for g in critical})} spans. "
            f"<a href='/trace/{esc(trace_id)}/stats'>statistics</a> · "
            f"<a href='/compare?a={esc(trace_id)}'>compare with…</a>"
            f"{' · orders: ' + order_links if order_links else ''}</p>"
            "<p><input id='find' placeholder='find in trace: service, name, key=value' size='40'>"
            " <span id='find-count' class='muted'></span> "
            "<button id='expand-all' type='button'>expand all</button> "
            "<button id='collapse-all' type='button'>collapse all</button>"
            + (f" <span class=chip>{len(highlight)} search match(es)</span>" if highlight else "")
            + "</p>"
            + _legend(wf.colour)
            + f"<div class='wf' id='waterfall'>{rows}</div>"
        )
        return page(f"trace {trace_id}", body)

    async def trace_stats(request: Request) -> HTMLResponse:
        trace_id = request.path_params["trace_id"].lower()
        spans = store.trace(trace_id)
        if not spans:
            return error_page("Trace not found", f"no trace {trace_id} in the store", status=404)
        rows = "".join(
            f"<tr><td>{esc(r.service)}</td><td>{esc(r.operation)}</td>"
            f"<td class='num'>{r.count}</td><td class='num'>{_ms(r.total_ms)}</td>"
            f"<td class='num'>{_ms(r.self_ms)}</td><td class='num'>{r.self_share * 100:.1f}%</td>"
            "</tr>"
            for r in analysis.self_times(spans)
        )
        by_service = "".join(
            f"<tr><td>{esc(svc)}</td><td class='num'>{_ms(ms)}</td></tr>"
            for svc, ms in analysis.self_time_by_service(spans).items()
        )
        body = (
            f"<h2>Statistics of <a href='/trace/{esc(trace_id)}'><code>{esc(trace_id)}</code>"
            "</a></h2><h3>Self time by service</h3><table id='by-service'><tr><th>service</th>"
            f"<th class='num'>self ms</th></tr>{by_service}</table>"
            "<h3>By service and operation</h3><table id='stats'><tr><th>service</th>"
            "<th>operation</th><th class='num'>count</th><th class='num'>total ms</th>"
            f"<th class='num'>self ms</th><th class='num'>share</th></tr>{rows}</table>"
        )
        return page(f"statistics {trace_id}", body)

    # One order ------------------------------------------------------------------------------

    async def order_page(request: Request) -> HTMLResponse:
        key = request.path_params["key"]
        traces = store.order_traces(key)
        if not traces:
            return error_page("Order not found", f"no trace carries the order id {key}", status=404)
        spans = [s for t in traces for s in store.trace(t)]
        if not spans:
            return error_page("Order not found", f"the traces of {key} are gone", status=404)
        timeline = analysis.order_timeline(spans, key)
        states = analysis.order_states(timeline)
        wf = _Waterfall(spans)
        on_page = set(traces)
        sections = []
        by_trace: dict[str, list[StoredSpan]] = {}
        for s in spans:
            by_trace.setdefault(s.trace_id, []).append(s)
        ordered = sorted(by_trace.items(), key=lambda kv: min(s.start_ns for s in kv[1]))
        linked_from: dict[str, list[StoredSpan]] = {}
        for s in spans:
            for _t, sp in s.links:
                linked_from.setdefault(sp, []).append(s)
        for trace_id, mine in ordered:
            root = analysis.roots(mine)[0]
            sections.append(
                f"<div class='trace-head' data-trace='{esc(trace_id)}'>"
                f"<a href='/trace/{esc(trace_id)}'>{esc(root.service)}: {esc(root.name)}</a> "
                f"<code class='muted'>{esc(trace_id)}</code> · {len(mine)} spans</div>"
                + wf.rows(
                    mine,
                    highlight={s.span_id for s in mine if analysis.carries_key(s, key)},
                    linked_from=linked_from,
                    on_page=on_page,
                )
            )
        entries = "".join(
            f"<tr class='entry {esc(e.what)}'><td>{_when(e.time_ns)}</td><td>{esc(e.what)}</td>"
            f"<td>{esc(e.service)}</td><td>{esc(e.text)}</td><td><a href='/trace/"
            f"{esc(e.trace_id)}#span-{esc(e.span_id)}'>{esc(e.trace_id[:12])}…</a></td></tr>"
            for e in timeline
        )
        services = sorted({s.service for s in spans})
        fills = sum(1 for e in timeline if e.what == "fill")
        exits = analysis.exit_orders(spans, key)
        closed_by = (
            "<p id='exits'>Closed by the exit order "
            + ", ".join(f"<a href='/order/{quote(x)}'><code>{esc(x)}</code></a>" for x in exits)
            + ".</p>"
            if exits
            else ""
        )
        body = (
            f"<h2>Order <code>{esc(key)}</code></h2>"
            f"<p id='order-summary'><span id='service-count'>{len(services)}</span> services "
            f"({esc(', '.join(services))}) across <span id='trace-count'>{len(traces)}</span> "
            f"linked traces, {len(spans)} spans, {fills} fill(s).</p>"
            f"<p>States: <b id='states'>{esc(' → '.join(states) or 'none recorded')}</b></p>"
            f"{closed_by}"
            "<h3>Timeline</h3><table id='timeline'><tr><th>time</th><th>what</th>"
            f"<th>service</th><th></th><th>trace</th></tr>{entries}</table>"
            "<h3>Every linked trace, one time axis</h3>"
            "<p><input id='find' placeholder='find: service, name, key=value' size='40'> "
            "<span id='find-count' class='muted'></span></p>"
            + _legend(wf.colour)
            + f"<div class='wf' id='waterfall'>{''.join(sections)}</div>"
        )
        return page(f"order {key}", body)

    # Compare --------------------------------------------------------------------------------

    async def compare_page(request: Request) -> HTMLResponse:
        a = request.query_params.get("a", "").strip().lower()
        b = request.query_params.get("b", "").strip().lower()
        ticked = [t.strip().lower() for t in request.query_params.getlist("t") if t.strip()]
        if ticked and not (a or b):
            if len(ticked) != 2:
                return error_page(
                    "Compare", f"tick two traces to compare, not {len(ticked)}", here="/compare"
                )
            # The faster one is A, so B - A reads as what made the slow one slow.
            a, b = sorted(ticked, key=lambda t: analysis.trace_duration_ms(store.trace(t)))
        form = (
            "<form class='filters'><label>trace A (e.g. the fast one)<input name='a' size='34' "
            f"value='{esc(a)}'></label><label>trace B (e.g. the slow one)<input name='b' "
            f"size='34' value='{esc(b)}'></label><button>Compare</button></form>"
        )
        if not a or not b:
            return page("compare", f"<h2>Compare two traces</h2>{form}", here="/compare")
        sa, sb = store.trace(a), store.trace(b)
        missing = [t for t, s in ((a, sa), (b, sb)) if not s]
        if missing:
            return error_page("Compare", f"no trace {', '.join(missing)} in the store", status=404)
        result = analysis.compare(sa, sb)
        stages = "".join(
            f"<tr class='stage'><td>{esc(d.stage)}</td><td class='num'>{d.count_a}</td>"
            f"<td class='num'>{d.count_b}</td><td class='num'>{_ms(d.ms_a)}</td>"
            f"<td class='num'>{_ms(d.ms_b)}</td><td class='num "
            f"{'err' if d.diff_ms > 0 else 'ok' if d.diff_ms < 0 else ''}'>"
            f"{d.diff_ms:+.3f}</td><td class='num'>{_ms(d.self_ms_a)}</td>"
            f"<td class='num'>{_ms(d.self_ms_b)}</td></tr>"
            for d in result.stages
        )
        attrs = "".join(
            f"<tr><td>{esc(x.stage)}</td><td><code>{esc(x.key)}</code></td>"
            f"<td>{esc(x.value_a)}</td><td>{esc(x.value_b)}</td></tr>"
            for x in result.attributes
        )
        diff = result.duration_ms_b - result.duration_ms_a
        body = (
            f"<h2>Compare two traces</h2>{form}<p id='durations'>A "
            f"<a href='/trace/{esc(a)}'>{esc(a[:16])}…</a> {_ms(result.duration_ms_a)} ms, B "
            f"<a href='/trace/{esc(b)}'>{esc(b[:16])}…</a> {_ms(result.duration_ms_b)} ms: "
            f"B is {diff:+.3f} ms.</p><h3>Stage by stage (B - A)</h3><table id='stages'><tr>"
            "<th>stage</th><th class='num'>count A</th><th class='num'>count B</th>"
            "<th class='num'>ms A</th><th class='num'>ms B</th><th class='num'>Δ ms</th>"
            f"<th class='num'>self A</th><th class='num'>self B</th></tr>{stages}</table>"
            "<h3>Attributes that differ</h3><table id='attributes'><tr><th>stage</th>"
            f"<th>attribute</th><th>A</th><th>B</th></tr>{attrs}</table>"
        )
        return page("compare", body, here="/compare")

    # Tick-to-trade --------------------------------------------------------------------------

    def window_view(request: Request) -> tuple[str, float, WindowRollup]:
        """The window's roll-ups and the spans not rolled up yet (a store without roll-ups:
        its newest spans)."""
        text, since, until = window_ns(request)
        reader = getattr(store, "window", None)
        if reader is not None:
            view: WindowRollup = reader(since, until, MAX_WINDOW_SPANS)
        else:
            spans = store.spans_between(since, until, MAX_WINDOW_SPANS)
            view = window_of_spans(spans, since, MAX_WINDOW_SPANS)
        return text, (until - since) / 1e9, view

    def window_decisions(request: Request) -> list[analysis.BotDecision]:
        """The window's newest decisions, with their inputs."""
        _text, since, until = window_ns(request)
        reader = getattr(store, "decision_spans", None)
        if reader is not None:
            spans: list[StoredSpan] = reader(since, until, MAX_DECISIONS)
        else:
            spans = store.spans_between(since, until, MAX_WINDOW_SPANS)
        return analysis.decisions(spans)[:MAX_DECISIONS]

    def received(request: Request) -> dict[str, StageQuantiles]:
        """Per stage, every span received in the window, counted before sampling."""
        _text, since, until = window_ns(request)
        return store.stage_quantiles(since, until, analysis.QUANTILES)

    def window_form(text: str, extra: str = "") -> str:
        return (
            f"<form class='filters'><label>window<input name='window' size='6' "
            f"value='{esc(text)}'></label>{extra}<button>Show</button></form>"
        )

    def quantile_cells(q: Mapping[float, analysis.Quantile]) -> str:
        cells = []
        for level in analysis.QUANTILES:
            v = q.get(level)
            cells.append(
                "<td class='num muted'>-</td>"
                if v is None
                else f"<td class='num'><a href='/trace/{esc(v.trace_id)}' "
                f"title='example trace'>{_ms(v.value_ms)}</a></td>"
            )
        return "".join(cells)

    async def stages_page(request: Request) -> HTMLResponse:
        try:
            text, _seconds, view = window_view(request)
        except BadQuery as exc:
            return error_page("Tick-to-trade", str(exc), here="/stages")
        rows = "".join(
            f"<tr class='stage' data-stage='{esc(b.stage)}'><td>{esc(b.stage)}</td>"
            f"<td class='num'>{b.count}</td>{quantile_cells(b.wait)}{quantile_cells(b.service)}"
            f"{quantile_cells(b.sql)}{quantile_cells(b.total)}</tr>"
            for b in breakdown(view)
        )
        head = "".join(
            f"<th class='num' colspan='3'>{label}</th>"
            for label in ("waiting in a stream", "in the service", "in SQL", "total")
        )
        levels = "<th class='num'>p50</th><th class='num'>p99</th><th class='num'>p99.9</th>" * 4
        body = (
            "<h2>Tick-to-trade, stage by stage (ms)</h2>"
            + window_form(text)
            + f"<p class='muted'>{_read_view(view, text)} Every number "
            "links to an example trace at that quantile (values within 1 %).</p>"
            f"<table id='stages'><tr><th rowspan='2'>stage</th><th rowspan='2' class='num'>"
            f"count</th>{head}</tr><tr>{levels}</tr>{rows}</table>"
            "<h3>Every span received, before sampling</h3><p class='muted'>The table above reads "
            "the spans kept, and retention samples plain ticks down; these durations come from "
            "the store's histograms of every span received (within 1 %).</p>"
            "<table id='received'><tr><th>stage</th><th class='num'>received</th>"
            f"<th class='num'>p50</th><th class='num'>p99</th><th class='num'>p99.9</th></tr>"
            + "".join(
                f"<tr><td>{esc(stage)}</td><td class='num'>{q.count}</td>"
                + "".join(
                    f"<td class='num'>{_ms(q.quantiles_ms[level])}</td>"
                    if level in q.quantiles_ms
                    else "<td class='num muted'>-</td>"
                    for level in analysis.QUANTILES
                )
                + "</tr>"
                for stage, q in sorted(received(request).items())
            )
            + "</table>"
        )
        return page("tick-to-trade", body, here="/stages")

    # Decisions ------------------------------------------------------------------------------

    async def decisions_page(request: Request) -> HTMLResponse:
        try:
            text, _seconds, view = window_view(request)
            decided = window_decisions(request)
        except BadQuery as exc:
            return error_page("Decisions", str(exc), here="/decisions")
        q = request.query_params.get("q", "")
        made = received(request).get("trading-bot: decide")
        kept = (
            f"{made.count} decisions made in the window (counted before sampling), "
            f"{_kept(view)} kept with their traces: retention keeps every order, denial, "
            "rejection and error, and a sample of the skips."
            if made is not None
            else ""
        )
        shown = [d for d in decided if analysis.match_decision(d, q)]
        funnel = "".join(
            f"<tr class='funnel'><td>{esc(r.symbol)}</td><td>{esc(r.model_version or '-')}</td>"
            f"<td class='num'>{r.signals}</td><td class='num'>{r.approved}</td>"
            f"<td class='num'>{r.filled}</td><td>"
            + esc(", ".join(f"{k}: {n}" for k, n in r.skipped_by_reason.items()))
            + "</td></tr>"
            for r in analysis.funnel_rows(view.funnel)
        )
        rows = "".join(
            f"<tr class='decision {esc(d.outcome.lower())}'><td>{_when(d.time_ns)}</td>"
            f"<td>{esc(d.symbol)}</td><td><b>{esc(d.outcome)}</b></td><td>{esc(d.reason)}</td>"
            f"<td>{esc(d.detail)}</td><td>{esc(d.direction)} "
            f"{'' if d.confidence is None else f'{d.confidence:.3f}'}</td>"
            f"<td>{esc(d.model_version)}</td><td>"
            + (
                f"<a href='/order/{quote(d.client_order_id)}'>{esc(d.client_order_id)}</a>"
                if d.client_order_id
                else ""
            )
            + f"</td><td><details><summary>{len(d.inputs)}</summary>"
            f"{_attribute_table(d.inputs)}</details></td><td><a href='/trace/"
            f"{esc(d.trace_id)}#span-{esc(d.span_id)}'>trace</a></td></tr>"
            for d in shown[:500]
        )
        search = (
            "<label>search<input name='q' size='30' placeholder='BTCUSDT LOW_CONFIDENCE' "
            f"value='{esc(q)}'></label>"
        )
        body = (
            "<h2>Why the bot did or did not trade</h2>"
            + window_form(text, search)
            + f"<p class='muted'>{_read_view(view, text)}</p>"
            + "<h3>Funnel: signals → approved → filled</h3><table id='funnel'><tr><th>symbol"
            "</th><th>model version</th><th class='num'>signals</th><th class='num'>approved"
            "</th><th class='num'>filled</th><th>not ordered, by reason</th></tr>"
            + funnel
            + f"</table><h3>Decisions</h3><p class='muted' id='kept'>{esc(kept)}</p>"
            f"<p class='muted'>{len(shown)} of the newest {len(decided)} decisions shown, "
            "newest first.</p>"
            "<table id='decisions'><tr><th>time</th>"
            "<th>symbol</th><th>outcome</th><th>reason</th><th>detail</th><th>signal</th>"
            "<th>model</th><th>order</th><th>inputs</th><th></th></tr>" + rows + "</table>"
        )
        return page("decisions", body, here="/decisions")

    # Service map ----------------------------------------------------------------------------

    async def map_page(request: Request) -> HTMLResponse:
        try:
            text, seconds, view = window_view(request)
        except BadQuery as exc:
            return error_page("Service map", str(exc), here="/map")
        edges = analysis.edges_of(view.edges, seconds)
        rows = "".join(
            f"<tr class='edge'><td>{esc(e.caller)}</td><td>{esc(e.callee)}</td>"
            f"<td>{esc(e.kind)}</td><td class='num'>{e.requests}</td>"
            f"<td class='num'>{e.rate_per_s:.2f}</td><td class='num "
            f"{'err' if e.errors else ''}'>{e.errors}</td>"
            f"<td class='num'>{e.error_rate * 100:.1f}%</td></tr>"
            for e in edges
        )
        body = (
            "<h2>Service map</h2>"
            + window_form(text)
            + f"<p class='muted'>{_read_view(view, text)}</p>"
            + _map_svg(edges)
            + "<table id='edges'><tr><th>caller</th><th>callee</th><th>kind</th>"
            "<th class='num'>requests</th><th class='num'>per s</th><th class='num'>errors</th>"
            f"<th class='num'>error rate</th></tr>{rows}</table>"
        )
        return page("service map", body, here="/map")

    # JSON API -------------------------------------------------------------------------------

    async def api_traces(request: Request) -> JSONResponse:
        try:
            query = parse_search(request.query_params)
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"data": [asdict(t) for t in store.search(query)]})

    async def api_trace(request: Request) -> JSONResponse:
        spans = store.trace(request.path_params["trace_id"].lower())
        if not spans:
            return JSONResponse({"error": "no such trace"}, status_code=404)
        critical = {g.span_id for g in analysis.critical_path(spans)}
        return JSONResponse(
            {"data": [asdict(s) | {"critical": s.span_id in critical} for s in spans]}
        )

    async def api_order(request: Request) -> JSONResponse:
        key = request.path_params["key"]
        traces = store.order_traces(key)
        if not traces:
            return JSONResponse({"error": f"no trace carries the order id {key}"}, 404)
        spans = [s for t in traces for s in store.trace(t)]
        timeline = analysis.order_timeline(spans, key)
        return JSONResponse(
            {
                "traces": traces,
                "states": analysis.order_states(timeline),
                "timeline": [asdict(e) for e in timeline],
                "data": [asdict(s) for s in spans],
            }
        )

    async def api_stages(request: Request) -> JSONResponse:
        try:
            _text, _s, view = window_view(request)
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"data": [asdict(b) for b in breakdown(view)]})

    async def api_decisions(request: Request) -> JSONResponse:
        try:
            _text, _s, view = window_view(request)
            decided = window_decisions(request)
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        q = request.query_params.get("q", "")
        made = received(request).get("trading-bot: decide")
        return JSONResponse(
            {
                "made": made.count if made is not None else None,
                "kept": _kept(view),
                "data": [asdict(d) for d in decided if analysis.match_decision(d, q)],
                "funnel": [asdict(r) for r in analysis.funnel_rows(view.funnel)],
            }
        )

    async def api_map(request: Request) -> JSONResponse:
        try:
            _text, seconds, view = window_view(request)
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        edges = analysis.edges_of(view.edges, seconds)
        return JSONResponse({"data": [asdict(e) | {"rate_per_s": e.rate_per_s} for e in edges]})

    async def api_stats(_request: Request) -> JSONResponse:
        return JSONResponse(asdict(store.stats()))

    routes: list[BaseRoute] = [
        *(_ingest_routes(store) if ingest_routes is None else ingest_routes),
        *extra_routes,
        Route("/", index),
        Route("/trace/{trace_id}", trace_page),
        Route("/trace/{trace_id}/stats", trace_stats),
        Route("/order/{key:path}", order_page),
        Route("/compare", compare_page),
        Route("/stages", stages_page),
        Route("/decisions", decisions_page),
        Route("/map", map_page),
        Route("/api/traces", api_traces),
        Route("/api/traces/{trace_id}", api_trace),
        Route("/api/order/{key:path}", api_order),
        Route("/api/stages", api_stages),
        Route("/api/decisions", api_decisions),
        Route("/api/map", api_map),
        Route("/api/stats", api_stats),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.store = store
    return app


def _map_svg(edges: Sequence[analysis.Edge]) -> str:
    """Services on a circle, an arrow per edge labelled with its rate."""
    import math

    nodes = sorted({e.caller for e in edges} | {e.callee for e in edges})
    if not nodes:
        return "<p class='muted'>No calls between services in this window.</p>"
    size, radius = 560, 210
    pos = {
        n: (
            size / 2 + radius * math.cos(2 * math.pi * i / len(nodes) - math.pi / 2),
            size / 2 + radius * math.sin(2 * math.pi * i / len(nodes) - math.pi / 2),
        )
        for i, n in enumerate(nodes)
    }
    parts = [
        f"<svg id='map' width='{size + 240}' height='{size}' viewBox='-120 0 {size + 240} "
        f"{size}' xmlns='http://www.w3.org/2000/svg'><defs><marker id='m' viewBox='0 0 6 6' "
        "refX='6' refY='3' markerWidth='7' markerHeight='7' orient='auto'><path "
        "d='M0,0 L6,3 L0,6 z' fill='#555'/></marker></defs>"
    ]
    for e in edges:
        (x1, y1), (x2, y2) = pos[e.caller], pos[e.callee]
        dx, dy = x2 - x1, y2 - y1
        length = max(math.hypot(dx, dy), 1)
        x2, y2 = x2 - dx / length * 14, y2 - dy / length * 14
        colour = "#c00" if e.errors else "#555"
        dash = " stroke-dasharray='5,3'" if e.kind == "stream" else ""
        parts.append(
            f"<line x1='{x1:.0f}' y1='{y1:.0f}' x2='{x2:.0f}' y2='{y2:.0f}' stroke='{colour}'"
            f"{dash} marker-end='url(#m)'><title>{esc(e.caller)} → {esc(e.callee)}</title></line>"
            f"<text x='{(x1 + x2) / 2:.0f}' y='{(y1 + y2) / 2:.0f}' font-size='10' "
            f"fill='{colour}'>{e.rate_per_s:.2f}/s"
            f"{f' {e.error_rate * 100:.0f}% err' if e.errors else ''}</text>"
        )
    for n, (x, y) in pos.items():
        parts.append(
            f"<circle cx='{x:.0f}' cy='{y:.0f}' r='12' fill='#4e79a7'/><text x='{x:.0f}' "
            f"y='{y + 26:.0f}' font-size='12' text-anchor='middle'>{esc(n)}</text>"
        )
    return "".join(parts) + "</svg>"
