"""What OpenAI's wire format means, in one place (pure): the endpoints and their body checks,
usage and finish_reason, error bodies and what each answer means (failures.ErrorKind), the
headers (auth, rate limits, retry-after), and the Batch API's line format and limits.

Everything else in batchrunner is provider-neutral and reaches this module through the
`Dialect` protocol (dialects/__init__.py); another provider gets a module of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import orjson

from batchrunner.dialects import BatchLine, ServerLimits
from batchrunner.errors import describe_value
from batchrunner.failures import SUCCEED, ErrorKind, Verdict
from batchrunner.structured import JSON_SCHEMA, Answer, OutputFormat, schema_problem
from batchrunner.usage import Usage

NAME = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
ORGANIZATION_HEADER, ORGANIZATION_ENV = "OpenAI-Organization", "OPENAI_ORG_ID"
PROJECT_HEADER, PROJECT_ENV = "OpenAI-Project", "OPENAI_PROJECT_ID"

# -- endpoints and their bodies ----------------------------------------------------------------

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
COMPLETIONS = "/v1/completions"  # a base model's endpoint: local servers' usual one
MODERATIONS = "/v1/moderations"  # free
IMAGE_GENERATIONS = "/v1/images/generations"
IMAGE_EDITS = "/v1/images/edits"
VIDEOS = "/v1/videos"
# Every endpoint the Batch API takes (its create call lists them), and so the job file too.
ENDPOINTS = (
    CHAT,
    EMBEDDINGS,
    RESPONSES,
    COMPLETIONS,
    MODERATIONS,
    IMAGE_GENERATIONS,
    IMAGE_EDITS,
    VIDEOS,
)
ENDPOINT_ALIASES = {
    "chat": CHAT,
    "chat/completions": CHAT,
    "embeddings": EMBEDDINGS,
    "responses": RESPONSES,
    "completions": COMPLETIONS,
    "moderations": MODERATIONS,
    "images/generations": IMAGE_GENERATIONS,
    "images/edits": IMAGE_EDITS,
    "videos": VIDEOS,
}
WRITES_TEXT = (CHAT, RESPONSES, COMPLETIONS)  # answers in tokens of text: an output cap applies
PROMPTED = (COMPLETIONS, IMAGE_GENERATIONS, IMAGE_EDITS, VIDEOS)  # a "prompt", not "input"
# The model an endpoint uses when the request names none (so a line may leave it out).
DEFAULT_MODELS = {
    MODERATIONS: "omni-moderation-latest",
    IMAGE_GENERATIONS: "dall-e-2",
    IMAGE_EDITS: "dall-e-2",
    VIDEOS: "sora-2",
}
OUTPUT_CAP_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's /v1/completions stops here when none is set
MAX_EMBEDDING_INPUTS = 2_048  # inputs in one embeddings request


def normalize_endpoint(value: str) -> str:
    """Accept "/v1/chat/completions", "v1/embeddings", "chat", "responses", ..."""
    cleaned = value.strip()
    key = cleaned.strip("/").removeprefix("v1/")
    if key in ENDPOINT_ALIASES:
        return ENDPOINT_ALIASES[key]
    return cleaned


def is_embeddings(url: str) -> bool:
    """Embeddings answer with vectors: no output tokens, no output cap."""
    return url.endswith("/embeddings")


def writes_text(url: str) -> bool:
    """Whether the endpoint answers in text tokens (chat, responses, completions); the others
    (vectors, moderation scores, images, videos) take no output cap."""
    return url in WRITES_TEXT


def inputs_in(value: Any) -> int:
    """How many inputs an embeddings `input` or a completion's `prompt` holds: a string or one
    array of token ids is one, an array of strings or of token arrays one each."""
    if not isinstance(value, list) or not value:
        return 1
    if all(isinstance(entry, int) and not isinstance(entry, bool) for entry in value):
        return 1
    return len(value)


def embedding_inputs(body: Mapping[str, Any]) -> int:
    return inputs_in(body.get("input"))


def draws_images(url: str) -> bool:
    return url in (IMAGE_GENERATIONS, IMAGE_EDITS)


def answers_asked(url: str, body: Mapping[str, Any]) -> int:
    """How many answers a request asks for, each up to its output cap: chat's and images' `n`,
    and for a completion `n` (or `best_of`, generated and billed though not all returned) per
    prompt."""
    if url == COMPLETIONS:
        per_prompt = max(_count_field(body, "n"), _count_field(body, "best_of"))
        return inputs_in(body.get("prompt")) * per_prompt
    if url == CHAT or draws_images(url):
        return _count_field(body, "n")
    return 1


def _count_field(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def body_problem(url: str, body: dict[str, Any]) -> str | None:
    """What is wrong with a request body for its endpoint, or None."""
    stream = body.get("stream")
    if stream is not None and stream is not False:
        return (
            f'"stream" must be false or left out, got {orjson.dumps(stream).decode()}: a batch '
            "needs whole answers"
        )
    model = body.get("model")
    if model is None:
        return 'missing "model" (put it in the body or pass --model)'
    if not isinstance(model, str) or not model:
        return f'"model" must be a non-empty string, got {describe_value(model)}'
    if url == CHAT:
        messages = body.get("messages")
        if messages is None:
            return 'missing "messages" for /v1/chat/completions'
        if not isinstance(messages, list) or not messages:
            return f'"messages" must be a non-empty array, got {describe_value(messages)}'
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                return f'"messages"[{index}] must be an object with a "role"'
        return _format_problem(url, body)
    if url in PROMPTED:
        return _prompt_problem(url, body)
    if url == RESPONSES:
        return _responses_problem(body)
    if "input" not in body:
        return f'missing "input" for {url}'
    value = body.get("input")
    if url == EMBEDDINGS and not (isinstance(value, str) or (isinstance(value, list) and value)):
        return f'"input" must be a string or a non-empty array, got {describe_value(value)}'
    if url == EMBEDDINGS and (inputs := embedding_inputs(body)) > MAX_EMBEDDING_INPUTS:
        return (
            f'"input" holds {inputs:,} inputs; one embeddings request takes at most '
            f"{MAX_EMBEDDING_INPUTS:,}"
        )
    if url == MODERATIONS and not (isinstance(value, str) or (isinstance(value, list) and value)):
        return f'"input" must be a string or a non-empty array, got {describe_value(value)}'
    return None


# What a /v1/responses request may carry instead of "input": a stored prompt template, or the
# conversation it continues (its items are the server's, as the Batch API takes them too).
RESPONSES_CONTEXT = ("prompt", "conversation", "previous_response_id")


def _responses_problem(body: dict[str, Any]) -> str | None:
    if "input" not in body and not any(key in body for key in RESPONSES_CONTEXT):
        return (
            f'missing "input" for {RESPONSES} (or "conversation", "previous_response_id" or '
            '"prompt")'
        )
    value = body.get("input")
    if "input" in body and not isinstance(value, (str, list)):
        return f'"input" must be a string or an array, got {describe_value(value)}'
    previous = body.get("previous_response_id")
    if "previous_response_id" in body and not (isinstance(previous, str) and previous):
        return f'"previous_response_id" must be a non-empty string, got {describe_value(previous)}'
    conversation = body.get("conversation")
    if "conversation" in body and not _conversation_ref(conversation):
        return (
            '"conversation" must be a conversation id or an object with its "id", got '
            f"{describe_value(conversation)}"
        )
    if "conversation" in body and "previous_response_id" in body:
        return '"conversation" and "previous_response_id" cannot both be given: use one'
    return _format_problem(RESPONSES, body)


def _conversation_ref(value: Any) -> bool:
    """A conversation's id, or an object that names it ({"id": "conv_..."})."""
    if isinstance(value, dict):
        value = value.get("id")
    return isinstance(value, str) and bool(value)


