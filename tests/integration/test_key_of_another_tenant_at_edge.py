"""A key the edge's key file moved to another tenant, its binding not moved (key_move): the router refuses it
KEY_OF_ANOTHER_TENANT and the edge answers a 502 in the router's words, with no `param`. The router's metadata names
the field `tenant` (of its own request: a gRPC caller acting for tenants sends it); an OpenAI caller never sends one,
so `"param": "tenant"` pointed at no field of its request. A real edge, router and providers over loopback, the
official SDK as the caller."""

from __future__ import annotations

import secrets
from pathlib import Path

import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam
from pydantic import SecretStr

from services.edge.keys import key_line
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import quiet_edge_settings, registry, sdk_edge, served_stack

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


async def test_a_key_moved_without_its_binding_is_a_502_naming_no_param(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUDGETAI_KEY", "sk-budget")
    monkeypatch.setenv("PREMIUMAI_KEY", "sk-premium")
    key, session = f"sk-{secrets.token_urlsafe(12)}", secrets.token_hex(4)
    with FakeOpenAI() as upstream:
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry(upstream.base_url, upstream.base_url)))
        async with served_stack(path, redis_url, None) as servers:
            router_addr = f"127.0.0.1:{servers['router'].port}"
            first = quiet_edge_settings(router_addr, api_keys=SecretStr(key_line(f"acme-{session}", key)))
            async with sdk_edge(first, key) as client:  # binds the key to acme
                await client.chat.completions.create(model="cheap-model", messages=QUESTION)
            moved = quiet_edge_settings(router_addr, api_keys=SecretStr(key_line(f"globex-{session}", key)))
            async with sdk_edge(moved, key) as client:
                with pytest.raises(openai.InternalServerError) as refused:
                    await client.chat.completions.create(model="cheap-model", messages=QUESTION)
    assert refused.value.status_code == 502
    assert refused.value.body == {
        "message": "this API key belongs to another tenant: a key serves the one tenant it was first used with",
        "type": "server_error",
        "param": None,
        "code": "key_of_another_tenant",
    }
