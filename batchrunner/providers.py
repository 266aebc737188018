"""Who a job talks to: a provider's dialect, its two backends, where it lives and which key
it takes. Everything that picks a provider goes through `provider_for`.

Two providers: OpenAI (and every OpenAI-compatible server: vLLM, Ollama, LiteLLM, gateways),
and Azure OpenAI, which speaks OpenAI's wire format at its own addresses (deployments,
`api-version`), with its own key header (`api-key`) and the SDK's Azure client for batches.
Another provider is a dialect module, its backends, and a subclass here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from batchrunner.dialects import Dialect
from batchrunner.dialects import azure as azure_dialect
from batchrunner.dialects import openai as openai_dialect
from batchrunner.errors import UsageError
from batchrunner.network import SECRET_NAME, Network, proxy_for, serves_locally, split_query
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
    auth: dict[str, str] = field(default_factory=dict)  # the key's header(s)
    # Paths (as /chat/completions) whose address names the request's model, as a deployment
    # (Azure): base_url/deployments/MODEL/PATH
    deployment_paths: frozenset[str] = frozenset()


class Provider:
    """OpenAI's API and every server that copies it: the base of the others."""

    name = openai_dialect.NAME
    dialect: Dialect = openai_dialect
    default_base_url = openai_dialect.DEFAULT_BASE_URL
    base_url_env = openai_dialect.BASE_URL_ENV
    api_key_env = openai_dialect.API_KEY_ENV
    # (header, environment variable, setting): who is billed, from --organization / --project,
    # else the environment; both modes send the same
    identity: tuple[tuple[str, str, str], ...] = (
        (openai_dialect.ORGANIZATION_HEADER, openai_dialect.ORGANIZATION_ENV, "organization"),
        (openai_dialect.PROJECT_HEADER, openai_dialect.PROJECT_ENV, "project"),
    )

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
        return self._endpoint(settings, base_url, query, api_key)

    def _endpoint(
        self,
        settings: RunSettings,
        base_url: str,
        query: tuple[tuple[str, str], ...],
        api_key: str | None,
        deployment_paths: frozenset[str] = frozenset(),
    ) -> Endpoint:
        identity = {}
        for header, variable, setting in self.identity:
            chosen = getattr(settings, setting) or os.environ.get(variable)
            if chosen:
                identity[header] = chosen
        auth = self.dialect.auth_headers(api_key)
        headers, auth = merged_headers(identity, auth, settings.headers)
        network = Network(
            proxy=proxy_for(base_url, settings.proxy),
            headers=headers,
            query=merged_query(query, settings.query),
        )
        _keep_secret(settings, network)
        return Endpoint(base_url, api_key, network, auth, deployment_paths)

    def request_backend(self, endpoint: Endpoint, settings: RunSettings) -> RequestBackend:
        from batchrunner.backends.http import HttpBackend  # pyreqwest: only when sending

        return HttpBackend(
            endpoint.base_url,
            endpoint.api_key,
            settings.timeout,
            settings.concurrency,
            endpoint.network,
            auth=endpoint.auth,
            deployment_paths=endpoint.deployment_paths,
        )

    def batch_backend(self, endpoint: Endpoint, settings: RunSettings) -> BatchBackend:
        from batchrunner.backends.openai_batches import OpenAIBatches  # the SDK: only here

        return OpenAIBatches(
            endpoint.base_url,
            endpoint.api_key,
            settings.timeout,
            endpoint.network,
            auth=endpoint.auth,
        )


