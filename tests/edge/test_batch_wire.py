"""The batch input file's parser, called directly: its limits."""

from __future__ import annotations

import json

import pytest

from services.batches import wire
from services.edge.openai_api import ApiError

LINE_BYTES = 8 * 1024 * 1024  # EDGE_MAX_BODY_BYTES's default, which bounds a line too


def entry(i: int) -> str:
    return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": wire.ENDPOINT, "body": {}})


def test_a_file_over_the_line_limit_is_refused_at_the_first_line_too_many() -> None:
    # Everything after the line past the limit is garbage: the parser must stop before it reads any of it.
    content = "\n".join([entry(i) for i in range(wire.MAX_LINES + 1)] + ["not json"]).encode()
    with pytest.raises(ApiError, match=f"over {wire.MAX_LINES} requests"):
        wire.check_lines(content, LINE_BYTES)


def test_a_file_at_the_line_limit_is_taken() -> None:
    assert wire.check_lines("\n".join(entry(i) for i in range(wire.MAX_LINES)).encode(), LINE_BYTES) == wire.MAX_LINES


def test_the_lines_found_are_the_requests_checked_each_parsed_alone() -> None:
    """The runner's lines (offsets into the file, parsed one at a time) are the requests the check counted: a
    byte-order mark, CRLF endings, blank and Unicode-whitespace lines skipped, U+2028 kept inside a string."""
    requests = [
        {"custom_id": "a", "method": "POST", "url": wire.ENDPOINT, "body": {"x": "one\u2028two"}},
        {"custom_id": "b\u00e9", "method": "POST", "url": wire.ENDPOINT, "body": {}},
        {"custom_id": "c", "method": "POST", "url": wire.ENDPOINT, "body": {"y": [1, 2]}},
    ]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in requests[:2]) + "\n\n \u3000\t\n"
    content = b"\xef\xbb\xbf" + (text + json.dumps(requests[2]) + "\r\n").encode()
    assert wire.check_lines(content, LINE_BYTES) == 3
    lines = wire.Lines.index(content)
    assert [lines[i] for i in range(len(lines))] == requests


def test_a_file_not_utf8_is_refused_as_such_even_past_its_first_bad_line() -> None:
    """As when the whole file was decoded first: not UTF-8 anywhere is the file's error, before any line's."""
    content = b"not json\n" + entry(1).encode() + b"\n\xff\n"
    with pytest.raises(ApiError, match="not UTF-8"):
        wire.check_lines(content, LINE_BYTES)
    with pytest.raises(ApiError, match="line 1 of the batch file is not JSON"):
        wire.check_lines(content[:-2], LINE_BYTES)


def test_a_custom_id_the_router_would_refuse_is_refused_at_upload() -> None:
    """The custom_id joins the request id, which holds no NUL (nor does PostgreSQL text): taken at upload, every such
    line failed at run time with a 400 naming `request_id`, a field its caller never sent."""
    line = {"custom_id": "a\u0000b", "method": "POST", "url": wire.ENDPOINT, "body": {}}
    content = (entry(1) + "\n" + json.dumps(line)).encode()
    with pytest.raises(ApiError, match="line 2 of the batch file has a custom_id with a NUL character"):
        wire.check_lines(content, LINE_BYTES)


@pytest.mark.parametrize("beside", [{"max_cost_usd": "0.001"}, {"headers": {"x-router-max-cost-usd": "0.001"}}])
def test_a_key_beside_a_lines_four_is_refused_at_upload_naming_it(beside: dict) -> None:
    """A line is custom_id, method, url and body: a cap written beside the body, not in it, was ignored and its request
    served uncapped."""
    line = {"custom_id": "a", "method": "POST", "url": wire.ENDPOINT, "body": {}, **beside}
    content = (entry(1) + "\n" + json.dumps(line)).encode()
    name = next(iter(beside))
    with pytest.raises(ApiError, match=f"line 2 of the batch file has {name!r} beside custom_id, method, url and body"):
        wire.check_lines(content, LINE_BYTES)


def test_a_long_key_beside_a_lines_four_is_named_by_its_first_64_characters() -> None:
    """A caller's key is quoted, not echoed whole: a 400 is no amplifier of what its caller sent."""
    line = {"custom_id": "a", "method": "POST", "url": wire.ENDPOINT, "body": {}, "k" * 2000: 1}
    with pytest.raises(ApiError) as caught:
        wire.check_lines(json.dumps(line).encode(), LINE_BYTES)
    assert f"has {'k' * 64!r} beside" in caught.value.message
