"""The batch backend for OpenAI's Files and Batch API, through the openai SDK.

Reads (retrieve, list, download) may be retried by the SDK; `create` may not: a retried create
after a lost answer could start the same batch twice. A failed create is instead resolved by
looking the batch up by the metadata token it was created with (`find`).

The SDK's exceptions stop here: each becomes a `BackendError` whose kind the dialect gives the
same HTTP answer online (an SDK that never got an answer: timeout or connection).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import openai
import orjson
from openai.types import Batch

from batchrunner import trust
from batchrunner.backends.base import FIND_PAGE, FIND_PAGES_MAX, BatchProblem, RemoteBatch
from batchrunner.dialects.azure import batch_endpoint
from batchrunner.dialects.openai import PROXY_REFUSED, judge_reply, proxy_refused
from batchrunner.errors import BackendError
from batchrunner.failures import ErrorKind
from batchrunner.network import CONNECT_TIMEOUT_S, Network

READ_RETRIES = 3


@contextmanager
def _translated(call: str) -> Iterator[None]:
    """The SDK's exceptions as `BackendError`s whose message names the call (`POST
    http://host/v1/files`): a refusal says which endpoint refused."""
    try:
        yield
    except openai.APIStatusError as exc:
        # The SDK's body is the answer's "error" object (its message: "Error code: 400 - ...")
        error = exc.body if isinstance(exc.body, dict) else {"message": exc.message}
        verdict = judge_reply(exc.status_code, orjson.dumps({"error": error}), None)
        kind = verdict.kind or ErrorKind.BAD_RESPONSE  # a "status error" with status 200
        message = f"{call}: HTTP {exc.status_code}: {verdict.message or exc.message}"
        raise BackendError(kind, message, verdict.code, exc.status_code) from None
    except openai.APIConnectionError as exc:  # APITimeoutError too
        cause = exc.__cause__
        if proxy_refused(str(cause)):
            raise BackendError(ErrorKind.AUTH, PROXY_REFUSED) from None
        if isinstance(cause, httpx2.ConnectError | httpx2.ConnectTimeout):  # nothing was sent
            raise BackendError(ErrorKind.UNREACHABLE, f"{call}: cannot connect: {cause}") from None
        kind = (
            ErrorKind.TIMEOUT if isinstance(exc, openai.APITimeoutError) else ErrorKind.CONNECTION
        )
        raise BackendError(kind, f"{call}: {exc.message}") from None
    except openai.APIError as exc:  # an answer the SDK could not read
        raise BackendError(ErrorKind.BAD_RESPONSE, f"{call}: {exc.message}") from None


def _remote(batch: Batch) -> RemoteBatch:
    counts = batch.request_counts
    problems = (
        tuple(BatchProblem(e.code, e.message, e.line) for e in (batch.errors.data or []))
        if batch.errors
        else ()
    )
    return RemoteBatch(
        id=batch.id,
        status=batch.status,
        total=counts.total if counts else 0,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        problems=problems,
        metadata=dict(batch.metadata or {}),
        usage=batch.usage.model_dump() if batch.usage else None,
    )


