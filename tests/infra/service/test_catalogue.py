"""The service catalogue: every service of the design once, with its port, kind and code."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from backend.infra.service import (
    BUILT_SERVICES,
    PORTS,
    SERVICES,
    ServiceSettings,
    ServiceSpec,
    UnknownServiceError,
    service_spec,
    service_url,
    url_variable,
)

ROOT = Path(__file__).resolve().parents[3]


def test_the_catalogue_holds_the_nine_services_of_the_design_with_their_seed_ports() -> None:
    assert [(s.name, s.kind, s.port, s.built) for s in SERVICES] == [
        ("ai-engine", "http", 8001, True),
        ("execution", "http", 8002, True),
        ("risk-safety", "http", 8003, True),
        ("portfolio-intelligence", "http", 8004, True),
        ("rl-training", "http", 8005, True),
        ("trading-bot", "http", 8006, True),
        ("clm", "worker", 8011, True),
        ("eventbus-bridge", "worker", 8012, True),
        ("position-monitor", "worker", 8013, True),
    ]
    assert len({s.port for s in SERVICES}) == len(SERVICES), "no two services share a port"


def test_ports_is_the_catalogue_read_as_name_to_port() -> None:
    assert {s.name: s.port for s in SERVICES} == PORTS


def test_a_url_variable_is_the_name_in_capitals_with_underscores_and_url() -> None:
    assert url_variable("risk-safety") == "RISK_SAFETY_URL"
    assert url_variable("clm") == "CLM_URL"
    assert service_spec("portfolio-intelligence").url_variable == "PORTFOLIO_INTELLIGENCE_URL"


def test_service_url_is_the_url_variable_when_set_else_the_catalogue_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RISK_SAFETY_URL", raising=False)
    assert service_url("risk-safety") == "http://127.0.0.1:8003"
    monkeypatch.setenv("RISK_SAFETY_URL", "http://risk:9000/")
    assert service_url("risk-safety") == "http://risk:9000"


def test_a_service_listens_on_port_when_set_else_on_its_catalogue_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PORT", raising=False)
    assert ServiceSettings().port_for("eventbus-bridge") == 8012
    monkeypatch.setenv("PORT", "18012")
    assert ServiceSettings().port_for("eventbus-bridge") == 18012


def test_an_unknown_name_is_an_error_that_lists_the_services() -> None:
    with pytest.raises(UnknownServiceError) as caught:
        service_url("risk_safety")
    message = str(caught.value)
    assert "'risk_safety' is not a service" in message
    assert all(s.name in message for s in SERVICES)


def test_asking_for_a_built_service_names_one_that_is_not_built_yet_as_such() -> None:
    unbuilt = [s.name for s in SERVICES if not s.built]
    if not unbuilt:
        pytest.skip("every service of the catalogue is built")
    name, *others = unbuilt
    assert service_spec(name).built is False
    with pytest.raises(UnknownServiceError, match=f"'{name}' is not built yet") as caught:
        service_spec(name, built_only=True)
    assert not [n for n in others if n in str(caught.value)], "only built services are offered"
    assert service_spec("execution", built_only=True).name == "execution"


@pytest.mark.parametrize("spec", BUILT_SERVICES, ids=lambda s: s.name)
def test_a_built_service_has_the_package_factory_and_script_the_catalogue_names(
    spec: ServiceSpec,
) -> None:
    module = importlib.import_module(spec.module)
    assert callable(module.create_service)
    assert spec.name == module.NAME, "the service calls itself by its catalogue name"
    assert (ROOT / spec.script).is_file()


@pytest.mark.parametrize("spec", [s for s in SERVICES if not s.built], ids=lambda s: s.name)
def test_a_service_not_built_yet_has_no_package(spec: ServiceSpec) -> None:
    # Building one means adding its package and setting built=True in the catalogue.
    assert not (ROOT / "microservices" / spec.package).exists()
