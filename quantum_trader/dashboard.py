"""The trace viewer's dashboard and `quantum-trader status`: each running service's readiness,
risk-safety's trading state, the portfolio and its equity curve, recent orders; and the kill
switch, sent with the operator's own bearer token.

It lives here, above the services' contracts, because it talks to the services; the viewer
in `backend.infra.traceview` knows no service and takes these pages as extra routes
(`create_viewer`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from backend.infra.service import BUILT_SERVICES, AccessSettings
from backend.infra.traceview import create_app
from backend.infra.traceview._app import error_page, esc, page
from backend.infra.traceview._queries import SpanQueries
from microservices.contracts import Refused, UpstreamError
from microservices.contracts.execution import ExecutionClient, OrderPublic
from microservices.contracts.portfolio_intelligence import (
    EquityPointPublic,
    PortfolioClient,
    PortfolioPublic,
)
from microservices.contracts.risk_safety import (
    KillSwitchRequest,
    OperatorRequest,
    RiskSafetyClient,
    StatePublic,
)

HEALTH_TIMEOUT_S = 2.0
T = TypeVar("T")


def service_urls(port_offset: int = 0) -> dict[str, str]:
    """Every built service's base URL: `<NAME>_URL` (e.g. `RISK_SAFETY_URL`), else its
    catalogue port plus `port_offset` (`make run`'s `RUN_PORT_OFFSET`)."""
    return {
        spec.name: os.environ.get(spec.url_variable, "").strip().rstrip("/")
        or f"http://127.0.0.1:{spec.port + port_offset}"
        for spec in BUILT_SERVICES
    }


@dataclass(frozen=True)
class Health:
    service: str
    url: str
    ready: bool
    detail: str
    """The status and the start of the body, or why there was no answer."""


@dataclass
class Dashboard:
    health: list[Health]
    risk: StatePublic | None = None
    portfolio: PortfolioPublic | None = None
    equity: list[EquityPointPublic] = field(default_factory=list)
    orders: list[OrderPublic] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    """What could not be read, by panel (`risk`, `portfolio`, `equity`, `orders`)."""


async def readiness(http: httpx.AsyncClient, service: str, url: str) -> Health:
    try:
        response = await http.get(f"{url}/health/ready", timeout=HEALTH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Health(service, url, False, f"no answer: {type(exc).__name__}")
    text = response.text.strip().replace("\n", " ")[:160]
    return Health(service, url, response.status_code == 200, f"{response.status_code} {text}")


async def gather(
    http: httpx.AsyncClient, urls: Mapping[str, str], *, orders: int = 10, equity: int = 500
) -> Dashboard:
    """Everything the dashboard shows, read concurrently; a service that does not answer
    leaves its panel empty with the reason in `errors`, never fails the whole."""
    health = await asyncio.gather(*(readiness(http, name, url) for name, url in urls.items()))
    board = Dashboard(list(health))
    risk = RiskSafetyClient(http, urls.get("risk-safety"))
    book = PortfolioClient(http, urls.get("portfolio-intelligence"))
    desk = ExecutionClient(http, urls.get("execution"))

    async def attempt(panel: str, call: Awaitable[T]) -> T | None:
        try:
            return await call
        except (UpstreamError, Refused) as exc:
            board.errors[panel] = str(exc)
            return None

    state, portfolio, curve, recent = await asyncio.gather(
        attempt("risk", risk.state()),
        attempt("portfolio", book.portfolio()),
        attempt("equity", book.equity_curve(equity)),
        attempt("orders", desk.orders(orders)),
    )
    board.risk, board.portfolio = state, portfolio
    board.equity = list(curve.data) if curve else []
    board.orders = list(recent.data) if recent else []
    return board


async def set_trading(
    http: httpx.AsyncClient, risk_url: str, token: str, *, halt: bool, operator: str, reason: str
) -> StatePublic:
    """Press the kill switch (`halt`) or resume, as `operator`, with the caller's own token:
    risk-safety checks it exactly as for any API call (401/403 come back as `Refused`)."""
    client = RiskSafetyClient(http, risk_url)
    headers = {"Authorization": f"Bearer {token}"}
    # The token belongs to the operator pressing the button, not to the viewer.
    async with httpx.AsyncClient(headers=headers, timeout=http.timeout) as own:
        client.http = own
        if halt:
            return await client.kill_switch(KillSwitchRequest(operator=operator, reason=reason))
        return await client.resume(OperatorRequest(operator=operator, reason=reason))


def dashboard_routes(
    urls: Mapping[str, str] | None = None, read_token: str | None = None
) -> list[BaseRoute]:
    """`GET /dashboard` and `POST /dashboard/trading` (halt or resume, with the token the
    operator types in). `urls`: every built service's (default `service_urls()`);
    `read_token` is sent on reads (needed when the services run with `QT_AUTH_READS=true`)."""
    urls = dict(urls) if urls is not None else service_urls()
    read_headers = {"Authorization": f"Bearer {read_token}"} if read_token else {}

    # ------------------------------------------------------------------------------

    async def dashboard_page(request: Request) -> HTMLResponse:
        async with httpx.AsyncClient(headers=read_headers, timeout=3.0) as http:
            board = await gather(http, urls)
        return page("dashboard", _dashboard_body(board, request), here="/dashboard")

    async def trading_switch(request: Request) -> Response:
        # An HTML form posts urlencoded; read it without a multipart parser.
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        action = str(form.get("action", ""))
        token = str(form.get("token", "")).strip()
        auth = request.headers.get("authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        operator = str(form.get("operator", "")).strip() or "trace-viewer"
        reason = str(form.get("reason", "")).strip()
        if action not in ("halt", "resume"):
            return error_page("Dashboard", f"action={action!r}: expected halt or resume")
        if not token:
            return error_page(
                "Dashboard", "the API token (QT_API_TOKEN) is needed to change the trading state",
                status=401, here="/dashboard",
            )  # fmt: skip
        if not reason:
            return error_page("Dashboard", "a reason is needed (it goes to the audit trail)")
        async with httpx.AsyncClient(timeout=10.0) as http:
            try:
                await set_trading(
                    http, urls["risk-safety"], token, halt=action == "halt",
                    operator=operator, reason=reason,
                )  # fmt: skip
            except Refused as exc:
                return error_page("Dashboard", str(exc), status=exc.status, here="/dashboard")
            except UpstreamError as exc:
                return error_page("Dashboard", str(exc), status=502, here="/dashboard")
        return RedirectResponse("/dashboard?changed=" + action, status_code=303)

    return [
        Route("/dashboard", dashboard_page),
        Route("/dashboard/trading", trading_switch, methods=["POST"]),
    ]


def create_viewer(
    store: SpanQueries,
    *,
    ingest_routes: Sequence[BaseRoute] | None = None,
    urls: Mapping[str, str] | None = None,
) -> Starlette:
    """The trace viewer with its dashboard; the token for reads is `QT_API_TOKEN` if set."""
    token = AccessSettings().api_token
    return create_app(
        store,
        ingest_routes=ingest_routes,
        extra_routes=dashboard_routes(urls, token.get_secret_value() if token else None),
    )


def _dashboard_body(board: Dashboard, request: Request) -> str:
    health = "".join(
        f"<tr class='health'><td>{esc(h.service)}</td><td class='{'ok' if h.ready else 'err'}'>"
        f"{'ready' if h.ready else 'NOT READY'}</td><td class='muted'>{esc(h.url)}</td>"
        f"<td class='muted'>{esc(h.detail[:3] if h.ready else h.detail)}</td></tr>"
        for h in board.health
    )
    errors = board.errors
    risk = board.risk
    if risk is not None:
        tone = {"ACTIVE": "ok", "HALTED": "err"}.get(risk.state, "warn")
        unrecorded = (
            ""
            if risk.recorded
            else " <b id='risk-unrecorded' class='err'>in force, not recorded yet: "
            "risk-safety's database is unavailable</b>"
        )
        risk_html = (
            f"<p>Trading state <b id='risk-state' class='{tone}'>{esc(risk.state)}</b> "
            f"(epoch {risk.epoch}): {esc(risk.reason)}{unrecorded}</p>"
        )
    else:
        risk_html = f"<p class='err' id='risk-state'>unknown: {esc(errors.get('risk', ''))}</p>"
    changed = request.query_params.get("changed", "")
    switch = (
        "<form method='post' action='/dashboard/trading' id='kill-switch' class='filters'>"
        "<label>API token<input type='password' name='token' size='24' "
        "autocomplete='off'></label><label>operator<input name='operator' size='12' "
        "value='trace-viewer'></label><label>reason<input name='reason' size='24' "
        "value='kill switch from the trace viewer'></label>"
        "<button name='action' value='halt' class='err'>Kill switch: HALT</button>"
        "<button name='action' value='resume'>Resume</button></form>"
        + (f"<p class='muted' id='changed'>Sent: {esc(changed)}.</p>" if changed else "")
    )
    p = board.portfolio
    if p is not None:
        positions = "".join(
            f"<tr><td>{esc(pos.symbol)}</td><td class='num'>{esc(pos.quantity)}</td>"
            f"<td class='num'>{esc(pos.unrealized_pnl)}</td></tr>"
            for pos in p.positions
        )
        portfolio_html = (
            f"<p id='equity'>Equity <b>{esc(p.equity)}</b>, cash {esc(p.cash)}, PnL "
            f"{esc(p.total_pnl)} (realized {esc(p.realized_pnl)}, unrealized "
            f"{esc(p.unrealized_pnl)}, fees {esc(p.fees)}), gross exposure "
            f"{esc(p.gross_exposure)}</p><table><tr><th>symbol</th><th class='num'>quantity"
            f"</th><th class='num'>unrealized</th></tr>{positions}</table>"
        )
    else:
        portfolio_html = f"<p class='err'>unknown: {esc(errors.get('portfolio', ''))}</p>"
    orders = "".join(
        f"<tr class='order'><td>{esc(o.created_at.strftime('%H:%M:%S'))}</td>"
        f"<td><a href='/order/{quote(o.client_order_id)}'>{esc(o.client_order_id)}</a></td>"
        f"<td>{esc(o.symbol)}</td><td>{esc(o.side)}</td><td class='num'>{esc(o.quantity)}</td>"
        f"<td>{esc(o.status)}</td><td class='num'>{esc(o.avg_fill_price or '')}</td></tr>"
        for o in board.orders
    )
    orders_error = f"<p class='err'>{esc(errors['orders'])}</p>" if "orders" in errors else ""
    return (
        "<h2>Dashboard</h2><div class='panels'>"
        f"<div class='panel' id='risk'><h3>Risk</h3>{risk_html}{switch}</div>"
        f"<div class='panel' id='health'><h3>Services</h3><table>{health}</table></div>"
        f"<div class='panel' id='portfolio'><h3>Portfolio</h3>{portfolio_html}"
        f"{_equity_svg(board.equity)}</div>"
        f"<div class='panel' id='orders'><h3>Recent orders</h3>{orders_error}<table><tr>"
        "<th>time</th><th>client order id</th><th>symbol</th><th>side</th>"
        f"<th class='num'>qty</th><th>status</th><th class='num'>avg price</th></tr>{orders}"
        "</table></div></div>"
    )


def _equity_svg(points: Sequence[Any]) -> str:
    if len(points) < 2:
        return "<p class='muted' id='equity-curve'>Not enough equity points yet.</p>"
    values = [float(p.equity) for p in points]
    times = [p.ts_ms for p in points]
    lo, hi = min(values), max(values)
    span_v, span_t = (hi - lo) or 1.0, (times[-1] - times[0]) or 1
    width, height = 420, 120
    coords = " ".join(
        f"{(t - times[0]) / span_t * width:.1f},{height - (v - lo) / span_v * height:.1f}"
        for t, v in zip(times, values, strict=True)
    )
    return (
        f"<svg id='equity-curve' width='{width}' height='{height + 20}' "
        f"xmlns='http://www.w3.org/2000/svg'><polyline points='{coords}' fill='none' "
        f"stroke='#4e79a7' stroke-width='1.5'/><text x='0' y='{height + 15}' font-size='10'>"
        f"{lo:.2f} to {hi:.2f} over {len(points)} points</text></svg>"
    )
