"""Who a job talks to: a provider's dialect, its two backends, where it lives and which key
it takes. Everything that picks a provider goes through `provider_for`.

There is one provider, OpenAI (and every OpenAI-compatible server: vLLM, Ollama, proxies).
Another one is a dialect module, its backends, and an entry in PROVIDERS.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchrunner.dialects import Dialect
from batchrunner.dialects import openai as openai_dialect
from batchrunner.errors import UsageError
from batchrunner.network import Network, proxy_for, split_query
from batchrunner.redact import treat_as_secret
from batchrunner.settings import RunSettings

if TYPE_CHECKING:
    from batchrunner.backends.base import BatchBackend, RequestBackend


@dataclass(frozen=True)
class Endpoint:
    """Where one job's requests go, and what each carries: the same in both modes."""

    base_url: str  # without its query string (that is `network.query`)
    api_key: str | None
    network: Network


@dataclass(frozen=True)
class Provider:
    name: str
    dialect: Dialect
    default_base_url: str
    base_url_env: str
    api_key_env: str
    # (header, environment variable, setting): who is billed, from --organization / --project,
    # else the environment; both modes send the same
    identity: tuple[tuple[str, str, str], ...]
    # (endpoint, settings) -> a backend; imported when called: the SDK and pyreqwest are a
    # large share of start-up that `status` and `submit --detach` do not need
    request_backend: Callable[[Endpoint, RunSettings], RequestBackend]
    batch_backend: Callable[[Endpoint, RunSettings], BatchBackend]

    def base_url(self, settings: RunSettings) -> str:
        """--base-url, else the provider's environment variable, else its own API."""
        chosen = settings.base_url or os.environ.get(self.base_url_env) or self.default_base_url
        return chosen.rstrip("/")

    def api_key(self, settings: RunSettings) -> str | None:
        """The key from the environment; required only by the provider's own API (a local
        server or a proxy may take none)."""
        key = os.environ.get(self.api_key_env) or None
        if key is None and self.base_url(settings) == self.default_base_url:
            raise UsageError(
                f"{self.api_key_env} is not set. Set it, point --base-url / "
                f"{self.base_url_env} at another OpenAI-compatible server, or rehearse with "
                "`submit --simulate`."
            )
        return key

    def endpoint(self, settings: RunSettings, api_key: str | None) -> Endpoint:
        """The job's endpoint: its base URL, the proxy on the way to it (network.py), the
        identity headers (flags, else the environment) and the extra headers and query. The
        secrets among them are masked wherever they could show from now on."""
        base_url, query = split_query(self.base_url(settings))
        headers = {}
        for header, variable, setting in self.identity:
            chosen = getattr(settings, setting) or os.environ.get(variable)
            if chosen:
                headers[header] = chosen
        headers.update(settings.headers)
        proxy = proxy_for(base_url, settings.proxy)
        network = Network(proxy=proxy, headers=headers, query=query + settings.query)
        for _, value in settings.headers:
            treat_as_secret(value)
        credentials = network.proxy_credentials
        if credentials is not None:
            treat_as_secret(credentials[1])
        return Endpoint(base_url, api_key, network)


def _openai_requests(endpoint: Endpoint, settings: RunSettings) -> RequestBackend:
    from batchrunner.backends.http import HttpBackend

    return HttpBackend(
        endpoint.base_url,
        endpoint.api_key,
        settings.timeout,
        settings.concurrency,
        endpoint.network,
    )


def _openai_batches(endpoint: Endpoint, settings: RunSettings) -> BatchBackend:
    from batchrunner.backends.openai_batches import OpenAIBatches

    return OpenAIBatches(endpoint.base_url, endpoint.api_key, settings.timeout, endpoint.network)


OPENAI = Provider(
    name=openai_dialect.NAME,
    dialect=openai_dialect,
    default_base_url=openai_dialect.DEFAULT_BASE_URL,
    base_url_env=openai_dialect.BASE_URL_ENV,
    api_key_env=openai_dialect.API_KEY_ENV,
    identity=(
        (openai_dialect.ORGANIZATION_HEADER, openai_dialect.ORGANIZATION_ENV, "organization"),
        (openai_dialect.PROJECT_HEADER, openai_dialect.PROJECT_ENV, "project"),
    ),
    request_backend=_openai_requests,
    batch_backend=_openai_batches,
)
PROVIDERS = {OPENAI.name: OPENAI}


def provider_for(settings: RunSettings) -> Provider:
    """The provider a job's settings name (today always OpenAI's wire format)."""
    return PROVIDERS[openai_dialect.NAME]
