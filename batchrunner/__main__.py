"""`python -m batchrunner` and the `batchrunner` command.

Importing the CLI takes a few tenths of a second. A Ctrl-C meanwhile is held until the imports
are done, then ends the command with one line and exit 3, as at any later moment: raised in the
middle of an import, it could leave a C extension half set up (orjson's crashes the process).
"""

import signal
import sys


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
    run_the_command()


if __name__ == "__main__":
    main()
