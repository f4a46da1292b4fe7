"""The roll-ups (`_rollup.Rollup`) in a child process, off the store's writer thread.

Rolling a trace up costs about 10 µs a span of Python, as much as writing it; the writer is
one thread and the machine has few cores, so `RollupProcess` moves that work into a child: the
writer sends the records it wrote, cut to what the roll-ups read (`_rollup.slim`), in one
numbered batch per write (one `marshal` blob), and writes the rows the child answers (a few
hundred a second) in a later transaction, with the watermark.

Watermark: the child answers (the last batch it took, its rows, the earliest start among the
spans it holds not rolled up). Batches sent after that one are not in its answer yet, so the
watermark is the lower of the child's and the earliest start among those batches: spans that
start before it are in the rows written.

A child that dies (`RollupDied`) loses what it held: the store rolls up again from the watermark
in the file (`SqliteSpanStore._reroll`, as after a restart) and starts another child.
`LocalRollup` is the same interface in the writer's thread (no child process, or none can start).
"""

from __future__ import annotations

import gc
import logging
import marshal
import multiprocessing
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from ._decode import _exit_with
from ._rollup import NO_WATERMARK, PlainRow, Rollup, slim

__all__ = ["LocalRollup", "RollupDied", "RollupProcess"]

log = logging.getLogger(__name__)

_ANSWER_TIMEOUT_S = 300.0
"""How long a forced roll-up may take in the child before it counts as dead."""


_MAX_UNANSWERED = 48
"""Batches the child may be behind before the writer waits."""

_MAX_UNANSWERED_SPANS = 200_000
"""Spans the child may be behind before the writer waits (what 48 batches of 4,096 were)."""


class RollupDied(RuntimeError):
    """The roll-up child process is gone, with what it held."""


class LocalRollup:
    """The roll-ups in the caller's thread."""

    pid: int | None = None

    def __init__(self, settle_s: float, interval_s: float = 1.0) -> None:
        self._rollup = Rollup(settle_s, interval_s)

    def submit(self, records: Sequence[Any], now: float, *, force: bool) -> None:
        if records:
            self._rollup.add(records, now)
        self._rollup.settle(now, force=force)

    def collect(self, *, wait: bool) -> tuple[list[PlainRow], int]:
        """The rows rolled up since the last call and the watermark."""
        return self._rollup.take(), self._rollup.watermark_ns

    def close(self) -> None:
        pass


def _serve(conn: Connection, parent_pid: int, settle_s: float, interval_s: float) -> None:
    """The child: roll up what comes in, answer after each batch (or run of batches)."""
    _exit_with(parent_pid)
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def receive() -> None:
        # A thread of its own, so the writer never waits on a child busy rolling up.
        try:
            while True:
                inbox.put(marshal.loads(conn.recv_bytes()))
        except (EOFError, OSError):
            inbox.put(None)

    threading.Thread(target=receive, name="rollup-receive", daemon=True).start()
    sys.setswitchinterval(0.001)  # the receiving thread drains the pipe without long waits
    rollup = Rollup(settle_s, interval_s)
    # Most of what the child allocates is tuples of plain values, freed by reference counts:
    # collections every 700 allocations cost it a fifth of its CPU (measured: 10 -> 8 µs a span).
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    # Behind the writer and the decoder for a core: the roll-ups can wait (the writer waits
    # for them only when they are `max_unanswered` batches behind), a full queue drops spans.
    os.nice(5)
    while True:
        message = inbox.get()
        if message is None:
            return
        seq, records, now, force = message
        if records:
            rollup.add(records, now)
        # Batches that queued up meanwhile are taken in one go (one settle, one answer).
        while not force and not inbox.empty():
            message = inbox.get()
            if message is None:
                return
            seq, records, now, force = message
            if records:
                rollup.add(records, now)
        rollup.settle(now, force=force)
        conn.send((seq, rollup.take(), rollup.watermark_ns))


