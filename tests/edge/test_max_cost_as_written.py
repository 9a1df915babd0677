"""A max_cost_usd written as a JSON number reaches the router as its caller wrote it. Parsed as a float, a cap of more
than 17 significant digits a hair under a whole pico-dollar amount was rounded up to it (1.9999999999999999999e-6
became 2e-06, 2,000,000 pico-dollars), so a request could be charged past its cap: the same rounding
services/router/costs.py floor_pico refuses for a cap given as text. A chat completion's body and a batch input line's
(sent one by one by the runner, or in a provider batch by the deferral) alike."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from services.batches import wire
from services.batches.deferral import _request
from services.edge import legacy
from services.edge.openai_api import ApiError, parse_request
from services.router.costs import floor_pico
from tests.edge.test_batch_wire import LINE_BYTES

WRITTEN = "0.0000019999999999999999999"  # a hair under 2e-06 USD: 1,999,999 whole pico-dollars and a fraction
BODY = '{"messages": [{"role": "user", "content": "hi"}], "max_cost_usd": ' + WRITTEN + "}"


def test_a_chat_completions_cap_written_as_a_number_reaches_the_router_as_written() -> None:
    parsed, raw = parse_request(BODY.encode())
    message = parsed.to_router(raw, "t", "", "r1")
    assert Decimal(message.max_cost_usd) == Decimal(WRITTEN)
    assert floor_pico(Decimal(message.max_cost_usd)) == 1_999_999  # never 2,000,000: past the cap


def test_a_batch_lines_cap_written_as_a_number_reaches_the_router_as_written() -> None:
    line = '{"custom_id": "a", "method": "POST", "url": "' + wire.ENDPOINT + '", "body": ' + BODY + "}"
    content = line.encode()
    assert wire.check_lines(content, LINE_BYTES) == 1
    lines = wire.Lines.index(content)
    # As the runner sends a line (Runner._complete) ...
    parsed, raw = parse_request(json.dumps(lines[0]["body"]).encode())
    assert Decimal(parsed.to_router(raw, "t", "", "b:a").max_cost_usd) == Decimal(WRITTEN)
    # ... and as the deferral offers it to a provider batch.
    message = _request("b", {"tenant": b"t", "key_id": b"anonymous"}, lines[0])
    assert message is not None
    assert Decimal(message.max_cost_usd) == Decimal(WRITTEN)


def test_other_numbers_are_read_as_before() -> None:
    body = '{"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "max_cost_usd": 1e-3, "top_p": 0.9}'
    parsed, raw = parse_request(body.encode())
    message = parsed.to_router(raw, "t", "", "r1")
    assert Decimal(message.max_cost_usd) == Decimal("0.001")
    assert message.temperature == 0.5
    assert json.loads(message.passthrough_json) == {"top_p": 0.9}


def test_a_legacy_completions_cap_written_as_a_number_reaches_the_router_as_written() -> None:
    # /v1/completions is translated to a chat completion's body (written out again as JSON) before parse_request.
    body = '{"prompt": "hi", "max_cost_usd": ' + WRITTEN + "}"
    parsed, raw = parse_request(legacy.to_chat(body.encode()))
    message = parsed.to_router(raw, "t", "", "r1")
    assert Decimal(message.max_cost_usd) == Decimal(WRITTEN)
    assert floor_pico(Decimal(message.max_cost_usd)) == 1_999_999


@pytest.mark.parametrize("written", ['"1_0"', '" 1 "', '"\\u0661"', '"NaN"', '"0x10"', '"1e99999999999999999999999"'])
def test_a_cap_not_written_as_a_decimal_number_is_a_400(written: str) -> None:
    """Decimal() reads "1_0" as 10 and an Arabic-Indic digit as its value: refused, never taken as another amount."""
    with pytest.raises(ApiError) as err:
        parse_request(BODY.replace(WRITTEN, written).encode())
    assert err.value.status == 400 and err.value.param == "max_cost_usd"
