"""A gRPC caller's end-user ids (user, safety_identifier, prompt_cache_key in passthrough_json) are bounded as the
edge bounds a REST caller's (END_USER_ID_CHARS): past its bound, or of another type than a string, one is an
INVALID_ARGUMENT naming the field, before anything is routed; of any length it was hashed and stored, and of another
type sent on for the upstream to refuse after routing. At its bound, or null, it is served. A real router gRPC server
over the in-process store, a providers gRPC server on loopback answering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.passthrough import END_USER_ID_CHARS
from services.router.store import MemoryStore
from tests.router.servicer_kit import router_stub
from tests.router.test_cache_money import Answering, ask


@pytest.mark.parametrize("field", sorted(END_USER_ID_CHARS))
async def test_an_end_user_id_past_its_bound_or_no_string_is_refused_naming_it(tmp_path: Path, field: str) -> None:
    bound = END_USER_ID_CHARS[field]
    refused: list[ServiceError] = []
    provider = Answering()
    async with router_stub(tmp_path, MemoryStore(), provider) as router:

        async def complete(value: Any) -> None:
            request = ask("hello", "acme", passthrough_json=json.dumps({field: value}))
            await router.Complete(request, timeout=10)

        for value in ("é" * (bound + 1), "u" * 100_000, 7, ["u"], {"id": "u"}, True):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await complete(value)
            refused.append(ServiceError.from_rpc_error(caught.value))
        assert provider.generated == 0  # refused before anything was routed
        await complete("é" * bound)  # characters, not bytes
        await complete(None)  # left out, as a REST caller may write it
    assert provider.generated == 2
    assert {(e.code, e.reason, e.metadata["field"]) for e in refused} == {
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", field)
    }
    assert refused[0].message == f"{field} must be a string of at most {bound} characters, got {bound + 1} characters"
    assert refused[2].message == f"{field} must be a string of at most {bound} characters, got a JSON number"
    assert [e.message.rsplit("got ", 1)[1] for e in refused[3:]] == ["a JSON array", "a JSON object", "a JSON boolean"]
