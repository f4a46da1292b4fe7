"""The `Service` skeleton: observability, health, event bus, database and a clean shutdown."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import httpx
import uvicorn
from fastapi import FastAPI, Request

from backend.infra.observability import (
    ReadinessCheck,
    add_health_endpoints,
    add_metrics_middleware,
    add_readiness_check,
    get_logger,
    get_tracer,
    init_observability,
    instrument_fastapi,
    shutdown_observability,
    uvicorn_log_config,
)

from ._auth import (
    TOKEN_VARIABLE,
    AccessSettings,
    Authenticator,
    BearerAuthMiddleware,
    SiblingBearerAuth,
    install_openapi_security,
)
from ._errors import NulRefusalMiddleware, install_validation_handler
from ._heap import freeze_startup_heap
from ._history import StartRefusedError, check_database_matches_bus
from ._settings import ServiceSettings
from ._supervisor import Supervisor
from ._unavailable import install_database_handler

if TYPE_CHECKING:
    # Imported for their types only: a service built without the bus or the database never
    # imports redis or SQLAlchemy's async machinery.
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from backend.infra.eventbus import (
        BatchEntry,
        Event,
        EventConsumer,
        EventData,
        EventPublisher,
    )

T = TypeVar("T")
DataT = TypeVar("DataT", bound="EventData")
Hook = Callable[["Resources"], Awaitable[None]]


class NotProvided(LookupError):
    """A route asked for an object its service never provided (an assembly mistake)."""


class Resources:
    """What a service's handlers use: its bus, its database, an HTTP client and the objects
    the service provided (its core object), each with its own type."""

    def __init__(self, name: str, settings: ServiceSettings) -> None:
        self.name = name
        self.settings = settings
        self.http: httpx.AsyncClient | None = None
        """Sends the service's bearer token to sibling services (never to other hosts)."""
        self.consumer: EventConsumer | None = None
        """The service's consumer group, once started (None before, or without handlers)."""
        self.market_consumer: EventConsumer | None = None
        """Its consumer group on the market-data Redis, for the market data it handles (None
        without `MARKET_REDIS_URL`: `consumer` reads those streams too)."""
        self._redis: Redis | None = None
        self._market_redis: Redis | None = None
        self._publisher: EventPublisher | None = None
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._provided: dict[type[Any], object] = {}

    @property
    def redis(self) -> Redis:
        """The bus's Redis client (a service built with `eventbus=True`, once started)."""
        return _present(self._redis, self.name, "the event bus")

    @property
    def publisher(self) -> EventPublisher:
        """Publishes events as this service (a service built with `eventbus=True`)."""
        return _present(self._publisher, self.name, "the event bus")

    @property
    def engine(self) -> AsyncEngine:
        """The database engine (a service built with `database=True`, once started)."""
        return _present(self._engine, self.name, "a database")

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The database session factory (a service built with `database=True`)."""
        return _present(self._sessions, self.name, "a database")

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A unit of work: commit on success, roll back on error."""
        from backend.infra.db import session_scope

        return session_scope(self.sessions)

    def provide(self, obj: T, as_type: type[T] | None = None) -> T:
        """Make `obj` what `provided(as_type)` hands to routes (by default, `provided` of its
        own class); one object per type. Returns `obj`."""
        kind: type[Any] = type(obj) if as_type is None else as_type
        if not isinstance(obj, kind):
            raise TypeError(f"{self.name}: a {type(obj).__name__} is not a {kind.__name__}")
        if kind in self._provided:
            raise ValueError(f"{self.name} already provides a {kind.__name__}")
        self._provided[kind] = obj
        return obj

    def provided(self, kind: type[T]) -> T:
        """The object provided as `kind`; `NotProvided` if the service provided none."""
        try:
            obj = self._provided[kind]
        except KeyError:
            raise NotProvided(f"{self.name} provides no {kind.__name__}") from None
        return cast(T, obj)  # `provide` checked it is an instance of `kind`


