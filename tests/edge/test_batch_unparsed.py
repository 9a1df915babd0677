"""A stored batch line the run cannot parse, read leniently for its custom_id and its body's own error (unparsed.py)."""

from __future__ import annotations

import pytest

from services.batches import unparsed
from services.edge.openai_api import ApiError, parse_request

BODY = '{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}'


def test_a_line_whose_body_is_at_fault_gets_the_chat_routes_error_for_its_body_under_its_custom_id() -> None:
    read = unparsed.read(f'{{"custom_id": "b", "method": "POST", "body": {BODY}}}'.encode())
    with pytest.raises(ApiError) as alone:
        parse_request(BODY.encode())
    assert isinstance(read, unparsed.Unparsed) and read.custom_id == "b"
    assert (read.error.status, read.error.body()) == (alone.value.status, alone.value.body())


def test_a_line_at_fault_outside_a_good_body_says_what_is_wrong_with_the_line() -> None:
    body = '{"messages": [{"role": "user", "content": "hi"}]}'
    read = unparsed.read(f'{{"custom_id": "b", "body": {body}, "x": 1e400}}'.encode())
    assert isinstance(read, unparsed.Unparsed) and read.custom_id == "b"
    assert read.error.status == 400 and read.error.code == "invalid_json"
    assert read.error.message == "the batch line is not valid JSON: 1e400 is past a number's range"


@pytest.mark.parametrize(
    ("raw", "custom_id"),
    [
        (b"}{", None),
        (b'{"custom_id": "c", "body": {"mess', "c"),
        (b'{"custom_id": 7, "body": {}}', None),
        (b"\xff", None),
    ],
)
def test_a_corrupted_line_is_named_by_its_custom_id_as_far_as_it_can_be_read(raw: bytes, custom_id: str | None) -> None:
    read = unparsed.read(raw)
    assert isinstance(read, unparsed.Unparsed) and read.custom_id == custom_id == unparsed.custom_id(raw)
    assert read.error.status == 400


def test_a_line_that_parses_is_read_as_it_is() -> None:
    assert unparsed.read(b'{"custom_id": "a", "body": {"max_cost_usd": 0.5}}') == {
        "custom_id": "a",
        "body": {"max_cost_usd": 0.5},
    }
