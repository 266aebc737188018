"""Azure OpenAI in both modes, against the fake server in Azure's shape (fake/azure.py: only
Azure's addresses, only with an `api-key` header and the `api-version` it serves): deployments
named by each line's model, the SDK's Azure client for files and batches, and Azure's v1 API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchrunner.fake import FakeConfig, FakeServer, run_in_thread
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import exported_records, invoke, status_json

VERSION = "2024-10-21"
AZURE_KEY = "azure-key-0123456789abcdef0123"
WAIT = ("--wait", "--poll-interval", "0.05")


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)
    monkeypatch.delenv("OPENAI_API_KEY")
    config = FakeConfig(seed=7, azure_api_version=VERSION, api_key=AZURE_KEY, record_requests=True)
    with run_in_thread(config) as server:
        yield server


def resource(server: FakeServer) -> str:
    return server.base_url.removesuffix("/v1")


def test_both_modes_reach_azure_by_its_conventions(
    tmp_path: Path, db_url: str, azure: FakeServer
) -> None:
    lines = [chat_line(i) for i in range(4)] + [chat_line(4, model="gpt-4.1-mini")]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    common = ("--db", db_url, "--azure-endpoint", resource(azure), "--api-version", VERSION)
    concurrent = invoke("submit", str(job), *common)
    assert concurrent.exit_code == 0, concurrent.stderr
    batch = invoke("submit", str(job), "--new", "--mode", "batch", *WAIT, *common)
    assert batch.exit_code == 0, batch.stderr
    online = [seen for seen in azure.received if "/deployments/" in seen.path]
    assert sorted({seen.path for seen in online}) == [
        "/openai/deployments/gpt-4.1-mini/chat/completions",  # each line's model: a deployment
        "/openai/deployments/gpt-4o-mini/chat/completions",
    ]
    batch_calls = [seen for seen in azure.received if seen.path.startswith("/openai/files")]
    batch_calls += [seen for seen in azure.received if seen.path.startswith("/openai/batches")]
    assert online and batch_calls and len(online) + len(batch_calls) == len(azure.received)
    for seen in azure.received:  # the key in its own header, never as a Bearer token
        assert seen.headers["api-key"] == AZURE_KEY and "authorization" not in seen.headers
        assert f"api-version={VERSION}" in seen.query
    statuses = status_json(db_url)["jobs"]
    assert [s["counts"]["succeeded"] for s in statuses] == [5, 5]
    assert [s["mode"] for s in statuses] == ["concurrent", "batch"]
    assert azure.batch_api.batches_created == 2  # one file per model


def test_azures_v1_api_takes_the_model_in_the_body(
    tmp_path: Path, db_url: str, azure: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    common = ("--db", db_url, "--azure-endpoint", resource(azure), "--api-version", "v1")
    assert invoke("submit", str(job), *common).exit_code == 0
    batch = invoke("submit", str(job), "--new", "--mode", "batch", *WAIT, *common)
    assert batch.exit_code == 0, batch.stderr
    paths = {seen.path for seen in azure.received}
    assert "/openai/v1/chat/completions" in paths and "/openai/v1/batches" in paths
    assert {seen.headers.get("api-key") for seen in azure.received} == {AZURE_KEY}
    assert [r["status"] for r in exported_records(db_url)] == ["succeeded"] * 3


def test_the_azure_shaped_server_refuses_what_azure_refuses(
    tmp_path: Path, db_url: str, azure: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shape is strict, so the tests above prove something: OpenAI's addresses and a
    Bearer token are refused, so is another api-version."""
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    monkeypatch.setenv("OPENAI_API_KEY", AZURE_KEY)
    as_openai = invoke("submit", str(job), "--db", db_url, "--base-url", azure.base_url)
    # a path the server does not have: that endpoint's items fail (here: the job's one)
    assert as_openai.exit_code == 1 and "not_found" in as_openai.stderr
    common = ("--db", db_url, "--new", "--azure-endpoint", resource(azure))
    other_version = invoke("submit", str(job), *common, "--api-version", "2023-05-15")
    assert (
        other_version.exit_code == 1 and "this resource serves api-version" in other_version.stderr
    )


def test_azure_needs_its_endpoint_version_and_key_before_anything_is_recorded(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    db = ("--db", f"sqlite:///{db_path}")
    no_version = invoke("submit", str(job), *db, "--azure-endpoint", "https://r.openai.azure.com")
    assert no_version.exit_code == 2 and "Azure OpenAI needs an API version" in no_version.stderr
    no_endpoint = invoke("submit", str(job), *db, "--provider", "azure", "--api-version", VERSION)
    assert no_endpoint.exit_code == 2 and "needs its resource's endpoint" in no_endpoint.stderr
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    no_key = invoke(
        "submit", str(job), *db, "--azure-endpoint", "https://r.openai.azure.com",
        "--api-version", VERSION,
    )  # fmt: skip
    assert no_key.exit_code == 2 and "AZURE_OPENAI_API_KEY is not set" in no_key.stderr
    assert not db_path.exists()


def test_a_deployment_is_priced_as_the_model_it_serves_when_told(
    tmp_path: Path, db_url: str, azure: FakeServer
) -> None:
    """A line's model is a deployment's name on Azure: unpriced, until --price-as says which
    model it serves (then priced as that model is, exactly)."""
    lines = [chat_line(i, model="prod-mini-eu") for i in range(3)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    common = (
        "--db", db_url, "--azure-endpoint", resource(azure), "--api-version", VERSION,
        "--hosted-prices",  # the fake on 127.0.0.1 stands for a hosted resource
    )  # fmt: skip
    unpriced = invoke("submit", str(job), *common)
    assert unpriced.exit_code == 0 and "no price known for prod-mini-eu" in unpriced.stderr
    priced = invoke("submit", str(job), "--new", *common, "--price-as", "prod-mini-eu=gpt-4o-mini")
    assert priced.exit_code == 0 and "no price known" not in priced.stderr
    plain = write_jsonl(tmp_path / "plain.jsonl", [chat_line(i) for i in range(3)])
    assert invoke("submit", str(plain), *common).exit_code == 0  # gpt-4o-mini by name
    first, second, third = status_json(db_url)["jobs"]
    assert first["cost_usd"] is None and second["cost_usd"] == pytest.approx(third["cost_usd"])
    assert second["options"]["price_as"] == [["prod-mini-eu", "gpt-4o-mini"]]