def _format_problem(url: str, body: dict[str, Any]) -> str | None:
    """A JSON schema asked for that no answer could be checked against: caught before
    anything is paid for (each distinct schema checked once)."""
    wanted = requested_format(url, body)
    if wanted is None or wanted.kind != JSON_SCHEMA:
        return None
    if wanted.schema is None:
        if url == CHAT:
            inner = body["response_format"].get("json_schema")
            given = inner.get("schema") if isinstance(inner, dict) else None
            if given is None:
                return None  # chat's schema is optional: any JSON answers it
            where = "response_format.json_schema.schema"
        else:
            given, where = body["text"]["format"].get("schema"), "text.format.schema"
        return f'"{where}" must be a JSON schema object, got {describe_value(given)}'
    return schema_problem(wanted.key)


def _prompt_problem(url: str, body: dict[str, Any]) -> str | None:
    value = body.get("prompt")
    if value is None:
        return f'missing "prompt" for {url}'
    if url == COMPLETIONS:
        if not (isinstance(value, str) or (isinstance(value, list) and value)):
            return f'"prompt" must be a string or a non-empty array, got {describe_value(value)}'
        return None
    if not isinstance(value, str) or not value:
        return f'"prompt" must be a non-empty string, got {describe_value(value)}'
    if url == IMAGE_EDITS and "image" not in body and "images" not in body:
        return 'missing "image" for /v1/images/edits'
    return None


