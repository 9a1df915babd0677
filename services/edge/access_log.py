"""One access-log line per HTTP request, written off the hot path: the request only queues a tuple; a thread
formats the JSON lines and writes them, flushing whenever the queue runs dry. The queue is bounded: if the
log's destination stalls, lines are dropped and counted rather than memory growing or requests waiting."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from prometheus_client import Counter

DROPPED = Counter("llmrouter_edge_access_log_dropped_total", "access-log lines dropped: the queue was full")
QUEUE_LINES = 10_000
_STOP = None

# (unix time, method, path, status, duration s, request id, routed model)
Entry = tuple[float, str, str, int, float, str, str]


class AccessLog:
    def __init__(self, out: TextIO, close_out: bool = False) -> None:
        self._out = out
        self._close_out = close_out
        self._queue: queue.Queue[Entry | None] = queue.Queue(QUEUE_LINES)
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
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            DROPPED.inc()

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join()
        if self._close_out:
            self._out.close()

    def _write(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is _STOP:
                self._out.flush()
                return
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
            self._out.write(json.dumps(line) + "\n")
            if self._queue.empty():
                self._out.flush()
