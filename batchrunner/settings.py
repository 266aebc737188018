"""How a job runs: set on `submit`, stored with the job, and overridable on `run`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from yarl import URL

from batchrunner.dialects.openai import BATCH_MAX_REQUESTS
from batchrunner.network import SECRET_NAME

PAIRS = ("query", "price_as")  # settings stored as lists of pairs (JSON has no tuples)


# A job option beside the stored settings: the concurrency its latest concurrent run sends at
# (a run's --concurrency is that run's), by which `status` bounds what is in flight.
RUN_CONCURRENCY = "run_concurrency"


@dataclass(frozen=True)
class RunSettings:
    concurrency: int = 64
    rpm: float | None = None
    tpm: float | None = None
    max_attempts: int = 5
    retry_invalid: int = 0  # asks again after an invalid structured answer (each was billed)
    timeout: float = 600.0  # seconds per request, as the openai SDK's default
    lease_s: float = 60.0  # a worker silent this long is dead: its items go to the others
    max_retry_wait: float = 60.0  # a longer Retry-After defers the item instead of a worker
    unreachable_wait: float = 120.0  # seconds an unreachable endpoint is waited for (probed)
    db_wait: float = 120.0  # seconds a ledger database that went away is waited for (retried)
    base_url: str | None = None  # None: the provider's env variable, else its own API
    provider: str = "openai"  # openai (and every server that copies it) | azure
    azure_endpoint: str | None = None  # https://RESOURCE.openai.azure.com (Azure OpenAI)
    api_version: str | None = None  # Azure's api-version, or "v1" for its v1 API
    budget: float | None = None  # USD over the job's whole life
    # Send each prefix group so the provider's prompt cache can serve it: the group's first
    # request alone, prompt_cache_key spread at most cache_key_rpm requests/min per key.
    cache_aware: bool = True
    cache_key_rpm: float = 15.0
    batch_max_requests: int = BATCH_MAX_REQUESTS  # per Batch API input file
    batch_token_limit: int | None = None  # the account's enqueued prompt tokens per model
    batch_hold_s: float = 300.0  # wait after a batch hit the token cap with nothing to wait for
    finish: str = "batch"  # what runs the leftovers of an expired batch: batch | concurrent
    keep_files: bool = False  # batch mode: leave a batch's files on the server once it ended
    prices: dict[str, dict[str, float]] | None = None  # a --prices file's table, kept with the job
    price_as: tuple[tuple[str, str], ...] = ()  # (name or "*", the known model it is priced as)
    # Whether the hosted APIs' prices apply: None until submit decides by the base URL (a local
    # or self-hosted server's models are its owner's); --hosted-prices / --local-prices say.
    hosted_prices: bool | None = None
    organization: str | None = None  # the provider's organization / project to bill (else the
    project: str | None = None  # provider's environment variables)
    query: tuple[tuple[str, str], ...] = ()  # parameters every request's URL carries
    # Given to each process (flags or environment), never kept with the job: they may hold
    # secrets (a proxy's password, a gateway's key in a header).
    proxy: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def merged(self, overrides: dict[str, Any]) -> RunSettings:
        """These settings with every override that is not None."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known and v is not None})

    def stored(self) -> dict[str, Any]:
        """What is saved with the job: never a key, no proxy, no header's value and no secret
        query parameter (only their names, to say what a resumed run lacks), and a URL with
        neither its password nor a secret query parameter."""
        data = asdict(self)
        del data["proxy"], data["headers"]
        withheld = [name for name, _ in self.headers]
        data["query"] = [pair for pair in self.query if not SECRET_NAME.search(pair[0])]
        withheld += [name for name, _ in self.query if SECRET_NAME.search(name)]
        if self.base_url:
            url = URL(self.base_url).with_password(None)
            secret = [name for name in url.query if SECRET_NAME.search(name)]
            data["base_url"] = str(url.without_query_params(*secret) if secret else url)
            withheld += secret
        data["withheld"] = withheld  # given to each run anew: `run` says when it lacks them
        return data

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> RunSettings:
        pairs = {name: tuple(tuple(pair) for pair in data.get(name) or ()) for name in PAIRS}
        known = {**data, **pairs}
        return cls().merged(known)
