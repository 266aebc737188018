"""What a run of a job ends with, whichever mode ran it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunReport:
    job_id: int
    state: str  # completed | stopped | cancelled | submitted (batch mode: batches still out)
    stop_reason: str | None


@dataclass(frozen=True, slots=True)
class RunGauges:
    """What a concurrent run is doing right now, read (never changed) by its metrics."""

    in_flight: int  # requests sent and not yet answered
    requests_per_minute: float | None  # the limits in force (configured or learned, shared)
    tokens_per_minute: float | None
    learned_requests: int | None  # what the server's headers reported
    learned_tokens: int | None
    pauses: int  # every-worker pauses after a 429 or an exhausted limit, so far
    last_commit_s: float  # how long the writer's last ledger commit took
