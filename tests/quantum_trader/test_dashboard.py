"""The dashboard's kill switch refuses what it cannot send, before calling anything (the
browser acceptance test presses it against the real risk-safety)."""

from __future__ import annotations

from starlette.testclient import TestClient

from quantum_trader.dashboard import create_viewer
from tests.support.procs import free_port
from tests.traceview.listqueries import ListQueries


def client() -> TestClient:
    down = {"risk-safety": f"http://127.0.0.1:{free_port()}"}
    return TestClient(create_viewer(ListQueries([]), ingest_routes=[], urls=down))


def test_the_kill_switch_needs_the_operators_token_and_a_reason() -> None:
    c = client()
    no_token = c.post("/dashboard/trading", data={"action": "halt", "reason": "r"})
    assert no_token.status_code == 401 and "QT_API_TOKEN" in no_token.text
    no_reason = c.post("/dashboard/trading", data={"action": "halt", "token": "t" * 20})
    assert no_reason.status_code == 400 and "a reason is needed" in no_reason.text
    bad = c.post("/dashboard/trading", data={"action": "explode", "token": "t", "reason": "r"})
    assert bad.status_code == 400 and "expected halt or resume" in bad.text


def test_a_token_in_the_authorization_header_is_used_and_an_absent_risk_safety_is_a_502() -> None:
    answer = client().post(
        "/dashboard/trading",
        data={"action": "halt", "reason": "r"},
        headers={"Authorization": "Bearer " + "t" * 20},
    )
    assert answer.status_code == 502 and "risk-safety: ConnectError" in answer.text


def test_the_equity_curve_is_a_polyline_over_its_range() -> None:
    from decimal import Decimal

    from microservices.contracts.portfolio_intelligence import EquityPointPublic
    from quantum_trader.dashboard import _equity_svg

    points = [
        EquityPointPublic(
            ts_ms=1_000 * i,
            equity=Decimal(100 + i * i),
            cash=Decimal(0),
            unrealized_pnl=Decimal(0),
            realized_pnl=Decimal(0),
        )
        for i in range(5)
    ]
    svg = _equity_svg(points)
    coords = svg.split("points='")[1].split("'")[0].split()
    assert coords[0] == "0.0,120.0" and coords[-1] == "420.0,0.0"  # lowest left, highest right
    assert len(coords) == 5 and "100.00 to 116.00 over 5 points" in svg
    assert "Not enough equity points" in _equity_svg(points[:1])


def test_a_state_in_force_without_its_record_says_so() -> None:
    from starlette.requests import Request

    from microservices.contracts.risk_safety import ExposureStatus, PortfolioStatus, StatePublic
    from quantum_trader.dashboard import Dashboard, _dashboard_body

    def body(recorded: bool) -> str:
        risk = StatePublic(
            state="HALTED",
            reason="db down",
            changed_at=None,
            changed=False,
            epoch=3,
            state_token="t",
            recorded=recorded,
            portfolio=PortfolioStatus(
                url="http://p", reachable=None, checked_at_ms=None, age_ms=None, error=None
            ),
            exposure=ExposureStatus(
                url="http://e", reachable=None, checked_at_ms=None, fill_sequence=None, error=None
            ),
            quotes=[],
            limits={},
        )
        request = Request({"type": "http", "query_string": b"", "headers": []})
        return _dashboard_body(Dashboard(health=[], risk=risk), request)

    assert "id='risk-unrecorded'" in body(False) and "not recorded yet" in body(False)
    assert "id='risk-unrecorded'" not in body(True)
