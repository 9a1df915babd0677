"""The request's verifier threshold at the edge: a body field in [0, 1] reaching the router's request, anything
else a 400 naming it."""

from __future__ import annotations

import json

import pytest

from services.edge.openai_api import ApiError, parse_request


def body(**fields: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_the_body_field_reaches_the_router() -> None:
    request, raw = parse_request(body(verifier_threshold=0.4))
    assert request.to_router(raw, "t", "", "r").verifier_threshold == pytest.approx(0.4)
    request, raw = parse_request(body())
    assert not request.to_router(raw, "t", "", "r").HasField("verifier_threshold")


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.4", True])
def test_a_threshold_outside_a_share_is_a_400(bad: object) -> None:
    with pytest.raises(ApiError) as caught:
        parse_request(body(verifier_threshold=bad))
    assert caught.value.status == 400 and (caught.value.param or "").startswith("verifier_threshold")
