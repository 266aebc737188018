"""Why a job stopped, and what to do next: the one table from a run's stop reason to the
user's next step, read by `status` (its text and --json).

A stop reason is what a runner ends with (RunReport.stop_reason), kept with the job until its
next run starts (jobs.stop_reason): "KIND: message" for an answer or a call that stops the job
(failures.RULES' stops_job: auth, permission, quota, not_found), "budget: ...", "unreachable:
..." (the circuit breaker), "interrupted" (Ctrl-C), "terminated" (SIGTERM), "batch refused by
the API: ...". Its cause is the part before the first colon; a cause this table does not know
(a new one) still gets the step every stopped job has: run it again.
"""

from __future__ import annotations

import math
from typing import Any

API_AWAY = "wait until the API answers again (the reason names the call), then {run}"
# cause -> what to do, then the command; {run} is `batchrunner run N`, {key} the key's variable.
NEXT_STEPS: dict[str, str] = {
    "auth": "set a valid {key}, then {run}",
    "proxy": "give the proxy its credentials (https://USER:PASSWORD@HOST in --proxy or "
    "HTTPS_PROXY), then {run}",
    "permission": "check what the key may use (its project, organization, region), then {run}",
    "quota": "add credit (or raise the account's limit), then {run}",
    "budget": "raise it: {run} --budget {budget}",
    "interrupted": "{run}",
    "terminated": "{run}",
    "unreachable": "check the endpoint (--base-url) and the proxy, then {run}",
    # a 404 to a Files/Batch API call (a 404 to a request fails only its model's items)
    "not_found": "the server answered 404 to the Batch API call the reason names: check "
    "--base-url (a local server may have no Batch API: submit the file with --mode "
    "concurrent), then {run}",
    # Files/Batch API calls that kept failing (or a run in one pass whose call failed)
    "server_error": API_AWAY,
    "connection": API_AWAY,
    "timeout": API_AWAY,
    "batch refused by the API": "fix what the API refused (the reason says), then {run}",
}
# Failed items whose retry cannot help before something else changes.
FIX_FIRST: dict[str, str] = {
    "model_not_found": "serve the missing models (or fix their names in a new job: "
    "batchrunner export errors)",
    "not_found": "check --base-url (the server has no such endpoint)",
}
DIED = "its run ended without saying why (killed, or the machine went down)"


def stop_cause(reason: str | None) -> str | None:
    """What stopped the job, as NEXT_STEPS names it: the reason's part before the colon."""
    if not reason:
        return None
    cause = reason.split(":", 1)[0].strip()
    if cause == "auth" and "proxy" in reason.lower():
        return "proxy"  # a 407: the proxy's credentials, not the API key
    return cause


def next_step(job: dict[str, Any]) -> str | None:
    """The command (and what to do before it) that takes the job on from where it stands, from
    its `status --json` record; None while it runs, or when nothing is left to do."""
    run = f"batchrunner run {job['id']}"
    counts = job["counts"]
    if job["state"] in ("running", "cancelled"):
        return None
    cause = stop_cause(job.get("stop_reason"))
    if cause is not None:
        template = NEXT_STEPS.get(cause, "{run}")
        key = _key_variable(job["options"]) if cause == "auth" else ""
        return template.format(run=run, key=key, budget=_raised_budget(job))
    if counts["pending"] or counts["running"]:
        return f"follow its batches: {run} --wait" if _batches_out(job) else run
    if counts["failed"]:
        by_kind = job["failures_by_kind"]
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(by_kind.items()))
        retry = f"{run} --retry-failed (failed: {kinds}; add --kind KIND to retry only those)"
        first = [FIX_FIRST[kind] for kind in sorted(by_kind) if kind in FIX_FIRST]
        return f"{'; '.join(first)}, then {retry}" if first else retry
    return None


def results_step(job: dict[str, Any]) -> str | None:
    """For the summary `submit` and `run` end with, once the job has ended (completed or
    cancelled): where its answers and this summary are; None while it has work left (its
    next_step says what to do)."""
    if job["state"] not in ("completed", "cancelled"):
        return None
    return (
        f"results: batchrunner export results --job {job['id']} -o results.jsonl "
        f"(this summary again: batchrunner status {job['id']})"
    )


def stopped_story(job: dict[str, Any]) -> str | None:
    """Why a stopped job stopped, and when, for the text view; None for one that did not."""
    if job["state"] != "stopped":
        return None
    reason = job.get("stop_reason")
    if reason:
        return f"{reason} (at {job['stopped_at']})" if job.get("stopped_at") else reason
    return "its batches are at the API, nothing runs here" if _batches_out(job) else DIED


def _batches_out(job: dict[str, Any]) -> bool:
    """Whether the job has batches the API holds (uploaded or submitted, not yet settled)."""
    return any(b["state"] in ("uploaded", "submitted") for b in job.get("batches") or ())


def _key_variable(options: dict[str, Any]) -> str:
    """The environment variable the job's provider takes its key from."""
    from batchrunner.providers import provider_for
    from batchrunner.settings import RunSettings

    return provider_for(RunSettings.from_stored(options)).api_key_env


def _raised_budget(job: dict[str, Any]) -> str:
    """A budget to suggest, rounded up to a cent: twice the one that stopped the job, or the
    job's estimate and a quarter more (answers may run longer than estimated), if larger."""
    budget = job.get("budget_usd") or 0.0
    estimate = job.get("estimate_usd") or 0.0
    target = max(budget * 2, estimate * 1.25)
    if target <= 0:
        return "USD"
    return f"{math.ceil(target * 100) / 100:.2f}"