def output_cap(body: Mapping[str, Any]) -> int | None:
    """The output cap the request sets (`max_completion_tokens`, `max_tokens` or
    `max_output_tokens`, in that order), or None when it sets none."""
    for key in OUTPUT_CAP_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


# -- answers -----------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_usage(body: dict[str, Any]) -> Usage:
    """Tokens of a chat, responses or embeddings answer alike."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    if "input_tokens" in usage:  # /v1/responses
        input_details = usage.get("input_tokens_details") or {}
        output_details = usage.get("output_tokens_details") or {}
        return Usage(
            input_tokens=_int(usage.get("input_tokens")),
            cached_tokens=_int(input_details.get("cached_tokens")) or 0,
            output_tokens=_int(usage.get("output_tokens")),
            reasoning_tokens=_int(output_details.get("reasoning_tokens")) or 0,
        )
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    completion = _int(usage.get("completion_tokens"))
    return Usage(  # /v1/chat/completions, and /v1/embeddings (no completion tokens)
        input_tokens=_int(usage.get("prompt_tokens")),
        cached_tokens=_int(prompt_details.get("cached_tokens")) or 0,
        output_tokens=completion if completion is not None else 0,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")) or 0,
    )


def read_finish_reason(body: dict[str, Any]) -> str | None:
    """The chat finish_reason, or the responses API's incomplete reason."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    if body.get("object") == "response" and body.get("status") == "incomplete":
        details = body.get("incomplete_details") or {}
        reason = details.get("reason")
        if reason == "max_output_tokens":
            return "length"
        return reason if isinstance(reason, str) else "incomplete"
    return None


