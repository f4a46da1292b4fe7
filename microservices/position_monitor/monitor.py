"""The position monitor, position-monitor's core object: watches open positions against ticks
and sends a reduce-only exit through risk-safety to execution when a stop triggers.

Positions come from portfolio-intelligence: its `position.updated` events as they happen, and
its `GET /portfolio` at start-up and every `MONITOR_RECONCILE_INTERVAL_MS` (which repairs a
missed event). Each position gets the default stops of the settings; `PUT
/positions/{id}/stops` changes them.

What makes an exit happen once, whatever restarts or redeliveries come:

- The trailing state is stored before anything acts on it, so a restart resumes the level
  reached, never a looser one (and the level itself only ratchets, `backend/trading/stops.py`).
- When a stop triggers, the position becomes EXITING and its exit's client order id (derived
  from the position and the rule, `exit_client_order_id`) is stored, with the `stop.triggered`
  event through the outbox, *before* the order is sent. A position that is EXITING is not
  judged again, so a redelivered tick sends nothing; a restart finds the exit stored and sends
  the same client order id again if its outcome is unknown, which execution answers with the
  order it already has.

The escalation (`supervise`): an exit refused, or not filled within `MONITOR_EXIT_TIMEOUT_MS`,
is re-evaluated against the position the portfolio holds now (closed: done; smaller: resized),
then sent as an emergency market exit (reduce-only, so it passes in HALTED) with a client order
id of its own; if that fails too, the position is ALERTED: an error log line,
`position_monitor_alerts_total` and a `stop.failed` event.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from backend.infra.eventbus import BatchEntry, Event
from backend.infra.observability import (
    BoundLogger,
    SpanKind,
    current_traceparent,
    links_from_traceparent,
)
from backend.infra.outbox import Outbox
from backend.infra.service import Resources
from backend.trading.events import MarketTick, PositionUpdated, StopFailed, StopTriggered
from backend.trading.orders import OrderStatus
from backend.trading.stops import ExitConfig, StopEvaluation, evaluate_exits, exit_client_order_id
from backend.trading.types import ClientOrderId, OrderRequest, OrderType, Quote, Symbol
from microservices.contracts import Refused, UpstreamError
from microservices.contracts.execution import ExecutionClient, OrderCreate, OrderPublic
from microservices.contracts.portfolio_intelligence import PortfolioClient
from microservices.contracts.risk_safety import CheckRequest, RiskSafetyClient

from . import metrics
from .positions import ExitState, Outcome, Stage, Status, Tracked
from .settings import PositionMonitorSettings
from .store import PositionStore

ZERO = Decimal(0)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class NotFound(LookupError):
    """No position of that id."""


class NotChangeable(ValueError):
    """The position's stops cannot change now (it is closed, or its exit is under way)."""


