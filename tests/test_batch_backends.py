"""One contract for every `BatchBackend`: the openai SDK over HTTP and the fake's in-process twin
give the same results over the same fake server (fake/in_process.py says why both exist)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchrunner.backends.base import BatchBackend, BatchProblem, RemoteBatch
from batchrunner.backends.openai_batches import OpenAIBatches
from batchrunner.dialects.openai import batch_problem_kind, read_batch_line
from batchrunner.errors import BackendError
from batchrunner.failures import ErrorKind
from batchrunner.fake import FakeConfig, FakeServer, InProcessBatches, run_in_thread
from tests.conftest import chat_line, write_jsonl

CHAT = "/v1/chat/completions"
WAIT_S = 10.0  # every wait below gives up (and fails) after this long
POLL_S = 0.01


def quick_config(**knobs: object) -> FakeConfig:
    """Batches that end in a fraction of a second."""
    config = FakeConfig(
        seed=7, batch_validating_s=0.03, batch_in_progress_s=0.15, batch_finalizing_s=0.03
    )
    for name, value in knobs.items():
        setattr(config, name, value)
    return config


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_in_thread(quick_config()) as running:
        yield running


def sdk_backend(server: FakeServer) -> OpenAIBatches:
    return OpenAIBatches(server.base_url, "sk-test", timeout=10)


@pytest.fixture(params=["openai-sdk", "in-process"])
def backend(request: pytest.FixtureRequest, server: FakeServer) -> BatchBackend:
    if request.param == "openai-sdk":
        return sdk_backend(server)
    return InProcessBatches(server)


class Poller:
    """Retrieves a batch until a condition holds, within WAIT_S; remembers what it saw."""

    def __init__(self, backend: BatchBackend) -> None:
        self.backend = backend
        self.polls = 0
        self.seen: list[str] = []

    def until(
        self, batch_id: str, done: Callable[[RemoteBatch], bool] = lambda b: b.terminal
    ) -> RemoteBatch:
        deadline = time.monotonic() + WAIT_S
        while True:
            batch = self.backend.retrieve(batch_id)
            self.polls += 1
            if not self.seen or self.seen[-1] != batch.status:
                self.seen.append(batch.status)
            if done(batch):
                return batch
            if time.monotonic() > deadline:
                pytest.fail(f"batch {batch_id} still {batch.status} after {WAIT_S} s")
            time.sleep(POLL_S)


def submit(
    backend: BatchBackend, folder: Path, lines: list[dict[str, object]], **metadata: str
) -> RemoteBatch:
    path = write_jsonl(folder / "in.jsonl", lines)
    return backend.create(backend.upload(path), CHAT, metadata)


def read_lines(backend: BatchBackend, file_id: str | None, scratch: Path) -> dict[str, int]:
    """custom_id -> how often it appears in the file; every line must parse."""
    if file_id is None:
        return {}
    seen: Counter[str] = Counter()
    for raw in backend.lines(file_id, scratch):
        assert raw.endswith(b"\n")  # as read from the file, newline kept
        parsed = read_batch_line(raw)
        assert parsed is not None, raw
        seen[parsed.custom_id] += 1
    return dict(seen)


# -- the contract: the same assertions for both backends ----------------------------------------


def test_a_batch_goes_from_upload_to_completed(
    backend: BatchBackend, server: FakeServer, tmp_path: Path
) -> None:
    created = submit(backend, tmp_path, [chat_line(i) for i in range(12)], job="7")
    assert (created.status, created.total, created.completed) == ("validating", 12, 0)
    assert created.metadata == {"job": "7"}
    assert created.usage is not None and created.usage["total_tokens"] == 0
    poller = Poller(backend)
    batch = poller.until(created.id)
    order = ["validating", "in_progress", "finalizing", "completed"]
    assert batch.status == "completed" and poller.seen == sorted(poller.seen, key=order.index)
    assert (batch.total, batch.completed, batch.failed, batch.problems) == (12, 12, 0, ())
    assert batch.error_file_id is None and batch.output_file_id is not None
    assert batch.usage is not None and batch.usage["total_tokens"] > 0
    assert read_lines(backend, batch.output_file_id, tmp_path) == {
        f"item-{i}": 1 for i in range(12)
    }
    for raw in backend.lines(batch.output_file_id, tmp_path):
        line = read_batch_line(raw)
        assert line is not None and line.verdict.kind is None and line.http_status == 200
    # Both count their calls in the fake's counters, route by route.
    expected = {"upload": 1, "create": 1, "retrieve": poller.polls, "content": 2}
    assert dict(server.batch_api.calls) == expected
    assert list(tmp_path.iterdir()) == [tmp_path / "in.jsonl"]  # no download left in scratch


def test_an_ended_batchs_files_are_deleted_and_deleting_again_is_no_error(
    backend: BatchBackend, server: FakeServer, tmp_path: Path
) -> None:
    lines = [chat_line(i) for i in range(4)] + [chat_line(4, "[fake:400] refused")]
    batch = Poller(backend).until(submit(backend, tmp_path, lines).id)
    files = (server.batch_api.batches[batch.id].input_file_id, batch.output_file_id)
    ours = [*files, batch.error_file_id]
    assert None not in ours and set(server.batch_api.files) == set(ours)
    for file_id in ours:
        assert file_id is not None
        backend.delete_file(file_id)
        backend.delete_file(file_id)  # gone already: safe to repeat
        with pytest.raises(BackendError) as gone:
            list(backend.lines(file_id, tmp_path))
        assert gone.value.status == 404
    assert server.batch_api.files == {}
    assert server.batch_api.calls["delete"] == 6
    backend.delete_file("file-never-there")


def test_find_returns_the_newest_batch_with_the_metadata(
    backend: BatchBackend, server: FakeServer, tmp_path: Path
) -> None:
    file_id = backend.upload(write_jsonl(tmp_path / "in.jsonl", [chat_line(0)]))
    made = [backend.create(file_id, CHAT, {"job": job}) for job in ("a", "b", "a")]
    found = backend.find("job", "a")
    assert found is not None and found.id == made[2].id and found.metadata == {"job": "a"}
    found_b = backend.find("job", "b")
    assert found_b is not None and found_b.id == made[1].id
    assert backend.find("job", "unknown") is None
    assert backend.find("other-key", "a") is None
    assert server.batch_api.calls["list"] == 4  # one page each: three batches fit in one


def test_find_pages_back_as_far_as_the_sdk_does(
    backend: BatchBackend, server: FakeServer, tmp_path: Path
) -> None:
    maker = InProcessBatches(server)  # quick to make many
    file_id = maker.upload(write_jsonl(tmp_path / "in.jsonl", [chat_line(0)]))
    oldest = maker.create(file_id, CHAT, {"n": "0"})
    for n in range(1, 101):
        maker.create(file_id, CHAT, {"n": str(n)})
    before = server.batch_api.calls["list"]
    found = backend.find("n", "0")
    assert found is not None and found.id == oldest.id
    assert server.batch_api.calls["list"] - before == 2  # pages of 100: the second holds it


def test_cancel_ends_an_in_progress_batch_with_its_unanswered_lines_never_run(
    backend: BatchBackend, server: FakeServer, tmp_path: Path
) -> None:
    server.config.batch_in_progress_s = 5.0  # long enough to cancel it midway
    created = submit(backend, tmp_path, [chat_line(i) for i in range(10)])
    poller = Poller(backend)
    poller.until(created.id, lambda b: b.status == "in_progress")
    assert backend.cancel(created.id).status == "cancelling"
    batch = poller.until(created.id)
    assert batch.status == "cancelled" and batch.error_file_id is not None
    answered = read_lines(backend, batch.output_file_id, tmp_path)
    never_run = read_lines(backend, batch.error_file_id, tmp_path)
    assert never_run and not set(answered) & set(never_run)
    assert answered | never_run == {f"item-{i}": 1 for i in range(10)}
    assert (batch.completed, batch.failed) == (len(answered), len(never_run))
    for raw in backend.lines(batch.error_file_id, tmp_path):
        line = read_batch_line(raw)
        assert line is not None and line.verdict.kind == ErrorKind.NOT_RUN
        assert line.verdict.code == "batch_cancelled"


def test_create_over_max_lines_is_refused_and_creates_nothing(
    backend: BatchBackend, server: FakeServer, tmp_path: Path
) -> None:
    server.batch_api.max_lines = 5
    with pytest.raises(BackendError) as refused:
        submit(backend, tmp_path, [chat_line(i) for i in range(6)])
    assert (refused.value.kind, refused.value.status) == (ErrorKind.INVALID_REQUEST, 400)
    assert refused.value.code == "invalid_request_error"
    assert "HTTP 400: The batch input file has 6 requests" in refused.value.message
    assert server.batch_api.batches_created == 0 and not server.batch_api.batches


def test_an_unknown_batch_or_file_is_not_found(backend: BatchBackend, tmp_path: Path) -> None:
    calls: list[Callable[[], object]] = [
        lambda: backend.retrieve("batch_unknown"),
        lambda: backend.cancel("batch_unknown"),
        lambda: list(backend.lines("file-unknown", tmp_path)),
    ]
    for call in calls:
        with pytest.raises(BackendError) as refused:
            call()
        assert (refused.value.kind, refused.value.status) == (ErrorKind.NOT_FOUND, 404)


def test_a_batch_over_the_token_limit_fails_after_create(
    backend: BatchBackend, server: FakeServer, tmp_path: Path
) -> None:
    server.config.batch_token_limit = 10  # five lines take about 55
    created = submit(backend, tmp_path, [chat_line(i) for i in range(5)])
    assert created.status == "validating"  # create itself does not refuse it
    batch = Poller(backend).until(created.id)
    assert batch.status == "failed" and (batch.output_file_id, batch.error_file_id) == (None, None)
    (problem,) = batch.problems
    assert (problem.code, problem.line) == ("token_limit_exceeded", None)
    assert "Enqueued token limit reached" in (problem.message or "")
    assert batch_problem_kind(problem.code) == ErrorKind.TOKEN_LIMIT


def test_a_validation_failure_names_its_line(backend: BatchBackend, tmp_path: Path) -> None:
    lines = [chat_line(0), chat_line(1, "[fake:batch_invalid]"), chat_line(2)]
    batch = Poller(backend).until(submit(backend, tmp_path, lines).id)
    assert batch.status == "failed" and batch.output_file_id is None
    assert batch.problems == (
        BatchProblem(
            "invalid_request", "This line was rejected on purpose ([fake:batch_invalid]).", 2
        ),
    )
    assert batch_problem_kind(batch.problems[0].code) == ErrorKind.BATCH_VALIDATION


@pytest.mark.parametrize(
    ("status", "code", "kind", "verdict_code"),
    [
        (401, "invalid_api_key", ErrorKind.AUTH, "invalid_api_key"),
        (429, "insufficient_quota", ErrorKind.QUOTA, "insufficient_quota"),
        (429, None, ErrorKind.RATE_LIMIT, "rate_limit_exceeded"),
        (503, None, ErrorKind.SERVER_ERROR, "503"),
        (502, None, ErrorKind.SERVER_ERROR, "502"),  # an HTML page, as gateways answer
    ],
)
def test_a_refused_create_is_classified_alike(
    backend: BatchBackend,
    server: FakeServer,
    tmp_path: Path,
    status: int,
    code: str | None,
    kind: ErrorKind,
    verdict_code: str,
) -> None:
    file_id = backend.upload(write_jsonl(tmp_path / "in.jsonl", [chat_line(0)]))
    server.config.force_status, server.config.force_code = status, code
    with pytest.raises(BackendError) as refused:
        backend.create(file_id, CHAT, {})
    assert (refused.value.kind, refused.value.status, refused.value.code) == (
        kind,
        status,
        verdict_code,
    )
    assert server.batch_api.batches_created == 0


def test_both_backends_describe_the_same_batch_alike(server: FakeServer, tmp_path: Path) -> None:
    sdk, local = sdk_backend(server), InProcessBatches(server)
    lines = [chat_line(i) for i in range(6)] + [chat_line(6, "[fake:400] refused")]
    done = Poller(local).until(submit(local, tmp_path, lines, job="both").id)
    invalid = [chat_line(0), chat_line(1, "[fake:batch_invalid]")]
    failed = Poller(local).until(submit(local, tmp_path, invalid).id)
    assert (done.status, failed.status) == ("completed", "failed")
    for batch in (done, failed):
        assert sdk.retrieve(batch.id) == local.retrieve(batch.id) == batch
    for file_id in (done.output_file_id, done.error_file_id):
        assert file_id is not None
        assert list(sdk.lines(file_id, tmp_path)) == list(local.lines(file_id, tmp_path))


# -- the SDK backend alone: the in-process one has no connection to lose and no key to send ------


def test_a_server_that_is_not_listening_is_unreachable_and_named() -> None:
    backend = OpenAIBatches("http://127.0.0.1:9/v1", "sk-test", timeout=5)
    with pytest.raises(BackendError) as failed:
        backend.create("file-any", CHAT, {})  # create never retries: one refused connection
    assert (failed.value.kind, failed.value.status) == (ErrorKind.UNREACHABLE, None)
    assert failed.value.message.startswith("POST http://127.0.0.1:9/v1/batches: cannot connect")


def test_a_refusal_names_the_call_that_was_refused(tmp_path: Path) -> None:
    with run_in_thread(quick_config(api_key="sk-right")) as keyed:
        backend = OpenAIBatches(keyed.base_url, "sk-wrong", timeout=10)
        path = tmp_path / "in.jsonl"
        path.write_bytes(b"{}\n")
        with pytest.raises(BackendError) as refused:
            backend.upload(path)
    assert refused.value.status == 401
    assert refused.value.message.startswith(f"POST {keyed.base_url}/files: HTTP 401")


def test_a_refused_delete_is_a_backend_error_and_the_file_stays(
    server: FakeServer, tmp_path: Path
) -> None:
    backend = sdk_backend(server)
    file_id = backend.upload(write_jsonl(tmp_path / "in.jsonl", [chat_line(0)]))
    server.batch_api.refuse = {"delete": 500}
    with pytest.raises(BackendError) as refused:
        backend.delete_file(file_id)
    assert (refused.value.kind, refused.value.status) == (ErrorKind.SERVER_ERROR, 500)
    assert refused.value.message.startswith(f"DELETE {server.base_url}/files/{file_id}: HTTP 500")
    assert file_id in server.batch_api.files


def test_a_wrong_key_is_an_auth_failure(tmp_path: Path) -> None:
    with run_in_thread(quick_config(api_key="sk-right")) as keyed:
        backend = OpenAIBatches(keyed.base_url, "sk-wrong", timeout=10)
        with pytest.raises(BackendError) as refused:
            backend.upload(write_jsonl(tmp_path / "in.jsonl", [chat_line(0)]))
    assert (refused.value.kind, refused.value.status) == (ErrorKind.AUTH, 401)
