"""A service's core object reaches its routes by type: `Service.provide` and `provided(T)`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import fastapi.dependencies.utils as fastapi_dependencies
import pytest
from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient

from backend.infra.service import NotProvided, Resources, Service, provided


class Counter:
    """A stand-in core object: what the routes below change and read."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def bump(self) -> int:
        self.value += 1
        return self.value


class SlowCounter(Counter):
    pass


class Clock:
    now_ms = 0


router = APIRouter()
CounterDep = Annotated[Counter, Depends(provided(Counter))]
ClockDep = Annotated[Clock, Depends(provided(Clock))]


@router.get("/count")
async def count(counter: CounterDep) -> dict[str, int]:
    return {"value": counter.value}


@router.get("/bump")
async def bump(counter: CounterDep) -> dict[str, int]:
    return {"value": counter.bump()}


@router.get("/clock")
async def clock(value: ClockDep) -> dict[str, int]:
    return {"now_ms": value.now_ms}


def counting_service(name: str, counter: Counter | None = None) -> Service:
    service = Service(name)
    service.provide(counter or Counter())
    service.app.include_router(router)
    return service


@contextmanager
def running(service: Service) -> Iterator[TestClient]:
    with TestClient(service.app, raise_server_exceptions=False) as client:
        yield client


def test_a_route_gets_the_object_its_service_provided() -> None:
    counter = Counter(start=41)
    service = counting_service("provide-test", counter)
    with running(service) as client:
        assert client.get("/bump").json() == {"value": 42}
    assert counter.value == 42


def test_two_services_in_one_process_each_get_their_own_object() -> None:
    first, second = Counter(start=1), Counter(start=100)
    with (
        running(counting_service("provide-a", first)) as a,
        running(counting_service("provide-b", second)) as b,
    ):
        assert a.get("/bump").json() == {"value": 2}
        assert b.get("/count").json() == {"value": 100}


def test_provide_returns_the_object_so_assembly_reads_in_one_line() -> None:
    service = Service("provide-returns")
    counter = Counter()
    assert service.provide(counter) is counter
    assert service.resources.provided(Counter) is counter


def test_an_object_is_provided_as_its_own_class_unless_told_otherwise() -> None:
    resources = Resources("provide-as", Service("provide-as").settings)
    slow = resources.provide(SlowCounter())
    with pytest.raises(NotProvided, match="provide-as provides no Counter"):
        resources.provided(Counter)
    assert resources.provided(SlowCounter) is slow

    other = Resources("provide-as-base", resources.settings)
    base = other.provide(SlowCounter(), as_type=Counter)
    assert other.provided(Counter) is base


def test_an_object_that_is_not_the_type_it_is_provided_as_is_refused_at_assembly() -> None:
    service = Service("provide-wrong-type")
    with pytest.raises(TypeError, match="a Clock is not a Counter"):
        service.provide(Clock(), as_type=Counter)  # type: ignore[arg-type]


def test_one_object_per_type() -> None:
    service = Service("provide-twice")
    service.provide(Counter())
    with pytest.raises(ValueError, match="already provides a Counter"):
        service.provide(Counter())


def test_a_route_asking_for_an_object_never_provided_fails_naming_it() -> None:
    service = counting_service("provide-missing")
    with running(service) as client:
        assert client.get("/count").status_code == 200
        assert client.get("/clock").status_code == 500
    with pytest.raises(NotProvided, match="provide-missing provides no Clock"):
        service.resources.provided(Clock)


def test_the_dependency_of_a_type_is_one_object_so_tests_can_override_it() -> None:
    assert provided(Counter) is provided(Counter)
    assert provided(Counter) is not provided(Clock)
    service = counting_service("provide-override", Counter(start=5))
    service.app.dependency_overrides[provided(Counter)] = lambda: Counter(start=99)
    with running(service) as client:
        assert client.get("/count").json() == {"value": 99}


def test_the_bus_and_database_of_a_service_built_without_them_say_so() -> None:
    resources = Service("provide-bare").resources
    for attribute, what in [
        ("redis", "the event bus"),
        ("publisher", "the event bus"),
        ("engine", "a database"),
        ("sessions", "a database"),
    ]:
        with pytest.raises(RuntimeError, match=f"provide-bare was built without {what}"):
            getattr(resources, attribute)
    assert resources.consumer is None
    assert resources.http is None


def test_provided_objects_reach_routes_on_the_event_loop_not_through_the_thread_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hops: list[object] = []
    run_in_threadpool = fastapi_dependencies.run_in_threadpool

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await run_in_threadpool(func, *args, **kwargs)

    monkeypatch.setattr(fastapi_dependencies, "run_in_threadpool", counted)
    with running(counting_service("provided-on-the-loop", Counter(41))) as client:
        assert client.get("/count").json() == {"value": 41}
    assert hops == []