class OpenAIBatches:
    """A `BatchBackend` over the openai SDK (any server with OpenAI's Files and Batch API)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float = 600.0,
        network: Network | None = None,
        *,
        auth: dict[str, str] | None = None,
    ) -> None:
        """`auth`: the key's header(s) besides the SDK's own Bearer (Azure's v1 API: api-key)."""
        network = network or Network()
        client = openai.OpenAI(
            api_key=api_key or "none",
            base_url=base_url,
            timeout=_timeout(timeout),
            max_retries=0,
            default_headers={**network.headers, **(auth or {})},
            default_query=dict(network.query),
            http_client=_http_client(network),
        )
        self._use(client)

    def _use(self, client: openai.OpenAI) -> None:
        self._once = client
        self._retrying = client.with_options(max_retries=READ_RETRIES)

    def _call(self, method: str, path: str) -> str:
        return f"{method} {self._once.base_url}{path}"

    def upload(self, path: Path) -> str:
        with _translated(self._call("POST", "files")), path.open("rb") as handle:
            return self._retrying.files.create(file=(path.name, handle), purpose="batch").id

    def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        with _translated(self._call("POST", "batches")):
            batch = self._once.batches.create(
                input_file_id=input_file_id,
                endpoint=self._endpoint(endpoint),  # type: ignore[arg-type]
                completion_window="24h",
                metadata=metadata,
            )
        return _remote(batch)

    def _endpoint(self, url: str) -> str:
        return url

    def find(self, key: str, value: str) -> RemoteBatch | None:
        """The newest batch whose metadata has key=value, among the recent ones."""
        with _translated(self._call("GET", "batches")):
            page = self._retrying.batches.list(limit=FIND_PAGE)
            for _ in range(FIND_PAGES_MAX):
                for batch in page.data:
                    if (batch.metadata or {}).get(key) == value:
                        return _remote(batch)
                if not page.has_next_page():
                    return None
                page = page.get_next_page()
        return None

    def retrieve(self, batch_id: str) -> RemoteBatch:
        with _translated(self._call("GET", f"batches/{batch_id}")):
            return _remote(self._retrying.batches.retrieve(batch_id))

    def cancel(self, batch_id: str) -> RemoteBatch:
        with _translated(self._call("POST", f"batches/{batch_id}/cancel")):
            return _remote(self._retrying.batches.cancel(batch_id))

    def delete_file(self, file_id: str) -> None:
        try:
            with _translated(self._call("DELETE", f"files/{file_id}")):
                self._retrying.files.delete(file_id)
        except BackendError as exc:
            if exc.status != 404:  # 404: deleted already
                raise

    def download(self, file_id: str, destination: Path) -> None:
        """Stream a file to disk: output files can be hundreds of MB."""
        with (
            _translated(self._call("GET", f"files/{file_id}/content")),
            self._retrying.files.with_streaming_response.content(file_id) as response,
            destination.open("wb") as out,
        ):
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)

    def lines(self, file_id: str, scratch: Path) -> Iterator[bytes]:
        """The file's lines, read back from a downloaded copy in `scratch`."""
        path = scratch / f"{file_id}.jsonl"
        self.download(file_id, path)
        try:
            with path.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        yield line
        finally:
            path.unlink(missing_ok=True)


class AzureBatches(OpenAIBatches):
    """Azure OpenAI's Files and Batch API through the SDK's Azure client: its resource's
    endpoint, an `api-version`, the key in an `api-key` header, and batches that name their
    endpoint without `/v1` (as their input lines do: dialects/azure.py)."""

    def __init__(
        self,
        resource: str,
        api_key: str | None,
        api_version: str,
        timeout: float = 600.0,
        network: Network | None = None,
    ) -> None:
        network = network or Network()
        client = openai.AzureOpenAI(
            azure_endpoint=resource,
            api_key=api_key,
            api_version=api_version,
            timeout=_timeout(timeout),
            max_retries=0,
            default_headers=network.headers,
            default_query={k: v for k, v in network.query if k != "api-version"},
            http_client=_http_client(network),
        )
        self._use(client)

    def _endpoint(self, url: str) -> str:
        return batch_endpoint(url)


class AzureV1Batches(OpenAIBatches):
    """Azure's v1 API (`/openai/v1/`) through OpenAI's client: its batches, like Azure's
    others, name their endpoint without `/v1`."""

    def _endpoint(self, url: str) -> str:
        return batch_endpoint(url)


def _timeout(seconds: float) -> httpx2.Timeout:
    """The request's timeout, and network.py's to connect (both modes connect alike)."""
    return httpx2.Timeout(seconds, connect=min(CONNECT_TIMEOUT_S, seconds))


def _http_client(network: Network) -> openai.DefaultHttpxClient:
    """The SDK reads no proxy from the environment: network.py chose it, for both modes; the
    certificate authorities trusted, for the server and an https proxy, are trust.py's."""
    context = trust.ssl_context()
    proxy: str | httpx2.Proxy | None = network.proxy
    if network.proxy is not None and network.proxy.startswith("https://"):  # TLS to it too
        proxy = httpx2.Proxy(network.proxy, ssl_context=context)
    return openai.DefaultHttpxClient(
        proxy=proxy,
        trust_env=False,
        verify=context,
    )
