"""Every log line is one JSON object whose standard fields mean the same whatever logged it."""

from __future__ import annotations

import json
import logging

from llmrouter.logs import JsonFormatter


def line(**extra: object) -> dict:
    record = logging.LogRecord("llmrouter.router", logging.INFO, __file__, 1, "request served", None, None)
    record.__dict__.update(extra)
    return json.loads(JsonFormatter("router").format(record))


def test_a_record_field_named_like_a_standard_one_does_not_replace_it() -> None:
    # The ledger record logged with each request carries an epoch `ts`; log pipelines parse one ISO format.
    entry = line(ts=1796130756.79, level="nonsense", service="edge", request_id="r1")
    assert entry["ts"].endswith("Z") and entry["ts"][:4].isdigit() and "T" in entry["ts"]
    assert (entry["level"], entry["service"], entry["msg"]) == ("INFO", "router", "request served")
    assert entry["request_id"] == "r1"  # the record's own fields are kept


def test_uvicorns_coloured_copy_of_the_message_is_left_out() -> None:
    entry = line(color_message="Finished server process [\x1b[36m%d\x1b[0m]")
    assert "color_message" not in entry and entry["msg"] == "request served"
