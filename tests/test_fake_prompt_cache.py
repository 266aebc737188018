"""The fake server's simulated prompt caching (fake/prompt_cache.py), over HTTP with the real
`openai` SDK: hits from 1,024 tokens in 128-token steps, only after the first of a prefix was
answered, routed by prefix and prompt_cache_key, overflow above the per-pair rate, expiry, and
the same in the Batch API's output lines. Off unless asked for."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from batchrunner.fake import FakeConfig, FakeServer, run_in_thread
from batchrunner.jobfile import JobDefaults, check_job_file
from batchrunner.tokens import prompt_tokens
from tests.test_cli import invoke
from tests.test_fake_batches import start, wait

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "jobs" / "support_triage.jsonl"
MODEL = "gpt-5-mini"
# A long shared prefix: the example job's system prompt (about 1,570 tokens).
SYSTEM = json.loads(EXAMPLE.read_text().splitlines()[0])["body"]["messages"][0]["content"]


@contextlib.contextmanager
def caching(**knobs: Any) -> Iterator[FakeServer]:
    with run_in_thread(FakeConfig(prompt_cache=True, seed=5, **knobs)) as server:
        yield server


def client(server: FakeServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-x", base_url=server.base_url, max_retries=0, timeout=30)


def messages(question: str, system: str = SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def chat(server: FakeServer, question: str, system: str = SYSTEM, **body: Any) -> tuple[int, int]:
    """(prompt tokens, cached tokens) of one chat request."""
    answer = client(server).chat.completions.create(
        model=MODEL,
        messages=messages(question, system),  # type: ignore[arg-type]
        **body,
    )
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0


def cached(server: FakeServer, question: str, system: str = SYSTEM, **body: Any) -> int:
    return chat(server, question, system, **body)[1]


def stats(server: FakeServer) -> dict[str, Any]:
    url = server.base_url.removesuffix("/v1") + "/_fake/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        found: dict[str, Any] = json.load(response)["prompt_cache"]
    return found


def words(count: int, tag: str = "w") -> str:
    """A text of about 2 tokens a word, its own from the first token on (by its tag)."""
    return " ".join(f"{tag}{i}" for i in range(count))


def test_identical_prompts_hit_in_128_token_steps_from_1024() -> None:
    with caching() as server:
        seen = {}
        for count in (200, 256, 290, 330, 360):
            system = words(count, f"t{count}x")
            assert cached(server, "same", system) == 0  # the first of its prefix
            total, hit = chat(server, "same", system)
            seen[total] = hit
    for total, hit in seen.items():
        assert hit == (total // 128 * 128 if total >= 1024 else 0), seen
    assert 0 in seen.values() and len({hit for hit in seen.values() if hit}) >= 3


def test_a_shared_prefix_shorter_than_1024_tokens_is_never_cached() -> None:
    short_prefix = words(400)  # well under 1,024 tokens, then different long endings
    with caching() as server:
        first_total, first = chat(server, words(600) + " one", short_prefix)
        second_total, second = chat(server, "two " + words(600), short_prefix)
    assert first_total > 1024 and second_total > 1024
    assert (
        prompt_tokens(
            "/v1/chat/completions", {"model": MODEL, "messages": messages("", short_prefix)}
        )
        < 1024
    )
    assert first == second == 0


def test_the_second_of_a_prefix_hits_once_the_first_was_answered_chat_and_responses() -> None:
    with caching() as server:
        total, first = chat(server, "Where is my order HH-2048811?")
        _, second = chat(server, "My heat pump shows E42.")
        api = client(server)
        answers = [
            api.responses.create(model=MODEL, instructions=SYSTEM, input=text)
            for text in ("Invoice 88123 was charged twice.", "The app logs me out.")
        ]
    assert first == 0 and 1024 <= second <= total and second % 128 == 0
    # the shared part ends within the user message's first tokens: the system prompt's blocks
    assert (
        second
        >= prompt_tokens("/v1/chat/completions", {"model": MODEL, "messages": messages("")})
        // 128
        * 128
    )
    response_hits = [a.usage.input_tokens_details.cached_tokens for a in answers if a.usage]
    assert response_hits[0] == 0 and response_hits[1] >= 1024


def tool(name: str) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {"ticket": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def test_tools_and_the_output_format_come_first_in_the_cached_prefix() -> None:
    with caching() as server:
        assert cached(server, "one", tools=[tool("route_ticket")]) == 0
        assert cached(server, "two", tools=[tool("route_ticket")]) >= 1024
        assert cached(server, "three", tools=[tool("close_ticket")]) == 0  # before the system
        assert cached(server, "plain") == 0 and cached(server, "plain again") >= 1024
        json_mode = {"type": "json_object"}
        assert cached(server, "four", response_format=json_mode) == 0  # before the system
        assert cached(server, "five", response_format=json_mode) >= 1024


def test_requests_that_arrive_before_the_first_is_answered_miss() -> None:
    async def burst(server: FakeServer, count: int) -> list[int]:
        api = openai.AsyncOpenAI(api_key="sk-x", base_url=server.base_url, max_retries=0)
        async with api:
            replies = await asyncio.gather(
                *(
                    api.chat.completions.create(model=MODEL, messages=messages(f"ticket {i}"))  # type: ignore[arg-type]
                    for i in range(count)
                )
            )
        return [
            r.usage.prompt_tokens_details.cached_tokens or 0
            for r in replies
            if r.usage and r.usage.prompt_tokens_details
        ]

    with caching(latency_ms=1000) as server:
        together = asyncio.run(burst(server, 6))
        server.config.latency_ms = 0
        after = cached(server, "ticket after")
        counted = stats(server)
    assert together == [0] * 6 and after >= 1024
    # the ideal counts every request after the first of its prefix and key as cacheable
    assert counted["ideal_cached_tokens"] == 6 * after
    assert counted["cached_tokens"] == after and counted["hits"] == 1


def test_above_the_per_pair_rate_requests_overflow_to_other_machines_and_mostly_miss() -> None:
    with caching(cache_pair_rpm=3) as server:
        hits = [cached(server, f"ticket {i}") for i in range(12)]
        counted = stats(server)
    assert hits[0] == 0 and hits[1] >= 1024 and hits[2] >= 1024  # the pair's 3 a minute
    assert counted["overflowed"] == 9
    assert sum(1 for hit in hits[3:] if hit == 0) >= 8  # random machines of 4,096: cold


def test_an_overflow_lands_on_another_machine() -> None:
    """A pool of two: the pair's home takes one a minute, the rest go to the other machine,
    which is cold the first time and warm after."""
    with caching(cache_machines=2, cache_pair_rpm=1) as server:
        hits = [cached(server, f"ticket {i}") for i in range(4)]
    assert hits[0] == 0 and hits[1] == 0 and hits[2] >= 1024 and hits[3] >= 1024


def test_a_different_prompt_cache_key_routes_to_another_machine() -> None:
    with caching() as server:
        keyed = [cached(server, f"ticket {i}", prompt_cache_key="tenant-a") for i in range(2)]
        other = [cached(server, f"ticket {i}", prompt_cache_key="tenant-b") for i in range(2)]
        counted = stats(server)
    assert keyed[0] == 0 and keyed[1] >= 1024
    assert other[0] == 0 and other[1] >= 1024  # cold on its own machine, then warm
    assert counted["keys"] == 2 and counted["pairs"] == 2


def test_cached_prefixes_expire_after_the_ttl_and_24h_retention_keeps_them() -> None:
    kept = "Extended retention. " + SYSTEM
    with caching(cache_ttl_s=1.5, cache_ttl_24h_s=60.0) as server:
        assert cached(server, "one") == 0
        assert cached(server, "two") >= 1024  # within the TTL
        assert cached(server, "one", kept, prompt_cache_retention="24h") == 0
        time.sleep(2.5)
        expired = cached(server, "three")
        retained = cached(server, "two", kept)
    assert expired == 0 and retained >= 1024


def test_an_unknown_retention_is_refused_as_the_api_refuses_it() -> None:
    with caching() as server, pytest.raises(openai.BadRequestError) as refused:
        cached(server, "one", prompt_cache_retention="forever")
    assert refused.value.param == "prompt_cache_retention"
    assert "in_memory" in refused.value.message


def test_embeddings_are_never_cached() -> None:
    with caching() as server:
        api = client(server)
        for _ in range(2):
            raw = api.embeddings.with_raw_response.create(
                model="text-embedding-3-small", input=SYSTEM
            )
            usage = json.loads(raw.text)["usage"]
            assert usage["prompt_tokens"] > 1024 and "prompt_tokens_details" not in usage
        assert stats(server) is None  # never even consulted
        cached(server, "a chat request is")
        assert stats(server)["requests"] == 1


def test_off_by_default_and_reset_makes_it_cold() -> None:
    with run_in_thread(FakeConfig(seed=5)) as plain:
        assert cached(plain, "one") == cached(plain, "two") == 0
        assert stats(plain) is None
    with caching() as server:
        cached(server, "one")
        assert cached(server, "two") >= 1024
        request = urllib.request.Request(
            server.base_url.removesuffix("/v1") + "/_fake/reset", data=b"{}"
        )
        urllib.request.urlopen(request, timeout=10).close()
        assert stats(server) is None
        assert cached(server, "three") == 0


def test_memory_is_bounded_the_least_recently_used_blocks_go_first() -> None:
    with caching(cache_max_blocks=30) as server:
        for i in range(5):  # five different prefixes of about 13 blocks each
            cached(server, "ticket", f"Tenant {i}. " + SYSTEM)
        counted = stats(server)
        again = cached(server, "ticket 2", "Tenant 0. " + SYSTEM)
        recent = cached(server, "ticket 2", "Tenant 4. " + SYSTEM)
    assert counted["blocks"] <= 30 and counted["evicted_blocks"] > 0
    assert again == 0 and recent >= 1024


def batch_line(index: int, question: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"line-{index}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": messages(question), **body},
    }


def test_batch_output_lines_carry_cached_tokens_in_file_order() -> None:
    with caching(batch_in_progress_s=0.05) as server:
        api = client(server)
        lines = [
            batch_line(0, "first"),
            batch_line(1, "second"),
            batch_line(2, "another key", prompt_cache_key="elsewhere"),
            batch_line(3, "third"),
            batch_line(4, "refused", prompt_cache_retention="forever"),
        ]
        batch, _ = wait(api, start(api, lines))
        assert batch.status == "completed" and batch.output_file_id and batch.error_file_id
        output = [
            json.loads(line) for line in api.files.content(batch.output_file_id).text.splitlines()
        ]
        errors = [
            json.loads(line) for line in api.files.content(batch.error_file_id).text.splitlines()
        ]
    hits = {
        record["custom_id"]: record["response"]["body"]["usage"]["prompt_tokens_details"][
            "cached_tokens"
        ]
        for record in output
    }
    assert hits["line-0"] == 0 and hits["line-1"] >= 1024 and hits["line-3"] >= 1024
    assert hits["line-2"] == 0  # its key routes it to a cold machine
    assert [e["response"]["status_code"] for e in errors] == [400]
    assert batch.usage is not None
    assert batch.usage.input_tokens_details.cached_tokens == sum(hits.values())


def test_the_example_job_shares_a_cacheable_system_prompt() -> None:
    summary = check_job_file(str(EXAMPLE), JobDefaults())
    assert summary.items == 24
    bodies = [json.loads(line)["body"] for line in EXAMPLE.read_text().splitlines()]
    systems = {body["messages"][0]["content"] for body in bodies}
    assert len(systems) == 1
    shared = prompt_tokens("/v1/chat/completions", {"model": MODEL, "messages": messages("")})
    assert 1400 <= shared <= 1700
    with caching() as server:  # sent one by one: every line after the first hits
        api = client(server)
        hits = []
        for body in bodies[:6]:
            answer = api.chat.completions.create(**body)
            assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
            hits.append(answer.usage.prompt_tokens_details.cached_tokens)
    assert hits[0] == 0 and all(hit >= shared // 128 * 128 for hit in hits[1:])


def test_batchrunner_records_the_cached_tokens_the_fake_reports(db_url: str) -> None:
    with caching() as server:
        common = ("--db", db_url, "--base-url", server.base_url, "--hosted-prices")
        result = invoke("submit", str(EXAMPLE), "--concurrency", "1", *common)
        assert result.exit_code == 0, result.stderr
        reported = stats(server)
    usage = invoke("export", "usage", "--format", "csv", "--db", db_url)
    rows = list(csv.DictReader(io.StringIO(usage.stdout)))
    assert len(rows) == 24
    hits = [int(row["cached_tokens"]) for row in rows]
    assert sum(hits) == reported["cached_tokens"] and reported["requests"] == 24
    for row, hit in zip(rows, hits, strict=True):
        assert hit == 0 or (1024 <= hit <= int(row["input_tokens"]) and hit % 128 == 0)
