"""One access-log line per HTTP request, written off the hot path: the request only appends a tuple to a deque
(no lock, no thread wake-up: a queue.Queue's notify cost 6% of the edge's CPU); a thread wakes every
WRITE_INTERVAL_S, formats what is there as JSON lines, writes and flushes them. The deque is bounded: if the
log's destination stalls, lines are dropped and counted rather than memory growing or requests waiting."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TextIO

from prometheus_client import Counter

DROPPED = Counter(
    "llmrouter_edge_access_log_dropped_total", "access-log lines dropped: the queue was full, or the destination failed"
)
QUEUE_LINES = 10_000
WRITE_INTERVAL_S = 0.05

# (unix time, method, path, status, duration s, request id, routed model)
Entry = tuple[float, str, str, int, float, str, str]


class AccessLog:
    def __init__(self, out: TextIO, close_out: bool = False) -> None:
        self._out = out
        self._close_out = close_out
        self._lines: deque[Entry] = deque()
        self._max_lines = QUEUE_LINES
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="access-log", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, destination: str) -> AccessLog | None:
        """`off`: none; `stderr`; anything else: a file path, appended to."""
        if destination == "off":
            return None
        if destination == "stderr":
            return cls(sys.stderr)
        return cls(Path(destination).open("a", encoding="utf-8", buffering=1 << 16), close_out=True)

    def record(self, entry: Entry) -> None:
        """Called on the event loop only (the one appender: the length check and the append are not torn)."""
        if len(self._lines) >= self._max_lines:
            DROPPED.inc()
        else:
            self._lines.append(entry)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        self._thread.join()
        if self._close_out:
            self._out.close()

    def _write(self) -> None:
        while not self._stop.wait(WRITE_INTERVAL_S):
            self._write_queued()
        self._write_queued()

    def _write_queued(self) -> None:
        written = []
        while self._lines:
            written.append(self._line(self._lines.popleft()))
        try:
            self._out.write("".join(written))
            self._out.flush()
        except (OSError, ValueError):
            # A destination that fails (a full disk, a closed pipe or stream) loses these lines, counted, and the
            # writer goes on: raised, it ended the thread, and every later line was dropped for want of a writer.
            DROPPED.inc(len(written))

    @staticmethod
    def _line(entry: Entry) -> str:
        ts, method, path, status, seconds, request_id, model = entry
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
            "service": "edge",
            "logger": "access",
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1e3, 2),
        }
        if request_id:
            line["request_id"] = request_id
        if model:
            line["model"] = model
        return json.dumps(line) + "\n"
