"""Azure OpenAI's wire format: OpenAI's (this module takes everything from dialects/openai.py)
but for its key header (`api-key`, not a Bearer token), which paths name a deployment, and its
batch lines, which name their endpoint without `/v1` (`"url": "/chat/completions"`)."""

from __future__ import annotations

from batchrunner.dialects import openai

NAME = "azure"
BATCH_MAX_BYTES = openai.BATCH_MAX_BYTES
BATCH_MAX_INPUTS = openai.BATCH_MAX_INPUTS
# The paths whose address names the deployment (the SDK's Azure client's list).
DEPLOYMENT_PATHS = frozenset(
    (
        "/completions",
        "/chat/completions",
        "/embeddings",
        "/audio/transcriptions",
        "/audio/translations",
        "/audio/speech",
        "/images/generations",
        "/images/edits",
    )
)

judge_reply = openai.judge_reply
read_usage = openai.read_usage
read_finish_reason = openai.read_finish_reason
output_text = openai.output_text
requested_format = openai.requested_format
answer_texts = openai.answer_texts
read_batch_line = openai.read_batch_line
batch_problem_kind = openai.batch_problem_kind
batch_inputs = openai.batch_inputs


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"api-key": api_key} if api_key else {}


def batch_endpoint(url: str) -> str:
    """How an Azure batch names its endpoint: /chat/completions, not /v1/chat/completions."""
    return url.removeprefix("/v1")


def batch_line(custom_id: str, url: str, body: str, extra: str | None = None) -> bytes:
    return openai.batch_line(custom_id, batch_endpoint(url), body, extra)


def batch_line_size(custom_id: str, url: str, body: str) -> int:
    return openai.batch_line_size(custom_id, batch_endpoint(url), body)
