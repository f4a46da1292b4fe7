"""The viewer's web app: `POST /v1/traces` (OTLP/HTTP), an HTML list and waterfall, a JSON API."""

from __future__ import annotations

import html
import time
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ._store import StoredSpan, TraceStore

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

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}a{color:#2a5db0;text-decoration:none}
.bar{height:14px;border-radius:3px;position:relative;min-width:2px}
.err{color:#c00;font-weight:600}.muted{color:#888}details{font-size:12px}
code{font-size:12px}
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _depths(spans: list[StoredSpan]) -> dict[str, int]:
    by_id = {s.span_id: s for s in spans}
    depths: dict[str, int] = {}

    def depth(span: StoredSpan) -> int:
        if span.span_id in depths:
            return depths[span.span_id]
        parent = by_id.get(span.parent_span_id)
        d = 0 if parent is None or parent is span else depth(parent) + 1
        depths[span.span_id] = d
        return d

    for s in spans:
        depth(s)
    return depths


def _order(spans: list[StoredSpan]) -> list[StoredSpan]:
    """Depth-first, children after their parent, siblings by start time."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[StoredSpan]] = {}
    roots = []
    for s in sorted(spans, key=lambda s: s.start_ns):
        if s.parent_span_id and s.parent_span_id in ids:
            children.setdefault(s.parent_span_id, []).append(s)
        else:
            roots.append(s)
    out: list[StoredSpan] = []

    def visit(s: StoredSpan) -> None:
        out.append(s)
        for c in children.get(s.span_id, []):
            visit(c)

    for r in roots:
        visit(r)
    return out


def create_app(store: TraceStore | None = None) -> Starlette:
    """The viewer app; `app.state.store` holds the traces."""
    store = store or TraceStore()

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            store.add_otlp(body)
        except Exception as exc:  # a bad payload is the sender's problem, not ours
            return JSONResponse({"error": f"cannot decode OTLP request: {exc}"}, status_code=400)
        return Response(b"", media_type="application/x-protobuf")

    async def index(request: Request) -> HTMLResponse:
        query = request.query_params.get("q", "")
        rows = []
        for t in store.search(query, limit=100):
            when = time.strftime("%H:%M:%S", time.localtime(t["start_ns"] / 1e9))
            err = f"<span class='err'>{t['errors']} errors</span>" if t["errors"] else ""
            rows.append(
                f"<tr><td>{when}</td><td><a href='/trace/{t['trace_id']}'>"
                f"{html.escape(t['root'])}</a><br><code class='muted'>{t['trace_id']}</code></td>"
                f"<td>{html.escape(', '.join(t['services']))}</td><td>{t['spans']}</td>"
                f"<td>{t['duration_ms']:.1f} ms</td><td>{err}</td></tr>"
            )
        body = (
            "<h2>Quantum Trader traces</h2>"
            "<form><input name='q' size='50' placeholder='trace id, client order id, symbol, "
            f"service…' value='{html.escape(query)}'> <button>Search</button></form>"
            f"<p class='muted'>{store.received_spans} spans received. Newest first.</p>"
            "<table><tr><th>start</th><th>trace</th><th>services</th><th>spans</th>"
            "<th>duration</th><th></th></tr>" + "".join(rows) + "</table>"
        )
        return _page("traces", body)

    async def trace_page(request: Request) -> HTMLResponse:
        trace_id = request.path_params["trace_id"]
        spans = store.trace(trace_id)
        if not spans:
            return _page(
                "not found", f"<p>No trace {html.escape(trace_id)}. <a href='/'>Back</a></p>"
            )
        start = min(s.start_ns for s in spans)
        total = max(max(s.end_ns for s in spans) - start, 1)
        services = sorted({s.service for s in spans})
        colour = {svc: _COLOURS[i % len(_COLOURS)] for i, svc in enumerate(services)}
        depths = _depths(spans)
        rows = []
        for s in _order(spans):
            left = (s.start_ns - start) / total * 100
            width = max((s.end_ns - s.start_ns) / total * 100, 0.2)
            attrs = "".join(
                f"<div><code>{html.escape(k)}</code> = {html.escape(str(v))}</div>"
                for k, v in sorted(s.attributes.items())
            )
            links = "".join(
                f"<div>link → <a href='/trace/{t}'>{t}</a> / {sp}</div>" for t, sp in s.links
            )
            name = html.escape(s.name)
            rows.append(
                f"<tr><td style='padding-left:{8 + 16 * depths[s.span_id]}px;white-space:nowrap'>"
                f"<span style='color:{colour[s.service]}'>■</span> "
                f"<b>{html.escape(s.service)}</b> {name} <span class='muted'>{s.kind}</span>"
                f"{' <span class=err>error</span>' if s.error else ''}"
                f"<details><summary>{s.duration_ms:.2f} ms</summary>{attrs}{links}</details>"
                f"</td><td style='width:55%'><div class='bar' style='margin-left:{left:.2f}%;"
                f"width:{width:.2f}%;background:{colour[s.service]}'></div></td></tr>"
            )
        body = (
            f"<p><a href='/'>← traces</a></p><h2>Trace <code>{trace_id}</code></h2>"
            f"<p>{len(spans)} spans, {len(services)} services "
            f"({html.escape(', '.join(services))}), {total / 1e6:.1f} ms</p>"
            "<table>" + "".join(rows) + "</table>"
        )
        return _page(f"trace {trace_id}", body)

    async def api_traces(request: Request) -> JSONResponse:
        return JSONResponse({"data": store.search(request.query_params.get("q", ""), limit=200)})

    async def api_trace(request: Request) -> JSONResponse:
        spans = store.trace(request.path_params["trace_id"])
        data: list[dict[str, Any]] = [asdict(s) for s in spans]
        return JSONResponse({"data": data}, status_code=200 if spans else 404)

    app = Starlette(
        routes=[
            Route("/v1/traces", receive, methods=["POST"]),
            Route("/", index),
            Route("/trace/{trace_id}", trace_page),
            Route("/api/traces", api_traces),
            Route("/api/traces/{trace_id}", api_trace),
        ]
    )
    app.state.store = store
    return app
