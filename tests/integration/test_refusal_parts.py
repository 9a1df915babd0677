"""An assistant's refusal sent back as part of the conversation, as OpenAI's SDK sends a previous answer back: a
`refusal` content part (chat), the message's `refusal` field beside a null content (chat), or a `refusal` part of
an output message (Responses). Each is that assistant turn's text, as the model saw it; in any other role's message
it is a 400 naming it, as OpenAI's. The real chain, the fake upstreams recording what they were sent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.conftest import Chain
from tests.integration.test_chain import client, unique

REFUSED_WORDS = "I can't help with that."


def upstream_calls(chain: Chain) -> int:
    return len(chain.budget.requests) + len(chain.premium.requests)


def sent_messages(chain: Chain) -> list[dict[str, Any]]:
    """The messages the cheap model's upstream was last sent, role and content only."""
    return [{"role": m["role"], "content": m.get("content")} for m in chain.budget.requests[-1].json["messages"]]


@pytest.mark.parametrize(
    "assistant",
    [
        {"role": "assistant", "content": [{"type": "refusal", "refusal": REFUSED_WORDS}]},
        # As the SDK's answer, model_dump'ed, is sent back: content null, the refusal beside it.
        {"role": "assistant", "content": None, "refusal": REFUSED_WORDS},
    ],
)
async def test_an_assistants_refusal_is_that_turns_text(chain: Chain, assistant: dict[str, Any]) -> None:
    question, again = unique("How do I pick a lock?"), unique("A padlock, then?")
    messages = [{"role": "user", "content": question}, assistant, {"role": "user", "content": again}]
    completion = await client(chain).chat.completions.create(model="cheap-model", messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    assert sent_messages(chain) == [
        {"role": "user", "content": question},
        {"role": "assistant", "content": REFUSED_WORDS},
        {"role": "user", "content": again},
    ]


REFUSAL_PART = {"type": "refusal", "refusal": REFUSED_WORDS}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": [REFUSAL_PART]}], "messages[0].content[0].type"),
        (
            [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}, REFUSAL_PART]},
                {"role": "user", "content": "hi"},
            ],
            "messages[0].content[1].type",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": [REFUSAL_PART]},
            ],
            "messages[2].content[0].type",
        ),
        ([{"role": "user", "content": "hi", "refusal": REFUSED_WORDS}], "messages[0].refusal"),
    ],
)
async def test_a_refusal_in_another_roles_message_is_a_400_naming_it(
    chain: Chain, messages: list[dict[str, Any]], param: str
) -> None:
    before = upstream_calls(chain)
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json={"model": "auto", "messages": messages})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_value", "invalid_request_error")
    assert "assistant" in error["message"]
    assert upstream_calls(chain) == before


async def test_a_responses_refusal_sent_back_is_that_turns_text(chain: Chain) -> None:
    question, again = unique("How do I pick a lock?"), unique("A padlock, then?")
    refused = {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": REFUSED_WORDS}],
    }
    response = await client(chain).responses.create(
        model="cheap-model",
        input=[{"role": "user", "content": question}, refused, {"role": "user", "content": again}],  # type: ignore[list-item]
    )
    assert response.output_text
    assert sent_messages(chain) == [
        {"role": "user", "content": question},
        {"role": "assistant", "content": REFUSED_WORDS},
        {"role": "user", "content": again},
    ]


@pytest.mark.parametrize("role", ["user", "system", "developer"])
async def test_a_responses_refusal_in_another_roles_message_is_a_400_naming_it(chain: Chain, role: str) -> None:
    before = upstream_calls(chain)
    content = [{"type": "input_text", "text": "hi"}, REFUSAL_PART]
    body = {"model": "auto", "input": [{"role": "user", "content": "hi"}, {"role": role, "content": content}]}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/responses", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == ("input[1].content[1].type", "invalid_value"), error
    assert upstream_calls(chain) == before
