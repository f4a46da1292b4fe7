"""The venue fill sequence has no holes, even after a transaction that wrote fills failed.

portfolio-intelligence treats a missing sequence as a lost fill (its books are incomplete and
risk-safety denies STALE_PORTFOLIO), so a hole that no fill will ever fill would stop trading
for good. The failure here is real: a database trigger makes the insert of a fill row fail.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.microservices.execution.conftest import running
from tests.microservices.execution.test_execution import order, send_tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until

POSTGRES_FAULT = (
    "CREATE FUNCTION qt_fail_fill() RETURNS trigger AS $$ BEGIN "
    "RAISE EXCEPTION 'injected fill failure'; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER qt_fail_fill AFTER INSERT ON fills "
    "FOR EACH ROW EXECUTE FUNCTION qt_fail_fill()",
)
POSTGRES_CLEAR = ("DROP TRIGGER qt_fail_fill ON fills", "DROP FUNCTION qt_fail_fill()")
SQLITE_FAULT = (
    "CREATE TRIGGER qt_fail_fill AFTER INSERT ON fills "
    "BEGIN SELECT RAISE(ABORT, 'injected fill failure'); END",
)
SQLITE_CLEAR = ("DROP TRIGGER qt_fail_fill",)


def execute(url: str, statements: tuple[str, ...]) -> None:
    async def run() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_a_failed_fill_write_leaves_no_hole_in_the_fill_sequence(
    harness_database: ServiceHarness,
) -> None:
    url = harness_database.database_url
    postgres = url.startswith("postgresql")
    with running(harness_database) as client:
        send_tick(harness_database, client)
        first = client.post("/orders", json=order("gap-1", quantity="1"))
        assert first.status_code == 201, first.text

        execute(url, POSTGRES_FAULT if postgres else SQLITE_FAULT)
        failed = client.post("/orders", json=order("gap-2", quantity="1"))
        assert failed.status_code == 503, failed.text
        execute(url, POSTGRES_CLEAR if postgres else SQLITE_CLEAR)

        third = client.post("/orders", json=order("gap-3", side="SELL", quantity="1"))
        assert third.status_code == 201, third.text
        sequences = [f["sequence"] for o in (first, third) for f in o.json()["fills"]]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), sequences

        published = wait_until(
            lambda: len(f := harness_database.published("order.filled")) == len(sequences) and f,
            what="the order.filled events of the two written orders",
        )
        assert [e["sequence"] for e in published] == sequences
        # The venue was rebuilt from the database: the failed order never happened there.
        assert client.get("/orders/gap-2").status_code == 404
