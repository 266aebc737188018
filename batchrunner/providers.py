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
from batchrunner.settings import RunSettings

if TYPE_CHECKING:
    from batchrunner.backends.base import BatchBackend, RequestBackend


@dataclass(frozen=True)
class Provider:
    name: str
    dialect: Dialect
    default_base_url: str
    base_url_env: str
    api_key_env: str
    # (base URL, key, settings) -> a backend; imported when called: the SDK and pyreqwest are
    # a large share of start-up that `status` and `submit --detach` do not need
    request_backend: Callable[[str, str | None, RunSettings], RequestBackend]
    batch_backend: Callable[[str, str | None, RunSettings], BatchBackend]

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


def _openai_requests(base_url: str, api_key: str | None, settings: RunSettings) -> RequestBackend:
    from batchrunner.backends.http import HttpBackend

    return HttpBackend(base_url, api_key, settings.timeout, settings.concurrency)


def _openai_batches(base_url: str, api_key: str | None, settings: RunSettings) -> BatchBackend:
    from batchrunner.backends.openai_batches import OpenAIBatches

    return OpenAIBatches(base_url, api_key, settings.timeout)


OPENAI = Provider(
    name=openai_dialect.NAME,
    dialect=openai_dialect,
    default_base_url=openai_dialect.DEFAULT_BASE_URL,
    base_url_env=openai_dialect.BASE_URL_ENV,
    api_key_env=openai_dialect.API_KEY_ENV,
    request_backend=_openai_requests,
    batch_backend=_openai_batches,
)
PROVIDERS = {OPENAI.name: OPENAI}


def provider_for(settings: RunSettings) -> Provider:
    """The provider a job's settings name (today always OpenAI's wire format)."""
    return PROVIDERS[openai_dialect.NAME]
