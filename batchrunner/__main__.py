"""`python -m batchrunner` and the `batchrunner` command.

Importing the CLI takes a few tenths of a second. A Ctrl-C meanwhile is held until the imports
are done, then ends the command with one line and exit 3, as at any later moment: raised in the
middle of an import, it could leave a C extension half set up (orjson's crashes the process).

A command that has ended (its ledger closed, its output written) leaves at once: the
interpreter's own teardown of every module it loaded takes a quarter second of CPU, which a
fleet of workers sharing a few cores would spend one after another before the last is gone.
"""

import atexit
import contextlib
import os
import signal
import sys
from typing import NoReturn


def main() -> None:
    pressed: list[int] = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from batchrunner.cli import main as run_the_command
    finally:
        signal.signal(signal.SIGINT, before)
    if pressed:
        sys.stderr.write("interrupted: nothing was started\n")
        sys.exit(3)
    try:
        run_the_command()
    except SystemExit as ended:
        leave(ended.code)
    leave(0)


def leave(code: object) -> NoReturn:
    """End the process with `code` (as SystemExit takes it) after what exiting must still do:
    the exit handlers (logging's flush among them) and the standard streams, not the rest of
    the interpreter's teardown. Only for a command that has ended: an error still unwinding
    goes the usual way, traceback and all."""
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to flush into
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
