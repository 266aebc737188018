"""The Python API (batchrunner/api.py): the README's example inside a running event loop, jobs
from requests made in Python, progress, results paged and as tables, a run stopped from Python."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import batchrunner
from batchrunner import JobFileError, ProgressSnapshot, UsageError
from batchrunner.export import RESULTS_CSV, columns_of
from batchrunner.fake import FakeConfig, FakeServer, run_in_thread

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    """The Python code block of the README's "From Python" section."""
    text = README.read_text()
    section = text[text.index("## From Python") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README's From Python section has no python block"
    return found.group(1)


def chat(index: int) -> dict[str, Any]:
    """A request body whose prompt names its index."""
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {index}"}]}


def answer(record: dict[str, Any]) -> str:
    return str(record["response"]["choices"][0]["message"]["content"])


def test_the_readme_example_runs_inside_a_running_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = readme_example()
    ticks = 0

    async def notebook() -> list[dict[str, Any]]:
        nonlocal ticks
        namespace: dict[str, Any] = {}
        exec(code, namespace)  # a cell: the blocking form, called with this loop running
        # then the async form, in the same loop, which stays free while the job runs
        with batchrunner.submit(
            [chat(i) for i in range(30)], db="sqlite:///answers.db", simulate=True
        ) as job:
            task = asyncio.ensure_future(job.run_async())
            while not task.done():
                await asyncio.sleep(0.001)
                ticks += 1
            report = task.result()
            assert (report.state, report.stop_reason) == ("completed", None)
            return list(job.results())

    records = asyncio.run(notebook())
    printed = capsys.readouterr().out
    assert "completed" in printed.splitlines()
    for custom_id, question in (("q0", "What is 2 + 2?"), ("q2", "Say hello in French.")):
        assert re.search(rf"^{custom_id} succeeded .*echo: {re.escape(question)}", printed, re.M)
    assert "3/3 done" in printed and "output_text" in printed
    assert (tmp_path / "answers.db").is_file()
    assert [r["custom_id"] for r in records] == [str(i) for i in range(30)]  # ids: the indexes
    assert all(answer(r) == f"echo: question {r['custom_id']}" for r in records)
    assert ticks > 0  # the loop ran other tasks while the job did


def test_the_public_run_function_works_inside_a_running_event_loop(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """What the issue reported: `run` from a notebook failed with "already running"."""
    job = batchrunner.submit([chat(i) for i in range(10)], db=db_url, base_url=fake.base_url)

    async def cell() -> batchrunner.RunReport:
        return batchrunner.run(job.ledger, job.id)

    try:
        report = asyncio.run(cell())
        assert report.state == "completed"
        assert job.summary().counts == {"succeeded": 10}
    finally:
        job.close()


def test_results_page_through_a_large_job_each_request_answered_once(
    ledger_url: str, fake: FakeServer
) -> None:
    def requests() -> Iterator[dict[str, Any]]:  # a generator: never a list in memory
        for i in range(5000):
            yield {"custom_id": f"r{i}", **chat(i)}

    with batchrunner.submit(
        requests(), db=ledger_url, base_url=fake.base_url, concurrency=32
    ) as job:
        assert job.run().state == "completed"
        results = job.results()
        assert isinstance(results, Iterator)
        seen = 0
        for i, record in enumerate(results):  # 5 pages of the ledger's 1,000
            assert (record["custom_id"], record["status"]) == (f"r{i}", "succeeded")
            assert answer(record) == f"echo: question {i}"
            seen += 1
    assert seen == 5000
    assert fake.total_requests == 5000


def test_progress_callbacks_get_increasing_counts_tokens_and_cost(
    db_url: str, fake: FakeServer
) -> None:
    snapshots: list[ProgressSnapshot] = []
    with batchrunner.submit(
        [chat(i) for i in range(300)], db=db_url, base_url=fake.base_url, concurrency=4
    ) as job:
        job.run(on_progress=snapshots.append)
        summary = job.summary()
    assert len(snapshots) > 1
    dones = [s.done for s in snapshots]
    assert dones == sorted(dones) and dones[0] < 300
    tokens = [s.output_tokens for s in snapshots]
    assert tokens == sorted(tokens)
    last = snapshots[-1]
    assert (last.done, last.succeeded, last.failed, last.total) == (300, 300, 0, 300)
    assert (last.input_tokens, last.output_tokens) == (summary.input_tokens, summary.output_tokens)
    assert last.cost_usd == pytest.approx(summary.cost_usd)


def test_a_bad_request_names_its_index_and_records_nothing(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    requests: list[Any] = [chat(0), chat(1), chat(2), {"model": "gpt-4o-mini"}, chat(4)]
    with pytest.raises(JobFileError) as raised:
        batchrunner.submit(requests, db=f"sqlite:///{db}")
    assert str(raised.value) == 'requests[3]: missing "messages" for /v1/chat/completions'
    assert [p.path for p in raised.value.problems] == ["requests[3]"]

    duplicated = [{"custom_id": "a", **chat(0)}, {"custom_id": "a", **chat(1)}]
    with pytest.raises(JobFileError, match=re.escape('requests[1]: duplicate custom_id "a"')):
        batchrunner.submit(duplicated, db=f"sqlite:///{db}")

    unserialisable: list[Any] = [chat(0), {**chat(1), "temperature": {0.5}}, "not a request"]
    with pytest.raises(JobFileError) as raised:
        batchrunner.submit(unserialisable, db=f"sqlite:///{db}")
    assert str(raised.value).startswith("requests[1]: not JSON: ")

    with pytest.raises(JobFileError, match=re.escape("requests[0]: expected a JSON object")):
        batchrunner.submit([cast(Any, "not a request")], db=f"sqlite:///{db}")
    with pytest.raises(JobFileError, match="no requests given"):
        batchrunner.submit([], db=f"sqlite:///{db}")
    no_model = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(JobFileError, match=re.escape('requests[0]: missing "model" (put it in')):
        batchrunner.submit(no_model, db=f"sqlite:///{db}")
    with pytest.raises(UsageError, match="mode must be one of concurrent, batch, got 'batches'"):
        batchrunner.submit([chat(0)], db=f"sqlite:///{db}", mode="batches")
    with pytest.raises(UsageError, match="unknown setting 'concurency'"):
        batchrunner.submit([chat(0)], db=f"sqlite:///{db}", concurency=4)
    assert not db.exists()  # no ledger was even created


def test_a_duplicate_is_named_by_the_index_of_its_first(tmp_path: Path) -> None:
    duplicated = [chat(0), {"custom_id": "a", **chat(1)}, chat(2), {"custom_id": "a", **chat(3)}]
    with pytest.raises(JobFileError) as raised:
        batchrunner.submit(duplicated, db=f"sqlite:///{tmp_path}/l.db")
    assert str(raised.value) == 'requests[3]: duplicate custom_id "a" (first on requests[1])'


def test_tables_have_a_row_per_item_and_the_csv_exports_columns(db_url: str) -> None:
    requests = [chat(i) for i in range(25)]
    with batchrunner.submit(requests, db=db_url, simulate=True) as job:
        job.run()
        frame = job.to_pandas()
        table = job.to_arrow()
    names = [column.name for column in columns_of(RESULTS_CSV)]
    assert list(frame.columns) == names and table.column_names == names
    assert len(frame) == table.num_rows == 25
    assert list(frame["output_text"]) == [f"echo: question {i}" for i in range(25)]
    assert table.column("status").to_pylist() == ["succeeded"] * 25
    assert table.column("input_tokens").type == "int64"


def test_tables_without_their_package_say_which_to_install(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with batchrunner.submit([chat(0)], db=db_url, simulate=True) as job:
        monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(ImportError, match=r"Job.to_pandas\(\) needs pandas"):
            job.to_pandas()
        with pytest.raises(ImportError, match=r"batchrunner\[dataframes\]"):
            job.to_arrow()


def test_a_job_file_and_an_open_job(tmp_path: Path, db_url: str, fake: FakeServer) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text(
        "".join(f'{{"messages": [{{"role": "user", "content": "q{i}"}}]}}\n' for i in range(5))
    )
    with batchrunner.submit(path, db=db_url, base_url=fake.base_url, model="gpt-4o-mini") as job:
        job_id = job.id
    with pytest.raises(UsageError, match=f"already job {job_id}"):
        batchrunner.submit(path, db=db_url, model="gpt-4o-mini")
    with batchrunner.open_job("questions", db=db_url) as again:
        assert again.id == job_id
        assert again.run().state == "completed"
    with batchrunner.open_job(db=db_url) as latest:
        assert [r["custom_id"] for r in latest.results()] == ["1", "2", "3", "4", "5"]
    with pytest.raises(UsageError, match="no job 'nothing'"):
        batchrunner.open_job("nothing", db=db_url)


def test_a_cancelled_await_stops_the_run_resumably(db_url: str) -> None:
    slow = FakeConfig(seed=3, latency_ms=30.0)
    with run_in_thread(slow) as server:
        requests = [chat(i) for i in range(400)]
        with batchrunner.submit(
            requests, db=db_url, base_url=server.base_url, concurrency=4
        ) as job:
            started = threading.Event()

            async def cell() -> None:
                task = asyncio.ensure_future(job.run_async(on_progress=lambda p: started.set()))
                for _ in range(2000):  # at most 20 s for a first result
                    if started.is_set():
                        break
                    await asyncio.sleep(0.01)
                assert started.is_set()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(cell())
            stopped = job.summary()
            assert stopped.stop_reason == "interrupted"
            assert stopped.counts.get("pending", 0) > 0 and "running" not in stopped.counts
            assert job.run().state == "completed"  # resumed in the same process
            assert job.summary().counts == {"succeeded": 400}
            # sent again: at most the requests in flight when it stopped (no recorded answer)
            assert 400 <= server.total_requests <= 400 + 4


QUICK_BATCHES = FakeConfig(
    seed=5, batch_validating_s=0.1, batch_in_progress_s=0.5, batch_finalizing_s=0.1
)


@pytest.mark.parametrize("mode", ["concurrent", "batch"])
def test_a_ctrl_c_stops_a_blocking_run_resumably(db_url: str, mode: str) -> None:
    """A notebook's interrupt is a SIGINT to the kernel: KeyboardInterrupt in the thread that
    waits for the run. The run stops (a concurrent one cancelled, a batch one between its
    polls), the job is resumable, and resumed it completes. (Not simulated: a simulated batch
    job's batches live in the fake server of the run that was stopped.)"""
    requests = [chat(i) for i in range(200)]
    with (
        run_in_thread(QUICK_BATCHES) as server,
        batchrunner.submit(
            requests,
            db=db_url,
            base_url=server.base_url,
            mode=mode,
            concurrency=2,
            batch_max_requests=50,
        ) as job,
    ):
        interrupted = threading.Event()

        def interrupt(progress: ProgressSnapshot) -> None:
            if not interrupted.is_set():
                interrupted.set()
                os.kill(os.getpid(), signal.SIGINT)  # as Jupyter's interrupt button

        async def cell() -> None:  # the blocking form, inside a running loop
            # as ipykernel has it while a cell runs (asyncio.run's own handler only cancels
            # its main task, once that task next runs)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            job.run(on_progress=interrupt, poll_s=0.05)

        with pytest.raises(KeyboardInterrupt):
            asyncio.run(cell())
        stopped = job.summary()
        assert interrupted.is_set() and stopped.stop_reason == "interrupted"
        assert stopped.counts.get("succeeded", 0) < 200
        assert job.run(poll_s=0.05).state == "completed"
        assert job.summary().counts == {"succeeded": 200}


def test_runs_take_turns_and_a_cancelled_await_stops_only_its_own(tmp_path: Path) -> None:
    with run_in_thread(FakeConfig(seed=4, latency_ms=20.0)) as server:
        first = batchrunner.submit(
            [chat(i) for i in range(200)],
            db=f"sqlite:///{tmp_path}/a.db",
            base_url=server.base_url,
            concurrency=4,
        )
        second = batchrunner.submit(
            [chat(i) for i in range(10)],
            db=f"sqlite:///{tmp_path}/b.db",
            base_url=server.base_url,
        )
        try:

            async def cell() -> batchrunner.RunReport:
                running = asyncio.ensure_future(first.run_async())
                waiting = asyncio.ensure_future(second.run_async())  # its turn comes after
                await asyncio.sleep(0.05)
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                return await running

            assert asyncio.run(cell()).state == "completed"
            assert first.summary().counts == {"succeeded": 200}
            untouched = second.summary()
            assert (untouched.counts, untouched.stop_reason) == ({"pending": 10}, None)
            assert second.run().state == "completed"
        finally:
            first.close()
            second.close()
