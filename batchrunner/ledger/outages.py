"""Riding out a database that went away: a PostgreSQL server restarting or failing over (the
connection closed, refused while it starts, an administrator's shutdown), or a SQLite file that
another process keeps locked past the busy timeout.

Such a refusal is a `LedgerUnavailable`. The ledger's methods that a run calls while it works
repeat their transaction, with backoff, until the database answers or it has been away for
`wait_s` seconds (`--db-wait`); then the refusal stands and the run stops, resumably. One clock
per ledger: every thread waits for the same outage, and gives up at the same time.

A repeated transaction may follow one whose COMMIT was sent but never confirmed (the connection
died on the way back), so each repeat must be safe whether that commit landed or not: the
transaction is told it is a repeat (`again`) when it has to look first (a claim, an attempt row).
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from sqlalchemy.exc import DatabaseError

from batchrunner.errors import LedgerUnavailable
from batchrunner.ledger.records import utcnow
from batchrunner.logs import EVENTS

if TYPE_CHECKING:
    from batchrunner.ledger.records import QueriesMixin

T = TypeVar("T")
P = ParamSpec("P")
Q = TypeVar("Q", bound="QueriesMixin")

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0  # a restarted server is used again within this of it accepting connections
# SQLSTATEs of a server that is going away or not yet back: connection exceptions (class 08),
# admin_shutdown, crash_shutdown, cannot_connect_now (starting up, shutting down, recovering).
AWAY_SQLSTATES = ("57P01", "57P02", "57P03")


def database_away(exc: DatabaseError) -> bool:
    """Whether the database is away rather than refusing: worth waiting for."""
    if exc.connection_invalidated:  # SQLAlchemy saw the connection die (and renews its pool)
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return bool(sqlstate.startswith("08") or sqlstate in AWAY_SQLSTATES)
    if type(exc.orig).__module__.startswith("psycopg"):
        # libpq's own failures carry no SQLSTATE: refused, closed, timed out, lost.
        return type(exc.orig).__name__ == "OperationalError"
    return "database is locked" in str(exc.orig)  # SQLite, past the busy timeout


class Outage:
    """How long the ledger's database has been away, shared by the threads of one ledger."""

    def __init__(self, describe_url: str) -> None:
        self.wait_s = 0.0  # set for a run from its settings (`--db-wait`); 0: never wait
        self.back_at: datetime | None = None  # when the database last came back (naive UTC)
        self._url = describe_url
        self._since: float | None = None  # monotonic time of the first refusal, while away
        self._lock = threading.Lock()
        self._abandoned = threading.Event()  # set: wait no more (see `abandon`)

    def outlast(self, work: Callable[[bool], T], read: bool = False) -> T:
        """`work(again)` until it gets through; `again` says an earlier try failed (its commit
        may have landed). Raises the last `LedgerUnavailable` once the outage is `wait_s` old.

        A `read` that gets through ends no outage: SQLite serves readers while another process
        holds the write lock, and it is the writes that must wait."""
        again = False
        tries = 0
        while True:
            try:
                result = work(again)
            except LedgerUnavailable as exc:
                away_s = self._refused(exc)
                if self._abandoned.is_set():
                    exc.waited(away_s, "then a second Ctrl-C")
                    raise
                if away_s >= self.wait_s:
                    if self.wait_s:
                        exc.waited(away_s)
                    raise
                tries += 1
                delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2**tries) * random.uniform(0.5, 1.0)
                self._abandoned.wait(min(delay, self.wait_s - away_s))
                again = True
            else:
                if self._since is not None and not read:
                    self._answered()
                return result

    def abandon(self) -> None:
        """Wait no more: the calls waiting now, and any later refusal, raise at once."""
        self._abandoned.set()

    def _refused(self, exc: LedgerUnavailable) -> float:
        """Seconds the database has been away; the first refusal of an outage says so."""
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = now
                if self.wait_s:
                    EVENTS.warning(
                        "the ledger at %s is unavailable (%s); waiting up to %.0fs for it "
                        "(--db-wait)",
                        self._url,
                        exc.reason,
                        self.wait_s,
                    )
            return now - self._since

    def _answered(self) -> None:
        with self._lock:
            if self._since is None:
                return
            away_s, self._since = time.monotonic() - self._since, None
            self.back_at = utcnow()
        EVENTS.warning("the ledger answers again after %.1fs: going on", away_s)


def outlasting(method: Callable[Concatenate[Q, P], T]) -> Callable[Concatenate[Q, P], T]:
    """A ledger method that writes, in a transaction safe to repeat as it is, waiting out
    outages."""

    @functools.wraps(method)
    def waiting(self: Q, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._outage.outlast(lambda _again: method(self, *args, **kwargs))

    return waiting


def outlasting_read(method: Callable[Concatenate[Q, P], T]) -> Callable[Concatenate[Q, P], T]:
    """A ledger method that only reads, waiting out outages."""

    @functools.wraps(method)
    def waiting(self: Q, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._outage.outlast(lambda _again: method(self, *args, **kwargs), read=True)

    return waiting
