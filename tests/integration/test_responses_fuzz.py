"""Property: whatever a caller puts in a Responses request (items of every kind and none, parts, tools, formats,
the fields refused by name), the real edge in front of the real router, classifier and providers answers below 500;
every 4xx carries OpenAI's error body, its param spelt as OpenAI spells one (indexes in brackets: `input[2].content`,
never `input.2.content`); an answer is a response object and a stream ends with OpenAI's last event. Derandomized, as
test_edge_fuzz.py, whose value strategies it shares."""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.edge.responses import KNOWN_FIELDS
from tests.integration.conftest import Chain
from tests.integration.test_edge_fuzz import HUGE, json_values, merged, numbers, one_field, prompt, text

EXAMPLES = int(os.environ.get("RESPONSES_FUZZ_EXAMPLES", "600"))
# `input.0`: an array's index spelt as pydantic spells a path, not as OpenAI does (an object's key "0" is `.0`)
DOTTED_INDEX = re.compile(r"(input|tools|content|output|include)\.\d")
LAST_EVENTS = ("response.completed", "response.incomplete", "response.failed")

part = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["input_text", "output_text", "input_image", "refusal"]) | text,
        "text": text | json_values,
    }
)
content = text | st.lists(part | json_values, max_size=3)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | json_values, "content": content},
    optional={"type": st.just("message") | json_values, "id": text | json_values, "status": text},
)
call_id = st.sampled_from(["c1", "c2"]) | text | json_values
function_call = st.fixed_dictionaries(
    {"type": st.just("function_call"), "call_id": call_id, "name": text | json_values, "arguments": text | json_values}
)
function_output = st.fixed_dictionaries(
    {"type": st.just("function_call_output"), "call_id": call_id, "output": content}
)
item = message | function_call | function_output | st.fixed_dictionaries({"type": text}) | json_values
tool = st.fixed_dictionaries(
    {"type": st.just("function") | text, "name": text | json_values},
    optional={"parameters": json_values, "strict": json_values, "description": text},
)
text_format = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema"]) | text},
    optional={"name": text, "schema": json_values, "strict": json_values},
)
TYPED: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["auto", "cheap-model", "strong-model"]) | text,
    "instructions": text,
    "max_output_tokens": st.integers(-3, 5000) | HUGE,
    "tools": st.lists(tool, max_size=2),
    "tool_choice": st.sampled_from(["none", "auto", "required"])
    | st.fixed_dictionaries({"type": st.just("function"), "name": text}),
    "text": st.fixed_dictionaries({}, optional={"format": text_format, "verbosity": text}),
    "stream": st.booleans(),
    "temperature": numbers,
    "top_p": numbers,
    "store": st.booleans(),
    "metadata": st.dictionaries(text, text, max_size=3),
    "parallel_tool_calls": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_obfuscation": st.booleans()}),
    "include": st.lists(text, max_size=1),
    "truncation": st.sampled_from(["auto", "disabled"]) | text,
}
# Sorted: a set's order changes with the process's hash seed, and with it the examples drawn.
fields = one_field({**{name: json_values for name in sorted(KNOWN_FIELDS - {"input"})}, **TYPED, "frobnicate": text})
# Half with a prompt and a field or two, so that many reach the router and the providers, streamed or not.
bodies = st.builds(
    lambda input_, stream, extra: {"input": input_, "stream": stream, **extra},
    prompt | st.lists(item, max_size=4) | json_values,
    st.booleans(),
    merged(st.lists(fields, max_size=4)),
) | st.builds(lambda input_, stream, extra: {"input": input_, "stream": stream, **extra}, prompt, st.booleans(), fields)


def check(http: httpx.Client, body: dict[str, Any]) -> str:
    """Asserts the reply is well-formed; returns its kind: "error", "stream" or "answer"."""
    reply = http.post("/responses", content=json.dumps(body).encode())
    assert reply.status_code < 500, (reply.status_code, reply.text)
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, reply.text
        assert error["param"] is None or not DOTTED_INDEX.search(error["param"]), reply.text
        return "error"
    if reply.headers["content-type"].startswith("text/event-stream"):
        events = [line[7:] for line in reply.text.splitlines() if line.startswith("event: ")]
        assert events[-1] in LAST_EVENTS, reply.text[-500:]
        return "stream"
    assert reply.json()["object"] == "response", reply.text
    return "answer"


async def test_no_responses_request_makes_the_edge_fail(chain: Chain) -> None:
    seen: set[str] = set()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies)
    def property_holds(body: dict[str, Any]) -> None:
        seen.add(check(http, body))

    # In a thread: the services run on this event loop and must keep serving while the examples run.
    with httpx.Client(base_url=chain.base_url, timeout=30) as http:
        await asyncio.to_thread(property_holds)
    assert seen == {"error", "stream", "answer"}, seen
