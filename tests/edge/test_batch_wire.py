"""The batch input file's parser, called directly: its limits."""

from __future__ import annotations

import json

import pytest

from services.batches import wire
from services.edge.openai_api import ApiError


def entry(i: int) -> str:
    return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": wire.ENDPOINT, "body": {}})


def test_a_file_over_the_line_limit_is_refused_at_the_first_line_too_many() -> None:
    # Everything after the line past the limit is garbage: the parser must stop before it reads any of it.
    content = "\n".join([entry(i) for i in range(wire.MAX_LINES + 1)] + ["not json"]).encode()
    with pytest.raises(ApiError, match=f"over {wire.MAX_LINES} requests"):
        wire.parse_lines(content)


def test_a_file_at_the_line_limit_is_taken() -> None:
    assert len(wire.parse_lines("\n".join(entry(i) for i in range(wire.MAX_LINES)).encode())) == wire.MAX_LINES
