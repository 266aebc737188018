"""What a run of a job ends with, whichever mode ran it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunReport:
    job_id: int
    state: str  # completed | stopped | cancelled | submitted (batch mode: batches still out)
    stop_reason: str | None
