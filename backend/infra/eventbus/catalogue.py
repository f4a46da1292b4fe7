"""The event catalogue: which event types the bus carries, on which stream, as which model.

The bus is generic: it knows no event of its own. A catalogue is built from data, an event type
and its pydantic data model per row (`Catalogue.of`); each type travels on a stream of its own
name. The platform's catalogue is the trading events' (`backend.trading.events.EVENT_TYPES`),
which the bus loads by name the first time a publisher, consumer or outbox is made without a
catalogue of its own (`default_catalogue`); `use_catalogue` installs another one.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from ._errors import EventBusConfigError, UnknownEventType

EventData = BaseModel
"""The data of an event: any pydantic model the catalogue lists."""

DEFAULT_CATALOGUE = "backend.trading.events:EVENT_TYPES"
"""Where the platform's event types are declared (`module:mapping` of event type to model)."""

DataModel = type[EventData]
"""A data model class (a field named `type` below would shadow the builtin in annotations)."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One catalogue row: the event type, its stream and its data model at `version`."""

    type: str
    stream: str
    model: DataModel
    version: int = 1
    dedup_ttl_s: int | None = None
    """How long a consumer group remembers this type's processed event ids; None: the bus's
    `EVENTBUS_DEDUP_TTL_S`. A model declares it as a class attribute `dedup_ttl_s`."""
    market_data: bool = False
    """Market data (ticks): carried by the market-data Redis when `MARKET_REDIS_URL` names one,
    a server that keeps no append-only file (see docs/EVENTBUS.md). A model declares it as a
    class attribute `market_data`."""

    def __post_init__(self) -> None:
        if self.dedup_ttl_s is not None and self.dedup_ttl_s <= 0:
            raise ValueError(f"{self.type}: dedup_ttl_s must be positive")


class Catalogue:
    """Look-ups over a set of `EventSpec`s, by type and by data model; each type, stream and
    model is listed once."""

    def __init__(self, specs: list[EventSpec]) -> None:
        self._by_type: dict[str, EventSpec] = {}
        self._by_stream: dict[str, EventSpec] = {}
        self._by_model: dict[type[EventData], EventSpec] = {}
        for spec in specs:
            for index, key in ((self._by_type, spec.type), (self._by_stream, spec.stream)):
                if key in index:
                    raise ValueError(f"catalogue lists {key!r} twice")
                index[key] = spec
            if spec.model in self._by_model:
                raise ValueError(f"catalogue lists model {spec.model.__name__} twice")
            self._by_model[spec.model] = spec

    def __iter__(self) -> Iterator[EventSpec]:
        return iter(self._by_type.values())

    def __len__(self) -> int:
        return len(self._by_type)

    @property
    def by_type(self) -> Mapping[str, EventSpec]:
        """Specs keyed by event type."""
        return self._by_type

    def spec_for_type(self, event_type: str) -> EventSpec:
        """The spec of `event_type`; `UnknownEventType` if the catalogue does not list it."""
        try:
            return self._by_type[event_type]
        except KeyError:
            raise UnknownEventType(f"unknown event type {event_type!r}") from None

    def spec_for_model(self, model: type[EventData]) -> EventSpec:
        """The spec whose data model is `model`."""
        try:
            return self._by_model[model]
        except KeyError:
            raise UnknownEventType(f"{model.__name__} is not an event data model") from None

    @classmethod
    def of(cls, types: Mapping[str, DataModel]) -> Catalogue:
        """A catalogue of `types` (event type -> data model), each type on a stream of its own
        name, at the model's `schema_version` (1 if it declares none), its processed marks kept
        for the model's `dedup_ttl_s` (the bus's default if it declares none), market data if the
        model says `market_data = True`."""
        return cls(
            [
                EventSpec(
                    name,
                    name,
                    model,
                    int(getattr(model, "schema_version", 1)),
                    getattr(model, "dedup_ttl_s", None),
                    bool(getattr(model, "market_data", False)),
                )
                for name, model in types.items()
            ]
        )

    @classmethod
    def load(cls, source: str) -> Catalogue:
        """The catalogue of the `module:mapping` named by `source`."""
        module_name, _, attribute = source.partition(":")
        try:
            types = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise EventBusConfigError(f"no event types at {source!r}: {exc}") from exc
        return cls.of(types)


_default: Catalogue | None = None


def default_catalogue() -> Catalogue:
    """The catalogue publishers, consumers and outboxes use unless given one."""
    global _default
    if _default is None:
        _default = Catalogue.load(DEFAULT_CATALOGUE)
    return _default


def use_catalogue(catalogue: Catalogue) -> None:
    """Make `catalogue` the default from now on (for a process that carries other events)."""
    global _default
    _default = catalogue