class RollupProcess:
    """The roll-ups in a child process (forkserver: the receivers' threads must not be copied
    mid-flight). Raises `RollupDied` when the child is gone."""

    def __init__(self, settle_s: float, interval_s: float = 1.0) -> None:
        ctx = multiprocessing.get_context("forkserver")
        self._conn, theirs = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve,
            args=(theirs, os.getpid(), settle_s, interval_s),
            name="span-store-rollup",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        self.pid = self._process.pid
        self._seq = 0
        self._sent: deque[tuple[int, int, int]] = deque()
        """(seq, earliest start, spans) of the batches sent and not answered yet."""
        self._unanswered_spans = 0
        self._watermark = NO_WATERMARK
        self._rows: list[PlainRow] = []
        self.max_unanswered = _MAX_UNANSWERED
        self.max_unanswered_spans = _MAX_UNANSWERED_SPANS
        # A thread of its own sends, so the writer never waits on a full pipe (a batch is
        # larger than the socket's buffer, and the child's receiving thread shares its GIL).
        self._outbox: queue.SimpleQueue[tuple[int, Sequence[Any], float, bool] | None] = (
            queue.SimpleQueue()
        )
        self._send_error: BaseException | None = None
        self._sender = threading.Thread(target=self._send, name="rollup-send", daemon=True)
        self._sender.start()

    def _send(self) -> None:
        conn = self._conn
        while True:
            item = self._outbox.get()
            if item is None:
                return
            seq, records, now, force = item
            try:
                # One `marshal` blob a batch: cheaper both sides than pickled tuples.
                conn.send_bytes(marshal.dumps((seq, slim(records), now, force)))
            except (OSError, ValueError) as exc:  # the child is gone; the writer is told
                self._send_error = exc
                return

    def submit(self, records: Sequence[Any], now: float, *, force: bool) -> None:
        """Send a batch (records written; an empty one when the child holds something, so it
        settles on time)."""
        if not (records or force or self._sent or self._watermark < NO_WATERMARK):
            return
        self._seq += 1
        low = min((r[6] for r in records), default=NO_WATERMARK)
        self._sent.append((self._seq, low, len(records)))
        self._unanswered_spans += len(records)
        if self._send_error is not None:
            raise RollupDied(f"the roll-up process is gone: {self._send_error}")
        self._outbox.put((self._seq, records, now, force))

    def collect(self, *, wait: bool) -> tuple[list[PlainRow], int]:
        """The rows answered since the last call and the watermark; with `wait`, after the
        answer to the last batch sent. A child more than `max_unanswered` batches or
        `max_unanswered_spans` spans behind is waited for too (until it has answered), so what
        it holds stays bounded."""
        conn = self._conn
        waited = 0.0
        try:
            while True:
                must = bool(self._sent) and (
                    wait
                    or len(self._sent) > self.max_unanswered
                    or self._unanswered_spans > self.max_unanswered_spans
                )
                if conn.poll(1.0 if must else 0):
                    seq, rows, watermark = conn.recv()
                    self._rows.extend(rows)
                    self._watermark = watermark
                    while self._sent and self._sent[0][0] <= seq:
                        self._unanswered_spans -= self._sent.popleft()[2]
                    continue
                if not must:
                    break
                waited += 1.0
                if (
                    not self._process.is_alive()
                    or self._send_error is not None
                    or waited > _ANSWER_TIMEOUT_S
                ):
                    raise RollupDied("the roll-up process did not answer")
        except (EOFError, OSError) as exc:
            raise RollupDied(f"the roll-up process is gone: {exc}") from exc
        rows, self._rows = self._rows, []
        low = min((start for _, start, _ in self._sent), default=NO_WATERMARK)
        return rows, min(self._watermark, low)

    def close(self) -> None:
        self._outbox.put(None)
        self._sender.join(5.0)
        self._conn.close()
        self._process.join(5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
