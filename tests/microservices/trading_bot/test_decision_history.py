"""Decisions recorded before `reason` and `detail` were columns keep them across the migration."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa

from backend.infra.db import DatabaseSettings, create_engine, downgrade, migrate
from backend.infra.db.models import BotDecision

BEFORE = "0003_outbox"
# bot_decisions as revision 0003 left it: the reason and detail inside `features`.
OLD_COLUMNS = ("symbol", "action", "confidence", "model_name", "model_version", "features")


async def test_reason_and_detail_move_from_features_to_columns_and_back(database_url: str) -> None:
    columns = BotDecision.__table__.c
    old_table = sa.table(
        "bot_decisions",
        *(sa.column(n, columns[n].type) for n in (*OLD_COLUMNS, "decided_at")),
    )
    long_reason = "R" * 80
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        await migrate(engine, BEFORE)
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(old_table),
                [
                    {
                        "symbol": symbol,
                        "action": "SKIPPED",
                        "confidence": Decimal("0.5"),
                        "model_name": "ai-engine",
                        "model_version": "m-1",
                        "features": features,
                        "decided_at": datetime.now(UTC),
                    }
                    for symbol, features in [
                        ("AAAUSDT", {"reason": "LOW_CONFIDENCE", "detail": "0.5100", "side": None}),
                        ("BBBUSDT", {"reason": long_reason}),
                        ("CCCUSDT", None),
                    ]
                ],
            )

        await migrate(engine)
        query = sa.select(columns.symbol, columns.reason, columns.detail).order_by(columns.id)
        async with engine.connect() as conn:
            rows = [tuple(r) for r in await conn.execute(query)]
        assert rows == [
            ("AAAUSDT", "LOW_CONFIDENCE", "0.5100"),
            ("BBBUSDT", "R" * 64, ""),
            ("CCCUSDT", "", ""),
        ]
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(BotDecision.__table__)
                .where(columns.symbol == "CCCUSDT")
                .values(reason="STALE_TICK", detail="tick is 99 ms old")
            )

        assert await downgrade(engine, BEFORE) == BEFORE
        async with engine.connect() as conn:
            features = [r.features for r in await conn.execute(sa.select(old_table.c.features))]
        assert features[0] == {"reason": "LOW_CONFIDENCE", "detail": "0.5100", "side": None}
        assert features[2] == {"reason": "STALE_TICK", "detail": "tick is 99 ms old"}
    finally:
        await engine.dispose()
