"""JSON logs on stderr, one object per line, so log pipelines need no parsing rules."""

from __future__ import annotations

import json
import logging
import sys
import time

# color_message: uvicorn's copy of msg with terminal colour codes, noise in a JSON line.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        # A record's own fields come first so that one named like a standard field (a ledger record's epoch
        # `ts`) cannot replace it: every line's ts is the same ISO format, whatever logged it.
        entry = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        entry.update(
            ts=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            level=record.levelname,
            service=self.service,
            logger=record.name,
            msg=record.getMessage(),
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
