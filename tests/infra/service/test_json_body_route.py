"""`JsonBodyRoute`: a well-formed JSON body reaches the endpoint without dependency solving;
every other request gets FastAPI's own answer, the same as on a plain route."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any

import fastapi.routing
import orjson
import pytest
from fastapi import APIRouter, Depends, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from backend.infra.service import JsonBodyRoute, SentAnswer, Service, provided

TOKEN = "json-body-route-token-0123456789"


class Tally:
    def __init__(self) -> None:
        self.total = Decimal(0)


class AddRequest(BaseModel):
    amount: Decimal = Field(gt=0, le=1000, decimal_places=4)
    note: str = Field("", max_length=8)


class TallyPublic(BaseModel):
    total: Decimal


TallyDep = Annotated[Tally, Depends(provided(Tally))]
router = APIRouter()


async def add(body: AddRequest, tally: TallyDep) -> Response:
    tally.total += body.amount
    return SentAnswer(TallyPublic(total=tally.total).model_dump_json().encode(), 201)


for path, route_class in (("/fast", JsonBodyRoute), ("/plain", fastapi.routing.APIRoute)):
    router.add_api_route(
        path,
        add,
        methods=["POST"],
        status_code=201,
        response_model=TallyPublic,
        route_class_override=route_class,
    )


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("QT_API_TOKEN", TOKEN)
    service = Service("json-body-route")
    service.provide(Tally())
    service.app.include_router(router)
    with TestClient(service.app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths FastAPI solved dependencies for."""
    calls: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    return calls


def test_a_well_formed_body_reaches_the_endpoint_without_dependency_solving(
    client: TestClient, solved: list[str]
) -> None:
    first = client.post("/fast", json={"amount": "1.5"})
    second = client.post(
        "/fast", content=b'{"amount": 2, "note": "x"}', headers={"Content-Type": "application/json"}
    )
    assert (first.status_code, first.json()) == (201, {"total": "1.5"})
    assert (second.status_code, second.json()) == (201, {"total": "3.5"})
    assert solved == []
    client.post("/plain", json={"amount": "1"})
    assert solved == ["/plain"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"amount": "1.5"', "application/json"),  # does not decode
        (b'{"amount": "-1"}', "application/json"),  # out of bounds
        (b'{"amount": "1.00001"}', "application/json"),  # too many decimal places
        (b'{"amount": "1", "note": "much too long"}', "application/json"),
        (b'{"amount": NaN}', "application/json"),
        (b"[]", "application/json"),
        (b"", "application/json"),
        (b'{"amount": "1"}', "text/plain"),
        (b'{"amount": "1"}', "application/json; charset=utf-8"),
        (b'{"amount": "1"}', "application/merge-patch+json"),
        (b'{"amount": 1e400}', "application/json"),
        (b'{"amount": 0.30000000000000004}', "application/json"),
        (b'{"amount": 12.345678901234567890123}', "application/json"),
    ],
)
def test_every_other_request_gets_the_answer_of_a_plain_route(
    client: TestClient, body: bytes, content_type: str
) -> None:
    answers = [
        client.post(path, content=body, headers={"Content-Type": content_type})
        for path in ("/fast", "/plain")
    ]
    fast, plain = answers
    assert fast.status_code == plain.status_code
    if fast.status_code == 201:  # the second call added once more: compare what each added
        assert Decimal(plain.json()["total"]) == 2 * Decimal(fast.json()["total"])
    else:
        assert orjson.loads(fast.content) == orjson.loads(plain.content)


def test_a_dependency_override_is_honoured(client: TestClient, solved: list[str]) -> None:
    other = Tally()
    client.app.dependency_overrides[provided(Tally)] = lambda: other  # type: ignore[attr-defined]
    assert client.post("/fast", json={"amount": "4"}).json() == {"total": "4"}
    assert other.total == Decimal(4) and solved == ["/fast"]