def _present(value: T | None, service: str, what: str) -> T:
    if value is None:
        raise RuntimeError(f"{service} was built without {what}, or is not started yet")
    return value


class Service:
    """One Quantum Trader service process."""

    def __init__(
        self,
        name: str,
        *,
        kind: Literal["http", "worker"] = "http",
        database: bool = False,
        eventbus: bool = False,
        consume_from: Literal["earliest", "latest"] = "earliest",
        log_level: str | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.config = init_observability(
            service_name=name, log_level=log_level, enable_tracing=True, enable_metrics=True
        )
        self.logger = get_logger(f"microservices.{name}")
        self.tracer = get_tracer(f"microservices.{name}")
        self.settings = ServiceSettings()
        self.access = AccessSettings()
        self.authenticator = Authenticator(self.access)
        self.resources = Resources(name, self.settings)
        self._database = database
        self._eventbus = eventbus
        self._consume_from = consume_from
        self._subscriptions: list[tuple[type[EventData], Callable[[EventConsumer], None]]] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._background: list[tuple[str, Hook]] = []
        self._supervisor = Supervisor()
        self._started = asyncio.Event()
        self._startup_error: str | None = "starting"
        self._server: uvicorn.Server | None = None
        self.refused: str | None = None
        """Why the service refused to start (it then stops); None while all is well."""
        self.app = self._build_app()

    # Assembly ---------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title=self.name, lifespan=self._lifespan)
        # Innermost: only an authenticated request has its body read here.
        app.add_middleware(NulRefusalMiddleware)
        # Added first, so it runs inside the observability middleware: refusals are traced,
        # logged and counted like any other response.
        app.add_middleware(BearerAuthMiddleware, authenticator=self.authenticator)
        install_openapi_security(app, self.authenticator)
        # A 422 that can always be written: FastAPI's own echoes inputs JSON cannot carry.
        install_validation_handler(app)
        install_database_handler(app)
        instrument_fastapi(app)
        add_metrics_middleware(app)
        add_health_endpoints(app, [ReadinessCheck("startup", self._check_started)])
        app.state.resources = self.resources
        return app

    async def _check_started(self) -> None:
        if self._startup_error is not None:
            raise RuntimeError(self._startup_error)

    def subscribe(
        self,
        model: type[DataT],
        handler: Callable[[Event[DataT]], Awaitable[object]],
        *,
        deduplicate: bool = True,
        defer_ms: int = 0,
    ) -> None:
        """Handle events of `model`'s type in this service's consumer group
        (`deduplicate`, `defer_ms`: see `EventConsumer.subscribe`)."""
        if not self._eventbus:
            raise RuntimeError(f"{self.name} was built without the event bus")
        # Kept as a closure so the pairing of model and handler stays checked: the consumer
        # does not exist until start-up.
        self._subscriptions.append(
            (
                model,
                lambda consumer: consumer.subscribe(
                    model, handler, deduplicate=deduplicate, defer_ms=defer_ms
                ),
            )
        )

    def subscribe_batch(
        self,
        model: type[DataT],
        handler: Callable[[Sequence[BatchEntry[DataT]]], Awaitable[object]],
    ) -> None:
        """Handle events of `model`'s type a read at a time (`EventConsumer.subscribe_batch`)."""
        if not self._eventbus:
            raise RuntimeError(f"{self.name} was built without the event bus")
        self._subscriptions.append(
            (model, lambda consumer: consumer.subscribe_batch(model, handler))
        )

    def provide(self, obj: T, as_type: type[T] | None = None) -> T:
        """Register the service's core object for its routes, which declare it with
        `Annotated[OrderDesk, Depends(provided(OrderDesk))]`; returns `obj`."""
        return self.resources.provide(obj, as_type)

    def on_startup(self, hook: Hook) -> Hook:
        """Run `hook(resources)` once the bus and database are up (decorator)."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        self._shutdown.append(hook)
        return hook

    def background(self, name: str, loop: Hook) -> None:
        """Run `loop(resources)` as a supervised task once started (restarted if it raises)."""
        self._background.append((name, loop))

    def add_readiness_check(self, check: ReadinessCheck) -> None:
        add_readiness_check(self.app, check)

    def start_task(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Start a supervised task now (from a handler or route)."""
        self._supervisor.start(name, fn)

    # Lifespan ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        r = self.resources
        r.http = ServiceHttpClient(
            timeout=self.settings.http_timeout_s, auth=SiblingBearerAuth(self.access.api_token)
        )
        if not self.authenticator.configured:
            self.logger.warning(
                f"{TOKEN_VARIABLE} is not set: every request that needs a token is refused "
                f"(503); set {TOKEN_VARIABLE} to a random secret of at least 16 characters, "
                "the same for every service, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
                variable=TOKEN_VARIABLE,
            )
        redis_target: str | None = None
        if self._eventbus:
            from backend.infra.eventbus import (
                EventPublisher,
                create_redis_client,
                describe_redis,
                redis_readiness_check,
                resolve_market_redis_url,
                resolve_redis_url,
            )

            redis_url = resolve_redis_url()
            redis_target = describe_redis(redis_url)
            r._redis = create_redis_client(redis_url)
            add_readiness_check(app, redis_readiness_check(r._redis, target=redis_url))
            market_url = resolve_market_redis_url()
            if market_url is not None:
                r._market_redis = create_redis_client(market_url)
                add_readiness_check(
                    app,
                    redis_readiness_check(r._market_redis, "redis-market", target=market_url),
                )
            r._publisher = EventPublisher(r._redis, source=self.name, market_client=r._market_redis)
        if self._database:
            from backend.infra.db import (
                create_engine,
                create_session_factory,
                database_readiness_check,
                load_database_settings,
            )

            r._engine = create_engine(load_database_settings(self.name))
            r._sessions = create_session_factory(r._engine)
            add_readiness_check(app, database_readiness_check(r._engine))
        # Start-up work that needs the database or Redis runs in a task that retries, so the
        # process serves /health (503, naming what is missing) while a dependency is down.
        self._supervisor.start("startup", self._bootstrap, restart=True)
        self.logger.info(
            "service starting",
            kind=self.kind,
            redis=redis_target,
            token_required_for="all requests" if self.access.auth_reads else "mutating requests",
        )
        try:
            yield
        finally:
            await self._stop()

    async def _bootstrap(self) -> None:
        r = self.resources
        attempt = 0
        while True:
            try:
                if r._engine is not None:
                    from backend.infra.db import migrate

                    await migrate(r._engine)
                    if r._redis is not None:
                        await check_database_matches_bus(self.name, r._engine, r._redis)
                for hook in self._startup:
                    await hook(r)
                break
            except StartRefusedError as exc:
                self._refuse(str(exc))
                return
            except Exception as exc:
                attempt += 1
                self._startup_error = f"{type(exc).__name__}: {exc}"
                self.logger.warning(
                    "start-up failed; retrying", error=self._startup_error, attempt=attempt
                )
                await asyncio.sleep(
                    min(10.0, 0.5 * 2 ** min(attempt, 5)) * random.uniform(0.8, 1.2)
                )
        if self._subscriptions:
            await self._start_consumers()
        for name, loop in self._background:
            self._supervisor.start(name, _bind(loop, r))
        self._startup_error = None
        self._started.set()
        self.logger.info("service started", kind=self.kind)

    async def _start_consumers(self) -> None:
        """The service's consumer group; with a market-data Redis, a second one there for the
        market data it handles (its idempotency marks there too: nothing of a tick's delivery
        waits for the bus's fsync)."""
        from backend.infra.eventbus import EventConsumer, Idempotency, default_catalogue

        r = self.resources
        market = r._market_redis
        catalogue = default_catalogue()
        by_server: dict[bool, list[Callable[[EventConsumer], None]]] = {}
        for model, subscribe in self._subscriptions:
            on_market = market is not None and catalogue.spec_for_model(model).market_data
            by_server.setdefault(on_market, []).append(subscribe)
        for on_market, subscriptions in sorted(by_server.items()):
            client = market if on_market and market is not None else r.redis
            consumer = EventConsumer(
                client,
                group=self.name,
                idempotency=Idempotency(client, scope=self.name),
                start_from=self._consume_from,
            )
            for subscribe in subscriptions:
                subscribe(consumer)
            if on_market:
                r.market_consumer = consumer
            else:
                r.consumer = consumer
            await consumer.start()

    def _refuse(self, reason: str) -> None:
        """Stay unready for good, saying why; a served process stops (`run` exits non-zero)."""
        self.refused = reason
        self._startup_error = reason
        self.logger.critical(reason)
        if self._server is not None:
            self._server.should_exit = True  # a graceful stop; then `run` exits with the reason

    async def _stop(self) -> None:
        r = self.resources
        timeout = self.settings.shutdown_timeout_s
        self.logger.info("service stopping")
        for consumer in (r.market_consumer, r.consumer):
            if consumer is not None:
                await consumer.stop(timeout_s=timeout)
        await self._supervisor.stop(timeout)
        for hook in reversed(self._shutdown):
            try:
                await hook(r)
            except Exception:
                self.logger.exception("shutdown hook failed", hook=getattr(hook, "__name__", "?"))
        if r.http is not None:
            await r.http.aclose()
        for client in (r._market_redis, r._redis):
            if client is not None:
                await client.aclose()
        if r._engine is not None:
            await r._engine.dispose()
        self.logger.info("service stopped")
        shutdown_observability()

    # Running ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve on HOST:PORT (PORT defaults to the service's port in the port table).

        Exits with status 1 and the reason when the service refused to start.
        """
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port_for(self.name),
            log_config=uvicorn_log_config(self.config.log_level),
            access_log=False,
            timeout_graceful_shutdown=int(self.settings.shutdown_timeout_s),
        )
        self._server = uvicorn.Server(config)
        # Served, not imported in-process (tests): what is alive now lives as long as it.
        frozen = freeze_startup_heap()
        if frozen:
            self.logger.info("start-up heap frozen", objects=frozen)
        self._server.run()
        if self.refused is not None:
            raise SystemExit(self.refused)
        if not self._server.started:  # as `uvicorn.run`: the port was taken, or the like
            raise SystemExit(3)


class _NoCookies(httpx.Cookies):
    """A cookie store that keeps nothing: the services hold no sessions with each other."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class ServiceHttpClient(httpx.AsyncClient):
    """`resources.http`: httpx without a cookie jar. httpx runs `http.cookiejar`'s extraction
    (through `email.message`) on every response and copies its jar into every request; the
    services set no cookies for each other, and a `Set-Cookie` from a sibling is not kept."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, _cookies: Any) -> None:
        pass  # httpx's constructor sets an empty jar; nothing is ever kept


_NO_COOKIES = _NoCookies()


def _bind(loop: Hook, resources: Resources) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await loop(resources)

    return run


def resources_of(request: Request) -> Resources:
    """FastAPI dependency: the service's resources."""
    return request.app.state.resources  # type: ignore[no-any-return]


@functools.cache
def provided(kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """FastAPI dependency on the object the service provided as `kind` (`Service.provide`).

        Desk = Annotated[OrderDesk, Depends(provided(OrderDesk))]

    The same `kind` always gives the same dependency, so `app.dependency_overrides` works.
    """

    # A coroutine function, though it never awaits: FastAPI runs a plain function dependency
    # in its thread pool, a thread hop per request that cost risk-safety about a seventh of
    # its CPU under load.
    async def dependency(request: Request) -> T:
        return resources_of(request).provided(kind)

    dependency.__name__ = f"provided_{kind.__name__}"
    dependency.provides = kind  # type: ignore[attr-defined]  # read by JsonBodyRoute
    return dependency
