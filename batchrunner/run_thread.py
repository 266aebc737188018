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
from contextlib import suppress
from typing import TYPE_CHECKING, TypeVar

from batchrunner.errors import JobStopped

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

    from anyio import CancelScope

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
_lock = threading.Lock()  # guards the two below
_busy_in: list[int] = []  # the run thread's id while it does a piece of work
_running: list[tuple[CancelScope, AbstractEventLoop]] = []  # its event loop's run, to cancel


def in_run_thread(work: Callable[[], T]) -> Future[T]:
    """Start `work` in the run thread: the one thread that runs jobs for the Python API and
    for callers whose own thread runs an event loop (a notebook's, where a second one cannot
    start); runs asked for meanwhile wait their turn. One thread, always the same: a second
    run building its HTTP client (pyreqwest's) in another thread than the first crashed the
    process (a segfault)."""
    global _run_thread
    if _run_thread is None:
        _run_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=RUN_THREAD)
    return _run_thread.submit(_marked_busy, work)


def _marked_busy(work: Callable[[], T]) -> T:
    with _lock:
        _busy_in.append(threading.get_ident())
    try:
        return work()
    finally:
        while True:  # an interrupt meant for the work may land here, just after it
            try:
                with _lock:
                    _busy_in.clear()
                break
            except KeyboardInterrupt:
                continue


def wait_in_run_thread(work: Callable[[], T]) -> T:
    """`work` in the run thread, waited for. A Ctrl-C (a notebook's interrupt) meanwhile stops
    it (see `stop_run_thread`), then is raised here."""
    future = in_run_thread(work)
    try:
        return future.result()
    except KeyboardInterrupt:
        stop_run_thread(future)
        wait([future])
        raise


def stop_run_thread(future: Future[T]) -> None:
    """Stop the work `future` stands for: not started, it never will; running, a concurrent
    run's task is cancelled, as a second Ctrl-C would stop it (the requests in flight
    abandoned, their items released for the next run), and anything else (a batch run between
    its polls) gets a KeyboardInterrupt, as a Ctrl-C in the CLI's batch wait does."""
    import ctypes

    if future.cancel():
        return
    with _lock:
        if not future.running():
            return  # it ended meanwhile
        scopes = list(_running)
        if not scopes:
            for ident in _busy_in:
                interrupt = ctypes.py_object(KeyboardInterrupt)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), interrupt)
    for scope, loop in scopes:
        with suppress(RuntimeError):  # its loop closed: the run has ended anyway
            loop.call_soon_threadsafe(scope.cancel)


async def stoppable(main: Callable[[], Awaitable[T]]) -> T:
    """`main`, in a scope `stop_run_thread` can cancel when this is the run thread's."""
    import asyncio

    from anyio import CancelScope

    with CancelScope() as scope:
        here = threading.current_thread().name.startswith(RUN_THREAD)
        if here:
            with _lock:
                _running.append((scope, asyncio.get_running_loop()))
        try:
            return await main()
        finally:
            if here:
                with _lock:
                    _running.clear()
    raise JobStopped("the run was stopped (interrupted) before it ended; the job is resumable")