class AzureProvider(Provider):
    """Azure OpenAI, by the SDK's conventions: the resource's endpoint (--azure-endpoint, else
    AZURE_OPENAI_ENDPOINT), its key (AZURE_OPENAI_API_KEY) in an `api-key` header, and an API
    version (--api-version, else OPENAI_API_VERSION). With a version, requests go to the
    deployment a line's model names (`/openai/deployments/MODEL/chat/completions?api-version=`)
    and batches through the SDK's Azure client; with the version `v1`, to Azure's v1 API
    (`/openai/v1/...`, the model in the body), like any OpenAI-compatible server."""

    name = azure_dialect.NAME
    dialect: Dialect = azure_dialect
    base_url_env = "AZURE_OPENAI_ENDPOINT"
    api_key_env = "AZURE_OPENAI_API_KEY"
    api_version_env = "OPENAI_API_VERSION"
    identity = ()  # Azure bills the resource: no organization or project headers

    def base_url(self, settings: RunSettings) -> str:
        chosen = settings.azure_endpoint or os.environ.get(self.base_url_env)
        if not chosen:
            raise UsageError(
                "Azure OpenAI needs its resource's endpoint: --azure-endpoint "
                "https://RESOURCE.openai.azure.com (or AZURE_OPENAI_ENDPOINT)"
            )
        return chosen.rstrip("/")

    def api_version(self, settings: RunSettings) -> str:
        chosen = settings.api_version or os.environ.get(self.api_version_env)
        if not chosen:
            raise UsageError(
                "Azure OpenAI needs an API version: --api-version 2024-10-21 (or "
                "OPENAI_API_VERSION), or --api-version v1 for Azure's v1 API"
            )
        return chosen

    def api_key(self, settings: RunSettings) -> str | None:
        """The key, once the endpoint and the version are known to be given (asked first, it
        is the first thing a run needs: so the whole set-up is checked in that order)."""
        self.base_url(settings)
        self.api_version(settings)
        key = os.environ.get(self.api_key_env) or None
        if key is None:
            raise UsageError(f"{self.api_key_env} is not set: Azure OpenAI takes its key from it")
        return key

    def endpoint(self, settings: RunSettings, api_key: str | None) -> Endpoint:
        resource, query = split_query(self.base_url(settings))
        version = self.api_version(settings)
        if version == "v1":
            return self._endpoint(settings, f"{resource}/openai/v1", query, api_key)
        return self._endpoint(
            settings,
            f"{resource}/openai",
            (("api-version", version), *query),
            api_key,
            deployment_paths=azure_dialect.DEPLOYMENT_PATHS,
        )

    def batch_backend(self, endpoint: Endpoint, settings: RunSettings) -> BatchBackend:
        from batchrunner.backends.openai_batches import AzureBatches, AzureV1Batches

        if not endpoint.deployment_paths:  # Azure's v1 API: OpenAI's client, Azure's key
            return AzureV1Batches(
                endpoint.base_url,
                endpoint.api_key,
                settings.timeout,
                endpoint.network,
                auth=endpoint.auth,
            )

        resource = endpoint.base_url.removesuffix("/openai")
        version = self.api_version(settings)
        return AzureBatches(resource, endpoint.api_key, version, settings.timeout, endpoint.network)


def merged_headers(
    identity: dict[str, str], auth: dict[str, str], given: tuple[tuple[str, str], ...]
) -> tuple[dict[str, str], dict[str, str]]:
    """(every header but the key's, the key's): a header the user gives (--header) replaces
    the same one, whatever its case, identity and key included, in both modes alike; it takes
    the spelling of the one it replaces, so no client sends both."""
    spelled = {name.lower(): name for name in (*identity, *auth)}
    headers = dict(identity)
    for name, value in given:
        canonical = spelled.get(name.lower(), name)
        headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
        headers[canonical] = value
    replaced = {name.lower() for name, _ in given}
    return headers, {k: v for k, v in auth.items() if k.lower() not in replaced}


def merged_query(
    base: tuple[tuple[str, str], ...], given: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """The base URL's query and --query's, one value a name (--query's wins): both clients
    send the same."""
    merged = dict(base)
    merged.update(given)
    return tuple(merged.items())


def _keep_secret(settings: RunSettings, network: Network) -> None:
    """Mask, from now on, what this run was given that may be a secret: header values, the
    proxy's password (as given and as decoded), secret-named query values."""
    for _, value in settings.headers:
        treat_as_secret(value)
    credentials = network.proxy_credentials
    if credentials is not None and network.proxy is not None:
        treat_as_secret(credentials[1])
        treat_as_secret(urlsplit(network.proxy).password or "")
    for name, value in network.query:
        if SECRET_NAME.search(name):
            treat_as_secret(value)


OPENAI = Provider()
AZURE = AzureProvider()
PROVIDERS = {OPENAI.name: OPENAI, AZURE.name: AZURE}


def provider_for(settings: RunSettings) -> Provider:
    """The provider a job's settings name: Azure for --provider azure or --azure-endpoint,
    else OpenAI's wire format."""
    if settings.provider == AZURE.name or settings.azure_endpoint:
        return AZURE
    if settings.provider not in PROVIDERS:
        raise UsageError(f"unknown provider {settings.provider!r}: use one of {list(PROVIDERS)}")
    return PROVIDERS[settings.provider]


def hosted_prices(settings: RunSettings, simulated: bool = False) -> bool:
    """Whether the hosted APIs' prices apply to a job's models: as --hosted-prices /
    --local-prices say, else yes unless its base URL is a local or self-hosted server's, whose
    models are its owner's (`deepseek-r1:7b` on Ollama is not DeepSeek's API). A simulated
    job's fake server stands for the hosted API."""
    if settings.hosted_prices is not None:
        return settings.hosted_prices
    if simulated:
        return True
    try:
        base_url = provider_for(settings).base_url(settings)
    except UsageError:  # Azure with no endpoint yet: it will be a hosted one
        return True
    return not serves_locally(base_url)
