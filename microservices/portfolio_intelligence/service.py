"""portfolio-intelligence assembly: the book, its routes, event handlers, background loops."""

from __future__ import annotations

from backend.infra.service import Service
from backend.trading.events import MarketTick, OrderFilled

from .api import router
from .book import PortfolioBook
from .settings import PortfolioIntelligenceSettings

NAME = "portfolio-intelligence"


def create_service(settings: PortfolioIntelligenceSettings | None = None) -> Service:
    """The portfolio-intelligence service (port 8004): the fill ledger and what follows from it."""
    service = Service(NAME, database=True, eventbus=True)
    book = service.provide(
        PortfolioBook(
            settings or PortfolioIntelligenceSettings(),
            service.resources,
            service.logger,
            service.tracer,
        )
    )
    service.on_startup(book.restore)
    service.subscribe_batch(OrderFilled, book.on_fills)
    # Marks only: the ticks on the way to an order go first (OFF_PATH_TICK_DEFER_MS).
    service.subscribe(
        MarketTick,
        book.on_tick,
        deduplicate=False,
        defer_ms=service.settings.off_path_tick_defer_ms,
    )
    service.background("equity-sampler", book.sample_equity)
    service.background("fill-watch", book.watch_fills)
    service.background("outbox-relay", book.run_outbox_relay)
    service.app.include_router(router)
    return service