class PositionMonitor:
    """Holds every position not closed, judges ticks against their stops and sends exits."""

    def __init__(
        self,
        settings: PositionMonitorSettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings = settings
        self.defaults: ExitConfig = settings.to_domain()
        self.resources = resources
        self.store = PositionStore(resources)
        self.log = logger
        self.tracer = tracer
        self.clock = clock
        self.positions: dict[str, Tracked] = {}
        """Every position not closed, by id (at most one per symbol)."""
        self.reconciled_ms: int | None = None
        self.reconcile_error: str | None = "not compared with the portfolio yet"
        self._sequences: dict[Symbol, int] = {}
        self._by_symbol: dict[Symbol, str] = {}
        """The id of the position not closed in each symbol that has one."""
        self._id_floor: dict[Symbol, int] = {}
        """Per symbol, a sequence no lower than that of any position id in the table: an id of a
        higher sequence is new without asking the table."""
        self._stale: set[Symbol] = set()
        """Symbols whose positions in memory may differ from the table (a write failed and
        reading them back failed too): read back before anything acts on them."""
        self._quotes: dict[Symbol, tuple[Quote, int]] = {}
        self._locks: defaultdict[Symbol, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._outbox: Outbox | None = None

    # Start-up ---------------------------------------------------------------------------------

    @property
    def outbox(self) -> Outbox:
        """The outbox of `stop.triggered` and `stop.failed` (made at start-up)."""
        if self._outbox is None:
            raise RuntimeError("position-monitor is not started yet")
        return self._outbox

    async def restore(self, resources: Resources) -> None:
        """Load every position not closed, with its trailing state and exit, from the table."""
        if self._outbox is None:
            self._outbox = Outbox(resources.sessions, resources.publisher, source=resources.name)
        self.positions, self._by_symbol = {}, {}
        for p in await self.store.live():
            self._remember(p)
        self._id_floor = await self.store.max_sequences()
        self._gauge_positions()
        self.log.info(
            "positions restored",
            positions=len(self.positions),
            exiting=[p.position_id for p in self.positions.values() if p.exit is not None],
        )

    async def run_outbox_relay(self, _resources: Resources | None = None) -> None:
        await self.outbox.run_relay()

    def live(self, symbol: str) -> Tracked | None:
        """The position in `symbol` that is not closed, if there is one."""
        position_id = self._by_symbol.get(Symbol(symbol))
        return None if position_id is None else self.positions.get(position_id)

    # Positions --------------------------------------------------------------------------------

    async def on_positions(self, entries: Sequence[BatchEntry[PositionUpdated]]) -> None:
        """Follow a read's position updates (the bus hands them over together): applied in
        order in memory, each changed position written once, in one transaction.

        All or nothing: if the write fails, memory keeps what the table held before (and reads
        the batch's symbols back from it, in case the commit took effect after all), the error
        is raised, and the bus hands the updates over again one at a time (`on_position`), so
        a bad one is retried and dead-lettered alone.
        """
        if len(entries) == 1:
            await self.on_position(entries[0].event)
            return
        symbols = sorted({Symbol(entry.data.symbol) for entry in entries})
        async with AsyncExitStack() as locked:
            for symbol in symbols:  # always in this order: no two holders wait on each other
                await locked.enter_async_context(self._locks[symbol])
            await self._reload(self._stale.intersection(symbols))
            pending: dict[str, Tracked] = {}
            """The batch's positions as it leaves them, by id (written once each)."""
            current = {symbol: self.live(symbol) for symbol in symbols}
            sequences = {s: self._sequences[s] for s in symbols if s in self._sequences}
            applied: list[tuple[BatchEntry[PositionUpdated], list[tuple[Tracked, bool]]]] = []
            for entry in entries:
                data, event = entry.data, entry.event
                symbol = Symbol(data.symbol)
                last = sequences.get(symbol)
                if data.sequence is not None and last is not None and data.sequence < last:
                    with entry.activate():
                        self._older_ignored(symbol, data.sequence, last)
                    continue
                if data.sequence is not None:
                    sequences[symbol] = max(last or 0, data.sequence)
                changed = await self._changes(
                    current[symbol],
                    symbol,
                    data.quantity,
                    data.average_price,
                    data.sequence,
                    _event_ms(event),
                    (data.client_order_id, event.traceparent),
                    taken=pending,
                )
                known = []
                for p in changed:
                    known.append((p, p.position_id in pending or p.position_id in self.positions))
                    pending[p.position_id] = p
                    current[symbol] = None if p.status is Status.CLOSED else p
                applied.append((entry, known))
            await self._write(pending.values(), symbols)
            self._sequences.update(sequences)
            for p in pending.values():
                self._remember(p)
            self._gauge_positions()
            for entry, known in applied:
                with entry.activate():
                    for p, was_known in known:
                        self._announce(p, was_known)

    async def on_position(self, event: Event[PositionUpdated]) -> None:
        """Follow the portfolio's position in a symbol; an update older than the last applied
        (a lower fill sequence) is ignored."""
        data = event.data
        symbol = Symbol(data.symbol)
        async with self._locks[symbol]:
            await self._reload(self._stale.intersection((symbol,)))
            last = self._sequences.get(symbol)
            if data.sequence is not None and last is not None and data.sequence < last:
                self._older_ignored(symbol, data.sequence, last)
                return
            await self._apply(
                symbol,
                data.quantity,
                data.average_price,
                data.sequence,
                _event_ms(event),
                opened_by=(data.client_order_id, event.traceparent),
            )

    def _older_ignored(self, symbol: Symbol, sequence: int, last: int) -> None:
        self.log.info(
            "older position update ignored", symbol=symbol, sequence=sequence, last_sequence=last
        )

    async def _apply(
        self,
        symbol: Symbol,
        quantity: Decimal,
        average_price: Decimal | None,
        sequence: int | None,
        at_ms: int,
        *,
        opened_by: tuple[str | None, str | None] = (None, None),
    ) -> None:
        """Make the position held in `symbol` the one the portfolio reports (under its lock)."""
        await self._reload(self._stale.intersection((symbol,)))
        if sequence is not None:
            self._sequences[symbol] = max(self._sequences.get(symbol, 0), sequence)
        changed = await self._changes(
            self.live(symbol), symbol, quantity, average_price, sequence, at_ms, opened_by
        )
        if not changed:
            return
        await self._write(changed, (symbol,))
        for p in changed:
            known = p.position_id in self.positions
            self._put(p)
            self._announce(p, known)

    async def _write(self, positions: Collection[Tracked], symbols: Collection[Symbol]) -> None:
        """Write `positions` (of `symbols`, whose locks are held) in one transaction: a row for
        each new one, an update of each held in memory. On failure memory is read back from
        the table, whose transaction may have committed after all, before the error is raised."""
        if not positions:
            return
        try:
            await self.store.write(
                [p for p in positions if p.position_id not in self.positions],
                [p for p in positions if p.position_id in self.positions],
            )
        except Exception:
            self._stale.update(symbols)
            try:
                await self._reload(symbols)
            except Exception:
                self.log.exception("positions not read back; read again before use")
            raise

    async def _changes(
        self,
        current: Tracked | None,
        symbol: Symbol,
        quantity: Decimal,
        average_price: Decimal | None,
        sequence: int | None,
        at_ms: int,
        opened_by: tuple[str | None, str | None],
        *,
        taken: Collection[str] = (),
    ) -> list[Tracked]:
        """What the portfolio's `quantity` at `average_price` makes of `current`, the position
        held in `symbol`: closed, opened (a flip does both), changed, or nothing.

        `opened_by`: the client order id whose fill moved the position and the trace context of
        that update; a position it opens keeps them, so its exit links back to its entry.
        `taken`: ids not in the table yet that a new position must not get."""
        changed: list[Tracked] = []
        if current is not None and (quantity == ZERO or _flipped(current, quantity)):
            changed.append(replace(current, status=Status.CLOSED, closed_ms=at_ms))
            current = None
        if quantity != ZERO:
            entry = average_price if average_price and average_price > ZERO else None
            if current is None:
                if entry is None:
                    self.log.warning("position without an average price left alone", symbol=symbol)
                else:
                    position_id = await self._new_id(symbol, sequence, at_ms, taken)
                    changed.append(
                        Tracked(
                            position_id=position_id,
                            symbol=symbol,
                            status=Status.OPEN,
                            quantity=quantity,
                            entry_price=entry,
                            opened_ms=at_ms,
                            sequence=sequence,
                            config=self.defaults,
                            entry_client_order_id=opened_by[0],
                            entry_traceparent=opened_by[1],
                        )
                    )
            elif quantity != current.quantity or entry not in (None, current.entry_price):
                changed.append(
                    replace(
                        current,
                        quantity=quantity,
                        entry_price=entry or current.entry_price,
                        sequence=sequence if sequence is not None else current.sequence,
                    )
                )
        return changed

    def _announce(self, p: Tracked, known: bool) -> None:
        """The metric and log line of a position written (`known`: it was watched before)."""
        if p.status is Status.CLOSED:
            metrics.CLOSED.inc()
            self.log.info(
                "position closed",
                position_id=p.position_id,
                symbol=p.symbol,
                exit_client_order_id=p.exit.client_order_id if p.exit else None,
                exit_reason=p.exit.reason.value if p.exit else None,
            )
        elif known:
            self.log.info(
                "position changed",
                position_id=p.position_id,
                symbol=p.symbol,
                quantity=p.quantity,
                entry_price=p.entry_price,
                status=p.status.value,
            )
        else:
            self.log.info(
                "position watched",
                position_id=p.position_id,
                symbol=p.symbol,
                quantity=p.quantity,
                entry_price=p.entry_price,
                stop_loss=p.stop_loss_level(),
                take_profit=p.take_profit_level(),
            )

    async def _new_id(
        self, symbol: Symbol, sequence: int | None, at_ms: int, taken: Collection[str] = ()
    ) -> str:
        """`<symbol>-<fill sequence that opened it>`: the same position gets the same id.

        An id is never reused (a closed position keeps its row): when the sequence is above
        every sequence the symbol's rows hold, memory knows the id is new; otherwise the table
        is asked, and a suffix added while the id is taken."""
        base = f"{symbol}-{sequence}" if sequence is not None else f"{symbol}-t{at_ms}"
        floor = self._id_floor.get(symbol)
        new = sequence is not None and (floor is None or sequence > floor)
        candidate, n = base, 1
        while candidate in taken or (not new and await self.store.exists(candidate)):
            n += 1
            candidate = f"{base}-{n}"
        if sequence is not None:
            self._id_floor[symbol] = max(sequence, floor or sequence)
        return candidate

    async def _reload(self, symbols: Collection[Symbol]) -> None:
        """Read the positions of `symbols` back from the table (under their locks)."""
        if not symbols:
            return
        rows = await self.store.live(symbols)
        floors = await self.store.max_sequences()
        for symbol in symbols:
            held = self._by_symbol.pop(symbol, None)
            if held is not None:
                self.positions.pop(held, None)
            if symbol in floors:
                self._id_floor[symbol] = max(floors[symbol], self._id_floor.get(symbol, 0))
        for p in rows:
            self._remember(p)
        self._stale.difference_update(symbols)
        self._gauge_positions()

    async def reconcile(self) -> None:
        """Compare the positions with `GET /portfolio` and adopt what it holds, for every symbol
        whose latest applied update is not newer than the snapshot."""
        http = self.resources.http
        assert http is not None
        book = await PortfolioClient(http).portfolio()
        if book.fills.problems:
            raise RuntimeError(
                "portfolio is not known to hold every fill: " + ", ".join(book.fills.problems)
            )
        snapshot = book.fills.max_sequence
        now = self.clock()
        held = {Symbol(p.symbol): p for p in book.positions}
        for symbol in sorted(set(held) | {p.symbol for p in self.positions.values()}):
            async with self._locks[symbol]:
                last = self._sequences.get(symbol)
                if last is not None and last > snapshot:
                    continue
                position = held.get(symbol)
                quantity = position.quantity if position else ZERO
                average = position.avg_price if position else None
                await self._apply(symbol, quantity, average, snapshot or None, now)
        self.reconciled_ms, self.reconcile_error = now, None
        metrics.RECONCILED.set(now / 1000)

    async def run_reconcile(self, _resources: Resources | None = None) -> None:
        """The reconcile loop: at once, then every `MONITOR_RECONCILE_INTERVAL_MS`."""
        while True:
            try:
                await self.reconcile()
            except (UpstreamError, Refused, RuntimeError) as exc:
                metrics.RECONCILE_FAILURES.inc()
                if self.reconcile_error != str(exc):
                    self.log.warning("positions not compared with the portfolio", error=str(exc))
                self.reconcile_error = str(exc)
            delay_ms = self.settings.reconcile_interval_ms
            if self.reconciled_ms is None:
                delay_ms = min(delay_ms, 250)  # until the first success, try again soon
            await asyncio.sleep(delay_ms / 1000)

    # Ticks ------------------------------------------------------------------------------------

    async def on_tick(self, event: Event[MarketTick]) -> None:
        """Judge the position in the tick's symbol against its stops; exit if one triggers.

        Idempotent by nature (the service reads ticks without processed marks): a tick older
        than the symbol's newest is ignored, and judging the newest again changes nothing (the
        trailing level only ratchets, a trigger leaves the position EXITING).
        """
        tick = event.data
        if tick.bid <= ZERO or tick.ask < tick.bid or tick.last <= ZERO:
            return
        symbol = Symbol(tick.symbol)
        held = self._quotes.get(symbol)
        if held is not None and tick.ts_ms < held[0].ts_ms:
            return
        quote = Quote(symbol, tick.bid, tick.ask, tick.last, tick.volume, tick.ts_ms)
        published_ms = _event_ms(event)
        self._quotes[symbol] = (quote, published_ms)
        if self.live(symbol) is None:
            return
        async with self._locks[symbol]:
            position = self.live(symbol)
            # A tick from before the position opened (a backlog) says nothing about it.
            if position is None or position.status is not Status.OPEN:
                return
            if symbol in self._stale or published_ms < position.opened_ms:
                return
            await self._evaluate(position, quote)

    async def _evaluate(self, position: Tracked, quote: Quote) -> None:
        result = evaluate_exits(
            position.open_position(),
            position.config,
            quote,
            position.trailing,
            now_ms=self.clock(),
        )
        if result.exit is None:
            if result.state != position.trailing:
                updated = replace(position, trailing=result.state)
                # Stored before anything acts on it: a restart resumes this level.
                await self.store.save([updated])
                self._put(updated)
            return
        await self._trigger(position, result)

    async def _trigger(self, position: Tracked, result: StopEvaluation) -> None:
        decision = result.exit
        assert decision is not None
        coid = exit_client_order_id(
            position.position_id, decision.reason, round_=position.exit_round
        )
        attributes = {
            "position_id": position.position_id,
            "symbol": position.symbol,
            "reason": decision.reason.value,
            "trigger_price": str(decision.trigger_price),
            "observed_price": str(decision.observed_price),
            "quantity": str(decision.quantity),
            "side": decision.side.value,
            "client_order_id": coid,
            **_entry_attributes(position),
        }
        with self.tracer.start_as_current_span(
            "stop.trigger",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links_from_traceparent(position.entry_traceparent, {"link.reason": "entry"}),
        ) as span:
            traceparent = current_traceparent()
            exit_ = ExitState(
                reason=decision.reason,
                stage=Stage.EXIT,
                client_order_id=coid,
                trigger_price=decision.trigger_price,
                observed_price=decision.observed_price,
                quantity=decision.quantity,
                started_ms=self.clock(),
            )
            triggered = replace(
                position,
                status=Status.EXITING,
                trailing=result.state,
                exit=exit_,
                trace_id=traceparent.split("-")[1] if traceparent else None,
            )
            announcement = StopTriggered(
                symbol=position.symbol,
                reason=decision.reason,
                trigger_price=decision.trigger_price,
                mark_price=decision.observed_price,
                quantity=decision.quantity,
                position_id=position.position_id,
                client_order_id=coid,
            )
            # The exit's client order id is stored before the order exists: whatever happens
            # next, a restart sends this same id and never a second exit.
            await self.store.save([triggered], outbox=self.outbox, events=[announcement])
            self._put(triggered)
            metrics.TRIGGERS.labels(decision.reason.value).inc()
            self.log.warning("stop triggered", **attributes, entry_price=position.entry_price)
            await self.outbox.publish_pending()
            sent = await self._send(triggered)
            if sent.exit is not None and sent.exit.outcome is not None:
                span.set_attribute("outcome", sent.exit.outcome.value)

    async def _send(self, position: Tracked) -> Tracked:
        """Send the position's exit order (again) and store its outcome (under its lock)."""
        exit_ = position.exit
        assert exit_ is not None
        order = OrderRequest(
            ClientOrderId(exit_.client_order_id),
            position.symbol,
            position.exit_side,
            exit_.quantity,
            OrderType.MARKET,
            None,
            reduce_only=True,
        )
        outcome, detail = await self._place(order)
        updated = replace(position, exit=replace(exit_, outcome=outcome, detail=detail))
        await self.store.save([updated])
        self._put(updated)
        metrics.EXITS.labels(exit_.stage.value, outcome.value).inc()
        log = self.log.info if outcome is Outcome.FILLED else self.log.warning
        log(
            "stop exit sent",
            position_id=position.position_id,
            symbol=position.symbol,
            stage=exit_.stage.value,
            client_order_id=exit_.client_order_id,
            quantity=exit_.quantity,
            outcome=outcome.value,
            detail=detail[:300],
        )
        return updated

    async def _place(self, order: OrderRequest) -> tuple[Outcome, str]:
        """risk-safety's check, then execution's order: what became of it, and why."""
        http = self.resources.http
        assert http is not None
        try:
            verdict = await RiskSafetyClient(http).check(CheckRequest.of(order))
        except (UpstreamError, Refused, ValidationError) as exc:
            return Outcome.UNAVAILABLE, str(exc)
        if not verdict.approved or verdict.approval is None:
            return Outcome.DENIED, f"{verdict.reason}: {verdict.detail}"
        try:
            placed = await ExecutionClient(http).place_order(
                OrderCreate.of(order, approval=verdict.approval)
            )
        except Refused as exc:
            return Outcome.REJECTED, exc.detail
        except UpstreamError as exc:
            # The order may exist: the same client order id is sent again, never a new one.
            return Outcome.UNKNOWN, str(exc)
        return _outcome_of(placed)

    # The escalation and time limits -----------------------------------------------------------

    async def supervise(self, _resources: Resources | None = None) -> None:
        """The loop of `supervise_once`, every `MONITOR_CHECK_INTERVAL_MS`."""
        while True:
            await self.supervise_once()
            await asyncio.sleep(self.settings.check_interval_ms / 1000)

    async def supervise_once(self) -> None:
        """Time limits of open positions; exits under way: resend, wait, escalate or alert."""
        for position_id in list(self.positions):
            position = self.positions.get(position_id)
            if position is None:
                continue
            async with self._locks[position.symbol]:
                position = self.positions.get(position_id)
                if position is None:
                    continue
                if position.status is Status.OPEN and position.config.time_limit_ms:
                    held = self._quotes.get(position.symbol)
                    if held is not None and held[1] >= position.opened_ms:
                        await self._evaluate(position, held[0])
                elif position.status is Status.EXITING:
                    await self._escalate(position)

    async def _escalate(self, position: Tracked) -> None:
        exit_ = position.exit
        assert exit_ is not None
        if exit_.outcome is None or not exit_.outcome.settled:
            # Sent before a crash, or its answer was lost: the same client order id again,
            # which execution answers with the order if it has it.
            position = await self._send(position)
            exit_ = position.exit
            assert exit_ is not None and exit_.outcome is not None
        in_time = self.clock() - exit_.started_ms < self.settings.exit_timeout_ms
        waiting = (Outcome.FILLED, Outcome.WORKING, Outcome.UNKNOWN, Outcome.UNAVAILABLE)
        if in_time and exit_.outcome in waiting:
            # Filled: the portfolio books the fill, and its update closes the position.
            # Otherwise: sent again on the next round, until the time is up.
            return
        # Re-evaluate: the position as the portfolio holds it now.
        held = await self._held(position.symbol)
        if held is not None and (held == ZERO or _flipped(position, held)):
            await self._apply(position.symbol, held, None, None, self.clock())
            return
        if held is None and exit_.outcome is Outcome.FILLED:
            return  # cannot tell whether it closed; ask again on the next round
        quantity = abs(held) if held is not None else exit_.quantity
        if exit_.stage is Stage.EXIT:
            await self._emergency(position, quantity)
        else:
            await self._alert(position, quantity)

    async def _held(self, symbol: Symbol) -> Decimal | None:
        http = self.resources.http
        assert http is not None
        try:
            book = await PortfolioClient(http).portfolio()
        except (UpstreamError, Refused) as exc:
            self.log.warning("portfolio unreachable while re-evaluating an exit", error=str(exc))
            return None
        if book.fills.problems:
            # A portfolio that may lack fills may still show a position the exit closed.
            return None
        return book.quantity_of(symbol)

    async def _emergency(self, position: Tracked, quantity: Decimal) -> None:
        exit_ = position.exit
        assert exit_ is not None
        coid = exit_client_order_id(
            position.position_id, exit_.reason, emergency=True, round_=position.exit_round
        )
        attributes = {
            "position_id": position.position_id,
            "symbol": position.symbol,
            "reason": exit_.reason.value,
            "client_order_id": coid,
            "previous_client_order_id": exit_.client_order_id,
            "previous_outcome": exit_.outcome.value if exit_.outcome else "NONE",
            "quantity": str(quantity),
            **_entry_attributes(position),
        }
        with self.tracer.start_as_current_span(
            "stop.escalate",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links_from_traceparent(position.entry_traceparent, {"link.reason": "entry"}),
        ):
            emergency = replace(
                position,
                exit=replace(
                    exit_,
                    stage=Stage.EMERGENCY,
                    client_order_id=coid,
                    quantity=quantity,
                    started_ms=self.clock(),
                    outcome=None,
                    detail=f"after the exit {exit_.client_order_id}: "
                    f"{exit_.outcome.value if exit_.outcome else 'no answer'} {exit_.detail}",
                ),
            )
            await self.store.save([emergency])
            self._put(emergency)
            metrics.ESCALATIONS.labels(exit_.reason.value).inc()
            self.log.warning("stop exit escalated to an emergency market exit", **attributes)
            await self._send(emergency)

    async def _alert(self, position: Tracked, quantity: Decimal) -> None:
        exit_ = position.exit
        assert exit_ is not None
        detail = (
            f"{exit_.outcome.value if exit_.outcome else 'no answer'} after "
            f"{self.clock() - exit_.started_ms} ms: {exit_.detail}"
        )
        alerted = replace(position, status=Status.ALERTED, exit=replace(exit_, detail=detail))
        alert = StopFailed(
            symbol=position.symbol,
            position_id=position.position_id,
            reason=exit_.reason,
            quantity=quantity,
            client_order_id=exit_.client_order_id,
            detail=detail[:1000],
        )
        await self.store.save([alerted], outbox=self.outbox, events=[alert])
        self._put(alerted)
        metrics.ALERTS.labels(exit_.reason.value).inc()
        self.log.error(
            "stop exit failed; the position is still open",
            position_id=position.position_id,
            symbol=position.symbol,
            reason=exit_.reason.value,
            quantity=quantity,
            client_order_id=exit_.client_order_id,
            detail=detail[:300],
        )
        await self.outbox.publish_pending()

    # Operators --------------------------------------------------------------------------------

    async def set_stops(self, position_id: str, config: ExitConfig) -> Tracked:
        """Replace a position's stops. An ALERTED position is re-armed (OPEN, a new exit
        round with client order ids of its own); the trailing level reached stays."""
        position = self.positions.get(position_id) or await self.store.get(position_id)
        if position is None:
            raise NotFound(position_id)
        async with self._locks[position.symbol]:
            position = self.positions.get(position_id) or await self.store.get(position_id)
            assert position is not None
            if position.status is Status.CLOSED:
                raise NotChangeable(f"position {position_id} is closed")
            if position.status is Status.EXITING:
                raise NotChangeable(f"position {position_id} is being closed by its exit")
            updated = replace(position, config=config)
            if position.status is Status.ALERTED:
                updated = replace(
                    updated, status=Status.OPEN, exit=None, exit_round=position.exit_round + 1
                )
            await self.store.save([updated])
            self._put(updated)
            self.log.info(
                "stops changed",
                position_id=position_id,
                symbol=position.symbol,
                rearmed=position.status is Status.ALERTED,
            )
            return updated

    # Memory -----------------------------------------------------------------------------------

    def _put(self, position: Tracked) -> None:
        self._remember(position)
        self._gauge_positions()

    def _remember(self, position: Tracked) -> None:
        """Hold `position` as written (a closed one is let go)."""
        if position.status is Status.CLOSED:
            self.positions.pop(position.position_id, None)
            if self._by_symbol.get(position.symbol) == position.position_id:
                del self._by_symbol[position.symbol]
        else:
            self.positions[position.position_id] = position
            self._by_symbol[position.symbol] = position.position_id
        if position.sequence is not None:
            last = self._sequences.get(position.symbol, 0)
            self._sequences[position.symbol] = max(last, position.sequence)
        self._gauge_level(position)

    def _gauge_level(self, position: Tracked) -> None:
        trailing = position.trailing
        level = trailing.level if trailing and position.status is not Status.CLOSED else None
        metrics.TRAILING_LEVEL.labels(position.symbol).set(float(level or 0))

    def _gauge_positions(self) -> None:
        for status in (Status.OPEN, Status.EXITING, Status.ALERTED):
            count = sum(1 for p in self.positions.values() if p.status is status)
            metrics.POSITIONS.labels(status.value).set(count)


def _outcome_of(placed: OrderPublic) -> tuple[Outcome, str]:
    status = placed.status
    detail = f"{status}: {placed.filled_quantity} filled at {placed.avg_fill_price} {placed.reason}"
    if status == OrderStatus.FILLED:
        return Outcome.FILLED, detail
    if status == OrderStatus.REJECTED:
        return Outcome.REJECTED, detail
    if status in (OrderStatus.CANCELED, OrderStatus.EXPIRED):
        return (Outcome.PARTIAL if placed.filled_quantity > ZERO else Outcome.REJECTED), detail
    return Outcome.WORKING, detail


def _entry_attributes(position: Tracked) -> dict[str, str]:
    """`entry.client_order_id`: the order that opened the position, so a search (and the
    order page) of the entry finds the exit that closed it."""
    if not position.entry_client_order_id:
        return {}
    return {"entry.client_order_id": position.entry_client_order_id}


def _flipped(position: Tracked, quantity: Decimal) -> bool:
    return quantity != ZERO and (quantity > ZERO) != (position.quantity > ZERO)


def _event_ms(event: Event[Any]) -> int:
    return int(event.time.timestamp() * 1000)
