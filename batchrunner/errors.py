"""The exceptions batchrunner raises on purpose, in one tree.

    BatchrunnerError              anything the CLI turns into a clear message and an exit code
    ├── JobFileError              the job file is unreadable or invalid (exit 2); carries every
    │                             problem found, each naming file:line
    ├── UsageError                bad options, a job or a ledger that does not exist, a
    │                             ledger of a newer batchrunner, no database driver (exit 2)
    ├── JobBusyError              another live run already works on this job (exit 2)
    ├── LedgerError               the ledger could not be read or written (disk full, locked);
    │   │                         the job stays resumable, or (refused before `submit`
    │   │                         recorded it) was not recorded (exit 3)
    │   └── LedgerUnavailable     its database is away (connection lost, server restarting,
    │                             locked past the busy timeout): a run waits for it first
    ├── BackendError              a Files/Batch API call failed; `kind` (an ErrorKind) says
    │                             what it means, and the batch runner decides from the rule
    │                             table; one that reaches the CLI leaves the job resumable (exit 3)
    └── JobStopped                the run stopped early and the job is resumable (exit 3):
                                  interrupted, or the API refused the whole job (quota, auth)

Nothing else is caught and reworded: a traceback means a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchrunner.failures import ErrorKind


class BatchrunnerError(Exception):
    """Base of every deliberate error; `exit_code` is what the CLI returns."""

    exit_code = 2


def describe_value(value: object) -> str:
    """How a problem message names a JSON value it did not expect: "got an empty array"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    return "an object"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one line of a job file (or one row of a table: `unit` "row")."""

    path: str
    line: int
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        if not self.line:
            where = self.path
        elif self.unit == "line":
            where = f"{self.path}:{self.line}"
        else:
            where = f"{self.path} {self.unit} {self.line}"
        return f"{where}: {self.message}"


class JobFileError(BatchrunnerError):
    """The job file cannot be recorded; nothing was written to the ledger."""

    def __init__(self, problems: list[Problem], more: int = 0) -> None:
        self.problems = problems
        self.more = more
        lines = [str(p) for p in problems]
        if more:
            lines.append(f"... and {more} more problems")
        super().__init__("\n".join(lines))


class UsageError(BatchrunnerError):
    """Options that do not make sense together, or a job reference that matches nothing."""


class JobBusyError(BatchrunnerError):
    """A second process tried to run a job that a live process is already running."""


class LedgerError(BatchrunnerError):
    """The ledger refused a read or a write; what was committed before is intact. `problem`
    says what and where; the message adds what to do: resume the job, or, when nothing was
    `recorded` (a submit refused before its job was), submit it again."""

    exit_code = 3

    def __init__(self, problem: str, *, recorded: bool = True) -> None:
        self.problem = problem
        self.recorded = recorded
        super().__init__(self._said())

    def _said(self) -> str:
        advice = (
            "Nothing already recorded is lost; fix the cause and resume with `batchrunner run`."
            if self.recorded
            else "No job was recorded; fix the cause and submit it again."
        )
        return f"{self.problem}. {advice}"


def ledger_refusal(doing: str, where: str, reason: str) -> str:
    """The problem a LedgerError names: what was refused, where (no password), why."""
    return f"could not {doing} the ledger at {where}: {reason}"


class LedgerUnavailable(LedgerError):
    """The ledger's database is away rather than refusing: worth waiting for (see
    ledger/outages.py); raised as it stands once the run has waited `--db-wait`."""

    def __init__(self, doing: str, where: str, reason: str, *, recorded: bool = True) -> None:
        super().__init__(ledger_refusal(doing, where, reason), recorded=recorded)
        self.doing, self.where, self.reason = doing, where, reason

    def waited(self, seconds: float, until: str = "--db-wait") -> None:
        """Say how long the run waited for the database, and what ended the wait."""
        reason = f"{self.reason}; waited {seconds:.0f}s for it ({until})"
        self.problem = ledger_refusal(self.doing, self.where, reason)
        self.args = (self._said(),)


class BackendError(BatchrunnerError):
    """A Files/Batch API call that failed: refused by the API (with its HTTP status) or never
    answered (no status)."""

    exit_code = 3

    def __init__(
        self, kind: ErrorKind, message: str, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.status = status


class JobStopped(BatchrunnerError):
    """The run ended before every item was finished, and `batchrunner run` can resume it."""

    exit_code = 3
