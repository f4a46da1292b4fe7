"""Transactional outbox: events committed with the change they announce, published after.

    outbox = Outbox(sessions, publisher, source="execution")
    async with session_scope(sessions) as session:
        session.add(order_row)
        outbox.add(session, OrderFilled(...))         # same transaction as the order
    await outbox.publish_pending()                     # after the commit; never raises
    service.background("outbox-relay", outbox.run_relay)   # retries, and publishes on start
    hold = outbox.hold()                               # before a commit a request answers:
    ...                                                # the relay publishes it once
    hold.release()                                     # the answer is sent

See docs/EVENTBUS.md ("Transactional outbox") for the guarantee.
"""

from __future__ import annotations

from ._outbox import Outbox, ReplyHold
from ._settings import OutboxConfigError, OutboxSettings

__all__ = ["Outbox", "OutboxConfigError", "OutboxSettings", "ReplyHold"]
