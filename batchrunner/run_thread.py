"""Where a run's event loop runs when the caller's thread cannot host it: the run thread.

A notebook's thread already runs an event loop, in which a second one cannot start ("already
running asyncio"), so a run asked for there (and every run of the Python API, batchrunner/api.py)
goes to one worker thread with a loop of its own, and the caller waits for it or awaits it.
Stopping it from the caller (a Ctrl-C, a cancelled await) is here too.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

from batchrunner.errors import JobStopped

if TYPE_CHECKING:
    from anyio import CancelScope
    from anyio.lowlevel import EventLoopToken

T = TypeVar("T")
RUN_THREAD = "batchrunner-run"  # the run thread's name


def loop_running_here() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_run_thread: ThreadPoolExecutor | None = None
_running: list[tuple[CancelScope, EventLoopToken]] = []  # the run thread's run, to stop it
_busy_in: list[int] = []  # the run thread's id while it does a piece of work
_busy_lock = threading.Lock()


def in_run_thread(work: Callable[[], T]) -> Future[T]:
    """Start `work` in the run thread: the one thread that runs jobs for the Python API and
    for callers whose own thread runs an event loop (a notebook's, where a second one cannot
    start). One thread, always the same: a second run building its HTTP client (pyreqwest's)
    in another thread than the first crashed the process (a segfault)."""
    global _run_thread
    if _run_thread is None:
        _run_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=RUN_THREAD)
    return _run_thread.submit(_marked_busy, work)


def _marked_busy(work: Callable[[], T]) -> T:
    with _busy_lock:
        _busy_in.append(threading.get_ident())
    try:
        return work()
    finally:
        with _busy_lock:
            _busy_in.clear()


def wait_in_run_thread(work: Callable[[], T]) -> T:
    """`work` in the run thread, waited for. A Ctrl-C (a notebook's interrupt) meanwhile stops
    the run (see `stop_run_thread`), then is raised here."""
    future = in_run_thread(work)
    try:
        return future.result()
    except KeyboardInterrupt:
        stop_run_thread()
        wait([future])
        raise


def stop_run_thread() -> None:
    """Stop what the run thread runs. A concurrent run's task is cancelled, as a second Ctrl-C
    would stop it: the requests in flight abandoned, its items released for the next run.
    Anything else (a batch run between its polls) gets a KeyboardInterrupt, as a Ctrl-C in
    the CLI's batch wait: it stops at once, and what the batches return is settled next run."""
    from anyio.from_thread import run_sync

    if _running:
        for scope, token in list(_running):
            run_sync(scope.cancel, token=token)
        return
    import ctypes

    with _busy_lock:
        for ident in _busy_in:
            interrupt = ctypes.py_object(KeyboardInterrupt)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), interrupt)


async def stoppable(main: Callable[[], Awaitable[T]]) -> T:
    """`main`, in a scope `stop_run_thread` can cancel when this is the run thread's."""
    from anyio import CancelScope
    from anyio.lowlevel import current_token

    with CancelScope() as scope:
        here = threading.current_thread().name.startswith(RUN_THREAD)
        if here:
            _running.append((scope, current_token()))
        try:
            return await main()
        finally:
            if here:
                _running.clear()
    raise JobStopped("the run was stopped (interrupted) before it ended; the job is resumable")
