"""Prefix groups (prefixes.py): which requests share the head a prompt cache can serve, how
long it is, and that submit records both with every item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from batchrunner.cli import cli
from batchrunner.prefixes import PrefixFinder, cacheable_tokens, shared_head
from batchrunner.tokens import prompt_tokens
from tests.conftest import write_jsonl

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
SYSTEM = "You sort support tickets into one of twelve queues. " * 120  # ~1,300 tokens


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-5-mini", "messages": list(messages), **extra}


def test_requests_that_differ_only_in_their_last_message_share_a_group() -> None:
    finder = PrefixFinder()
    system = {"role": "system", "content": SYSTEM}
    one = finder.find(CHAT, chat(system, {"role": "user", "content": "my card was charged twice"}))
    two = finder.find(CHAT, chat(system, {"role": "user", "content": "reset my password"}))
    assert one is not None and two is not None
    assert one == two
    alone = prompt_tokens(CHAT, chat(system))
    assert one.tokens == alone  # the head alone, counted as a request would be
    assert cacheable_tokens(one.tokens) == alone - alone % 128 >= 1024


def test_the_head_is_everything_before_the_last_message_and_what_shapes_the_prompt() -> None:
    system = {"role": "system", "content": "S"}
    shot_q, shot_a = {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}
    last = {"role": "user", "content": "q2"}
    head = shared_head(CHAT, chat(system, shot_q, shot_a, last, temperature=0))
    assert head == {"model": "gpt-5-mini", "messages": [system, shot_q, shot_a]}
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    tools = [{"type": "function", "function": {"name": "f"}}]
    head = shared_head(CHAT, chat(last, response_format=schema, tools=tools))
    assert head == {"model": "gpt-5-mini", "response_format": schema, "tools": tools}
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "long rules"}, {"type": "text", "text": "q"}],
    }
    head = shared_head(CHAT, chat(parts))
    assert head is not None
    assert head["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "long rules"}]}
    ]


def test_what_has_nothing_to_share_has_no_group() -> None:
    finder = PrefixFinder()
    assert finder.find(CHAT, chat({"role": "user", "content": "hello"})) is None
    assert finder.find("/v1/embeddings", {"model": "e", "input": "x"}) is None
    assert finder.find(RESPONSES, {"model": "gpt-5", "input": "just this"}) is None


def test_responses_instructions_are_a_head_and_models_split_groups() -> None:
    finder = PrefixFinder()
    one = finder.find(RESPONSES, {"model": "gpt-5", "instructions": SYSTEM, "input": "a"})
    two = finder.find(RESPONSES, {"model": "gpt-5", "instructions": SYSTEM, "input": "b"})
    other = finder.find(RESPONSES, {"model": "gpt-5-mini", "instructions": SYSTEM, "input": "a"})
    assert one is not None and one == two and other is not None
    assert other.group != one.group
    assert cacheable_tokens(one.tokens) >= 1024


def test_short_heads_are_not_cacheable() -> None:
    assert cacheable_tokens(None) == 0
    assert cacheable_tokens(1023) == 0
    assert cacheable_tokens(1024) == 1024
    assert cacheable_tokens(1300) == 1280


def test_submit_records_each_items_group_and_head_length(tmp_path: Path, db_url: str) -> None:
    system = {"role": "system", "content": SYSTEM}
    lines = [
        {
            "custom_id": f"t{i}",
            "method": "POST",
            "url": CHAT,
            "body": chat(system, {"role": "user", "content": f"ticket {i}"}),
        }
        for i in range(3)
    ]
    lines.append(
        {
            "custom_id": "lone",
            "method": "POST",
            "url": CHAT,
            "body": chat({"role": "user", "content": "hi"}),
        }
    )
    job = write_jsonl(tmp_path / "tickets.jsonl", lines)
    result = CliRunner().invoke(cli, ["submit", str(job), "--detach", "--simulate", "--db", db_url])
    assert result.exit_code == 0, result.output
    with create_engine(db_url).connect() as conn:
        rows = conn.execute(
            text("SELECT custom_id, prefix_group, prefix_tokens FROM items ORDER BY position")
        ).all()
    groups = {row.prefix_group for row in rows[:3]}
    assert len(groups) == 1 and None not in groups
    assert {row.prefix_tokens for row in rows[:3]} == {prompt_tokens(CHAT, chat(system))}
    assert (rows[3].prefix_group, rows[3].prefix_tokens) == (None, None)