def output_text(response: dict[str, Any]) -> str | None:
    """The answer's text, for spreadsheet users: chat content, a completion's text or the
    responses API's output_text."""
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        if isinstance(choices[0].get("text"), str):  # /v1/completions
            return str(choices[0]["text"])
        message = choices[0].get("message") or {}
        content = message.get("content")
        return content if isinstance(content, str) else None
    texts = [
        part.get("text", "")
        for entry in response.get("output") or []
        if isinstance(entry, dict) and entry.get("type") == "message"
        for part in entry.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    return "".join(texts) if texts else None


def requested_format(url: str, body: Mapping[str, Any]) -> OutputFormat | None:
    """The structured output a request asks for: chat's `response_format` ({"type":
    "json_schema", "json_schema": {"name", "schema", "strict"}} or {"type": "json_object"}),
    the responses API's `text.format` ({"type": "json_schema", "name", "schema", "strict"});
    None for plain text and other endpoints."""
    if url == CHAT:
        spec = body.get("response_format")
        if not isinstance(spec, dict):
            return None
        inner = spec.get("json_schema")
        return OutputFormat.of(
            spec.get("type"), inner.get("schema") if isinstance(inner, dict) else None
        )
    if url == RESPONSES:
        text = body.get("text")
        spec = text.get("format") if isinstance(text, dict) else None
        if not isinstance(spec, dict):
            return None
        return OutputFormat.of(spec.get("type"), spec.get("schema"))
    return None


def answer_texts(response: dict[str, Any]) -> list[Answer]:
    """What a structured check reads: each chat choice's content (or its refusal), or the
    responses API's output_text (its message items' output_text parts, joined as the SDK's
    `output_text` does) or refusal."""
    choices = response.get("choices")
    if isinstance(choices, list):
        answers = []
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            message = message if isinstance(message, dict) else {}
            content, refusal = message.get("content"), message.get("refusal")
            answers.append(
                Answer(
                    content if isinstance(content, str) else None,
                    refusal if isinstance(refusal, str) else None,
                )
            )
        return answers
    texts, refusals = [], []
    for entry in response.get("output") or []:
        if not isinstance(entry, dict) or entry.get("type") != "message":
            continue
        for part in entry.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "output_text":
                texts.append(str(part.get("text") or ""))
            elif isinstance(part, dict) and part.get("type") == "refusal":
                refusals.append(str(part.get("refusal") or ""))
    return [Answer("".join(texts) if texts else None, " ".join(refusals) or None)]


def api_error(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(type, code, message) of an OpenAI-style error body, whatever its shape."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:300].decode("utf-8", "replace").strip()
        return None, None, text or None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        kind, code, message = error.get("type"), error.get("code"), error.get("message")
        return (
            kind if isinstance(kind, str) else None,
            str(code) if code is not None else None,
            message if isinstance(message, str) else None,
        )
    if isinstance(error, str):
        return None, None, error
    return None, None, body[:300].decode("utf-8", "replace")


PROXY_REFUSED = "the proxy wants credentials it was not given (407 Proxy Authentication Required)"
# How the HTTP clients report a 407 to CONNECT (an https server through a proxy): no answer to
# judge, a failure to connect; reqwest's words, then httpcore's.
PROXY_REFUSED_WORDS = ("proxy authorization required", "407 Proxy Authentication Required")


def proxy_refused(reason: str) -> bool:
    """Whether a failure to connect was the proxy refusing the job's credentials."""
    return any(words in reason for words in PROXY_REFUSED_WORDS)


STOP_STATUSES = {401: ErrorKind.AUTH, 403: ErrorKind.PERMISSION}
# Other OpenAI-compatible servers' words for the same refusals: (status, error type or None,
# words in the message or None, what it is).
OTHER_SERVERS: tuple[tuple[int, str | None, str | None, ErrorKind], ...] = (
    (400, "no_db_connection", None, ErrorKind.AUTH),  # LiteLLM: a key it has no way to check
    (400, None, "Invalid model name passed in model=", ErrorKind.MODEL_NOT_FOUND),  # LiteLLM
)
# A 404 that speaks of the model is about the model, not the path: OpenAI's model_not_found
# ("The model `x` does not exist ..."; "This is not a chat model ..." for one sent to the
# wrong endpoint), Azure's DeploymentNotFound (a deployment is its model), vLLM's and Ollama's
# words. A missing path's 404 names no model ("Invalid
# URL (POST /v1/x)", "File Not Found", "404 page not found").
MODEL_WORD = re.compile(r"\bmodels?\b", re.IGNORECASE)


def not_found_kind(code: str | None, message: str) -> ErrorKind:
    """Which 404: the model is missing (its items fail) or the endpoint is (its items fail)."""
    if code in ("model_not_found", "DeploymentNotFound") or MODEL_WORD.search(message):
        return ErrorKind.MODEL_NOT_FOUND
    return ErrorKind.NOT_FOUND


def judge_reply(status: int, body: bytes, retry_after: float | None) -> Verdict:
    """What an HTTP answer means (failures.py's table says what to do about it)."""
    if status == 200:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Verdict.failure(
                ErrorKind.BAD_RESPONSE, None, "the 200 answer's body is not JSON"
            )
        if not isinstance(parsed, dict):
            return Verdict.failure(
                ErrorKind.BAD_RESPONSE, None, "the 200 answer's body is not an object"
            )
        return Verdict(SUCCEED, body=parsed)
    error_type, code, message = api_error(body)
    message = message or f"HTTP {status}"
    for their_status, their_type, words, kind in OTHER_SERVERS:
        typed = their_type is None or error_type == their_type
        if status == their_status and typed and (words is None or words in message):
            return Verdict.failure(kind, code or error_type, message)
    if status == 429:
        if "insufficient_quota" in (code, error_type):
            return Verdict.failure(ErrorKind.QUOTA, code or error_type, message)
        wait = retry_after if retry_after is not None else wait_from_message(message)
        return Verdict.failure(ErrorKind.RATE_LIMIT, code, message, wait)
    if status == 404:
        return Verdict.failure(not_found_kind(code, message), code, message)
    if status in STOP_STATUSES:
        return Verdict.failure(STOP_STATUSES[status], code, message)
    if status == 407:  # the proxy between us and the server: its credentials are the job's
        return Verdict.failure(ErrorKind.AUTH, "proxy_authentication", PROXY_REFUSED)
    if status in (408, 409) or status >= 500:
        kind = ErrorKind.TIMEOUT if status == 408 else ErrorKind.SERVER_ERROR
        return Verdict.failure(kind, code or str(status), message, retry_after)
    return Verdict.failure(ErrorKind.INVALID_REQUEST, code or error_type, message)


# -- headers -----------------------------------------------------------------------------------

CLIENT_REQUEST_ID = "X-Client-Request-Id"
MAX_CLIENT_REQUEST_ID = 512
RATE_LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?\s*(?:ms|h|m|s)(?:\d+(?:\.\d+)?(?:ms|m|s))*)")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def endpoint_url(base_url: str, url: str, query: tuple[tuple[str, str], ...] = ()) -> str:
    """Join like the SDK does: base_url ends in /v1, job urls start with /v1; the query (an
    Azure deployment's api-version, a gateway's parameters) goes after the whole path."""
    joined = base_url.rstrip("/") + url.removeprefix("/v1")
    return f"{joined}?{urlencode(query)}" if query else joined


def parse_duration(text: str) -> float | None:
    """OpenAI's durations: `120ms`, `1s`, `6m0s`, `1h2m3.5s`; None if it is not one."""
    text = text.strip().replace(" ", "")
    parts = DURATION_PART.findall(text)
    if not parts or "".join(value + unit for value, unit in parts) != text:
        return None
    return sum(float(value) * UNIT_SECONDS[unit] for value, unit in parts)


def wait_from_message(message: str | None) -> float | None:
    """The wait in a 429 message: "... Please try again in 20ms. ..."."""
    if not message:
        return None
    match = TRY_AGAIN.search(message)
    return parse_duration(match.group(1)) if match else None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` (OpenAI) or `retry-after` in seconds, if the server sent one."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def has_rate_limits(headers: Mapping[str, str]) -> bool:
    """Whether an answer carries rate-limit headers worth reading (most carry none)."""
    return any(name in headers for name in RATE_LIMIT_HEADERS)


def read_server_limits(headers: Mapping[str, str]) -> ServerLimits:
    """The `x-ratelimit-*` headers; empty where the server sent none."""

    def number(name: str) -> int | None:
        value = headers.get(name)
        try:
            return int(float(value)) if value is not None else None
        except ValueError:
            return None

    def duration(name: str) -> float | None:
        value = headers.get(name)
        return parse_duration(value) if value is not None else None

    return ServerLimits(
        limit_requests=number("x-ratelimit-limit-requests"),
        remaining_requests=number("x-ratelimit-remaining-requests"),
        reset_requests=duration("x-ratelimit-reset-requests"),
        limit_tokens=number("x-ratelimit-limit-tokens"),
        remaining_tokens=number("x-ratelimit-remaining-tokens"),
        reset_tokens=duration("x-ratelimit-reset-tokens"),
    )


# -- the Batch API -----------------------------------------------------------------------------

BATCH_LINE_KEYS = ("custom_id", "method", "url", "body")
BATCH_MAX_REQUESTS = 50_000  # per input file
BATCH_MAX_INPUTS = 50_000  # embeddings inputs across one input file's requests
BATCH_MAX_BYTES = 190 * 1024 * 1024  # 200 MB, less a margin for the multipart wrapping
BATCH_LINE_OVERHEAD = 64  # {"custom_id":..,"method":"POST","url":..,"body":..}\n around the body
BATCH_TOKEN_LIMIT_CODE = "token_limit_exceeded"  # a failed batch's error: the enqueued cap


# Models OpenAI serves live only: their model pages list no Batch endpoint, and its pricing
# no batch rate. A batch line naming one would be refused by the API after the upload, so it is
# refused at submit, and its batch price is unknown, never the standard one less 50%.
BATCHLESS_MODELS = (
    (re.compile(r"realtime|^gpt-live"), "a Realtime API model"),
    (re.compile(r"^(gpt-4o-(mini-)?audio-preview|gpt-audio)"), "an audio model"),
    (re.compile(r"^chatgpt-4o-latest"), "ChatGPT's own model, served live only"),
    (re.compile(r"^gpt-4o-(mini-)?search-preview"), "a web search model"),
    (re.compile(r"(^|-)(tts|transcribe)(-|$)|^whisper-"), "a speech model"),
)


def batchless_reason(model: str) -> str | None:
    """Why OpenAI's Batch API does not take `model` (what it is), or None when it may. A
    fine-tuned model (ft:BASE:...) is judged by its base."""
    name = model.lower().removeprefix("ft:")
    return next((reason for pattern, reason in BATCHLESS_MODELS if pattern.search(name)), None)


def batch_line(custom_id: str, url: str, body: str, extra: str | None = None) -> bytes:
    """One Batch API line (what a job file holds and what a batch input file needs), with the
    stored body and extra keys spliced in as the JSON they were."""
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": orjson.Fragment(body),
    }
    if extra:
        line.update(orjson.loads(extra))
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def batch_inputs(url: str, body: str) -> int:
    """What a request (its body as JSON text) counts against BATCH_MAX_INPUTS: an embeddings
    request its inputs, any other nothing (and its body is not even parsed)."""
    return embedding_inputs(orjson.loads(body)) if is_embeddings(url) else 0


def batch_line_size(custom_id: str, url: str, body: str) -> int:
    """The bytes `batch_line` will take, near enough to plan files under the size limit."""
    return len(body.encode()) + len(custom_id.encode()) + len(url) + BATCH_LINE_OVERHEAD


def read_batch_line(raw: bytes) -> BatchLine | None:
    """One line of an output or error file, or None when it is not a line the API writes.

    | line                                       | verdict                                 |
    |--------------------------------------------|-----------------------------------------|
    | response.status_code 200, an object body    | succeed                                 |
    | response.status_code other                  | as the same HTTP answer online          |
    | top-level error (batch_expired, cancelled)  | never run (ErrorKind.NOT_RUN)           |
    """
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return None
    custom_id = line["custom_id"]
    response = line.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status = response["status_code"]
        body_text = orjson.dumps(response.get("body")).decode()
        verdict = judge_reply(status, body_text.encode(), None)
        return BatchLine(custom_id, verdict, status, body_text)
    error = line.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        verdict = Verdict.failure(
            ErrorKind.NOT_RUN,
            str(code) if code is not None else None,
            message if isinstance(message, str) else None,
        )
        return BatchLine(custom_id, verdict, None, None)
    return None


def batch_problem_kind(code: str | None) -> ErrorKind:
    """What one entry of a failed batch's errors means for the lines it names."""
    if code == BATCH_TOKEN_LIMIT_CODE:
        return ErrorKind.TOKEN_LIMIT
    return ErrorKind.BATCH_VALIDATION
