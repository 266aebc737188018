"""Crash safety of Batch API mode, with real processes: SIGKILL at random moments of a
`submit --mode batch --wait` and the `run --wait`s after it, and kills while an upload or a
create is in flight.

The fake server runs in a thread of the test process and keeps every file and batch it was
given; the `batchrunner` processes under test are children that the test kills. At the end:
every item succeeded exactly once in the ledger, the fake answered every custom_id once, and
every remote batch is known to the ledger exactly once, with no item in two batches that ran.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import openai
import pytest

from batchrunner.fake import FakeServer
from tests.conftest import chat_line, write_jsonl
from tests.test_crash import assert_each_item_succeeded_once, batchrunner, finish, query, wait_for

TOTAL = 600
PER_BATCH = 50
EXPIRE_AFTER = 25  # a batch answers 25 lines and expires the rest: 5 waves of repacking
MAX_ROUNDS = 8
MIN_KILLS = 4
BUDGET_S = 25.0  # for the killing rounds; the final run comes after
# Where a kill lands: after a few more calls of one kind (then a few milliseconds more), so
# that kills fall on uploads, creates, polls and the downloads of reconciling alike.
KILL_AFTER = {"upload": (1, 6), "create": (1, 6), "retrieve": (1, 40), "content": (1, 8)}


def cli_args(db: Path, fake: FakeServer) -> tuple[str, ...]:
    return (
        "--db",
        f"sqlite:///{db}",
        "--base-url",
        fake.base_url,
        "--batch-max-requests",
        str(PER_BATCH),
        "--wait",
        "--poll-interval",
        "0.05",
    )


def settle_every_remote_batch(fake: FakeServer) -> None:
    """Look at every batch the fake holds (as the SDK lists them), so that each one reaches
    its end and writes its files: a batch nobody polls would otherwise never answer, and a
    duplicate nobody knew of would go unnoticed."""
    client = openai.OpenAI(api_key="sk-x", base_url=fake.base_url, max_retries=0, timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        statuses = {b.id: b.status for b in client.batches.list(limit=100)}
        assert len(statuses) == len(fake.batch_api.batches)
        if set(statuses.values()) <= {"completed", "failed", "expired", "cancelled"}:
            return
        time.sleep(0.05)
    raise AssertionError(f"remote batches still running: {statuses}")


def assert_no_duplicate_remote_batch(db: Path, fake: FakeServer) -> None:
    """Every remote batch maps to exactly one ledger batch, and no item ran in two batches."""
    settle_every_remote_batch(fake)
    remote = fake.batch_api.batches
    rows = query(db, "SELECT id, remote_id, state, remote_status FROM batches")
    known = Counter(str(remote_id) for _, remote_id, _, _ in rows if remote_id is not None)
    assert set(known.values()) == {1}, "a remote batch recorded twice"
    assert set(known) == set(remote), "a remote batch the ledger does not know (or a ghost)"
    assert fake.batch_api.batches_created == len(remote)
    for _, remote_id, state, remote_status in rows:
        if remote_id is None:
            assert state == "abandoned", "a batch left half-sent"
        else:
            assert (state, remote_status) == ("settled", remote[str(remote_id)].settled)

    # The lines each remote batch ran (a failed or cancelled batch ran none, an expired one
    # its first EXPIRE_AFTER): every item in exactly one.
    ran: Counter[str] = Counter()
    for batch in remote.values():
        kept = {"completed": len(batch.lines), "expired": EXPIRE_AFTER}.get(batch.settled or "", 0)
        ran.update(line["custom_id"] for line in batch.lines[:kept])
    assert ran == Counter({f"item-{i}": 1 for i in range(TOTAL)})
    assert fake.batch_api.lines_by_id == ran  # and the fake answered each of them once

    # Each item's answer came from the remote batch its ledger batch names.
    by_row = {row_id: str(remote_id) for row_id, remote_id, _, _ in rows if remote_id}
    holders = query(db, "SELECT custom_id, batch_id FROM items")
    for custom_id, batch_id in holders:
        lines = remote[by_row[int(str(batch_id))]].lines
        assert custom_id in {line["custom_id"] for line in lines}


def test_sigkill_at_random_moments_never_duplicates_a_remote_batch(
    tmp_path: Path, fake: FakeServer
) -> None:
    rng = random.Random(20261124)
    fake.config.batch_expire_after = EXPIRE_AFTER
    fake.config.batch_in_progress_s = 0.6  # a wave of batches outlives a round or two
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(TOTAL)])
    db = tmp_path / "ledger.db"
    common = cli_args(db, fake)
    submit = ("submit", str(job), "--mode", "batch", *common)
    run = ("run", "1", *common)
    api = fake.batch_api

    started = time.monotonic()
    kills: list[str] = []
    for round_ in range(MAX_ROUNDS):
        if time.monotonic() - started > BUDGET_S:
            break
        recorded = query(db, "SELECT count(*) FROM jobs") == [(1,)]
        before = api.total_calls
        proc = batchrunner(*(run if recorded else submit), stderr=tmp_path / f"round{round_}.err")
        # Started up (it talks to the server): now kill after a few more calls of one kind,
        # or at a random moment if none comes soon.
        wait_for(lambda: api.total_calls > before or proc.poll() is not None, timeout=30)  # noqa: B023
        kind = rng.choice(sorted(KILL_AFTER))
        target = api.calls[kind] + rng.randint(*KILL_AFTER[kind])
        wait_for(
            lambda: api.calls[kind] >= target or proc.poll() is not None,  # noqa: B023
            timeout=rng.uniform(0.05, 1.0),
        )
        time.sleep(rng.uniform(0, 0.03))
        if proc.poll() is not None:
            assert proc.returncode == 0, (tmp_path / f"round{round_}.err").read_text()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)  # reaped: the next run sees the dead run's pid is gone
        kills.append(f"{kind} {api.calls[kind]}/{target}")
    assert len(kills) >= MIN_KILLS, f"the job finished before enough kills: {kills}"

    done = finish(*run, timeout=60)
    assert done.returncode == 0, done.stderr
    assert query(db, "SELECT count(*), min(state) FROM jobs") == [(1, "completed")]
    assert_each_item_succeeded_once(db, TOTAL)
    assert query(db, "SELECT count(*) FROM batches WHERE state IN ('packing', 'uploaded')") == [
        (0,)
    ]
    assert_no_duplicate_remote_batch(db, fake)


@pytest.mark.parametrize("moment", ["upload", "create"])
def test_a_kill_while_a_request_is_in_flight_is_resumed_without_a_duplicate(
    tmp_path: Path, fake: FakeServer, moment: str
) -> None:
    """The server has the file (or the batch) but the killed client never heard back."""
    api = fake.batch_api
    setattr(api, f"{moment}_delay_s", 30.0)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(30)])
    db = tmp_path / "ledger.db"
    common = cli_args(db, fake)
    proc = batchrunner("submit", str(job), "--mode", "batch", *common, stderr=tmp_path / "err")
    try:

        def held() -> bool:
            return len(api.files) == 1 if moment == "upload" else bool(api.batches)

        assert wait_for(lambda: held() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, (tmp_path / "err").read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    setattr(api, f"{moment}_delay_s", 0.0)
    rows = query(db, "SELECT state, remote_id, input_file_id FROM batches")
    if moment == "upload":  # uploaded, but the ledger never learnt the file's id
        assert rows == [("packing", None, None)]
        orphan = next(iter(api.files))
    else:  # created, but the ledger never learnt the batch's id
        (stored,) = api.files
        assert rows == [("uploaded", None, stored)]

    done = finish("run", "1", *common, timeout=60)
    assert done.returncode == 0, done.stderr
    assert_each_item_succeeded_once(db, 30)
    assert api.batches_created == 1  # adopted by its metadata token, not created again
    (remote,) = api.batches.values()
    rows = query(db, "SELECT state, remote_id, input_file_id FROM batches")
    assert rows == [("settled", remote.id, None)]  # its files deleted once it was settled
    if moment == "upload":
        assert remote.input_file_id != orphan  # uploaded again; the first copy is only a file
        assert list(api.files) == [orphan]  # which no batch ever named
    else:
        assert api.files == {}
    assert set(api.lines_by_id.values()) == {1} and len(api.lines_by_id) == 30


def test_a_kill_between_reconciling_and_deleting_loses_nothing_and_the_next_run_deletes(
    tmp_path: Path, fake: FakeServer
) -> None:
    """The batch is settled and its results are in the ledger; its first delete is in flight
    when the process dies. The next run answers nothing again and deletes what is left."""
    api = fake.batch_api
    api.delete_delay_s = 30.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(30)])
    db = tmp_path / "ledger.db"
    common = cli_args(db, fake)
    proc = batchrunner("submit", str(job), "--mode", "batch", *common, stderr=tmp_path / "err")
    try:
        assert wait_for(lambda: api.calls["delete"] > 0 or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, (tmp_path / "err").read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert_each_item_succeeded_once(db, 30)  # reconciled before any delete
    (remote,) = api.batches.values()
    rows = query(db, "SELECT state, input_file_id, output_file_id FROM batches")
    assert rows == [("settled", remote.input_file_id, remote.output_file_id)]
    assert set(api.files) == {remote.input_file_id, remote.output_file_id}  # none deleted yet
    api.delete_delay_s = 0.0

    done = finish("run", "1", *common, timeout=60)
    assert done.returncode == 0, done.stderr
    assert_each_item_succeeded_once(db, 30)
    assert api.batches_created == 1 and set(api.lines_by_id.values()) == {1}
    assert query(db, "SELECT state, input_file_id, output_file_id FROM batches") == [
        ("settled", None, None)
    ]
    assert wait_for(lambda: api.files == {}, timeout=10)  # (the killed run's delete lands too)
