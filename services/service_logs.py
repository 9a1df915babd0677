"""Where `python -m services` puts its services' logs: each service's JSON lines in a file of its own, in a directory
made for the run and kept after it (to read once the stack is gone), so that they do not bury the demo's output and
the launcher's own lines. What a reader of the terminal must not miss is still shown there, on the launcher's stderr:
a line at ERROR or above, and any line that is no log record (a traceback before logging was set up)."""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path

SHOWN_LEVELS = frozenset({"ERROR", "CRITICAL"})
POLL_S = 0.2


def run_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="llm-cost-router-logs-"))


def shown(line: str) -> bool:
    """Whether a line of a service's log is also shown on the terminal."""
    try:
        record = json.loads(line)
    except ValueError:
        return True
    return not isinstance(record, dict) or record.get("level") in SHOWN_LEVELS


def follow(path: Path, stop: threading.Event) -> None:
    """Show the lines of `path` worth showing as the service writes them, until `stop` is set and all is read."""
    with path.open(errors="replace") as log:
        pending = ""
        while True:
            pending += log.readline()
            if pending.endswith("\n"):
                if shown(pending):
                    sys.stderr.write(pending)
                    sys.stderr.flush()
                pending = ""
            elif stop.wait(POLL_S):
                rest = pending + log.read()
                sys.stderr.writelines(line for line in rest.splitlines(keepends=True) if shown(line))
                sys.stderr.flush()
                return
