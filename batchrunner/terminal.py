"""Text made safe for a terminal, at the print boundary (the CLI's messages and tables, the logs).

custom_ids, job and model names and servers' error messages come from elsewhere and may hold
control characters: an escape sequence in them would retitle the window, clear the screen or
hide a line when printed. Every C0 and C1 control character (and DEL) is shown as a visible
escape instead, `\\x1b` (in JSON `\\u001b`, which parses back to the same text); a newline stays
where the text is lines (a table, a message) and is escaped where it is one line (a log line).
Stored data and exports are never changed: this is for what is printed only.
"""

from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, *, lines: bool = True, json: bool = False) -> str:
    """`text` with its control characters escaped; `lines` keeps newlines as they are, `json`
    writes the escapes as JSON's (for JSON text, where orjson already escaped the C0 ones)."""
    pattern = CONTROL if lines else CONTROL_OR_NEWLINE
    form = "\\u{:04x}" if json else "\\x{:02x}"
    return pattern.sub(lambda found: form.format(ord(found.group())), text)
