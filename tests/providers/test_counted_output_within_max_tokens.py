"""An answer whose upstream never said what it wrote (a stream cut before its usage, or one that ends with none) is
charged its text counted by an estimating tokenizer (cl100k_base for a model whose own is not bundled: Llama, Mixtral,
Claude), but never more output than the call's max_tokens, which no upstream writes past. Hindi counts near three times
as many cl100k tokens as Llama 3's: a text written within max_tokens was counted past it, charged for tokens never
billed (and past the router's hold, capped there: the whole hold charged, as a provider's report past it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrouter.tokens import count_tokens
from tests.providers.conftest import model_entry, providers_service
from tests.providers.helpers import collect, request, stream_to_failure
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk

MAX_TOKENS = 50
ANSWER = "नमस्ते दुनिया " * 10  # about 50 tokens of Llama 3's (o200k_base counts 42), 140 of cl100k_base's
LLAMA = model_entry("llama", "fakeai", "premium", "0.59", "0.79", tokenizer="utf8_bytes")


@pytest.mark.parametrize("ended", [False, True], ids=["cut", "ended without usage"])
async def test_an_answer_without_its_usage_is_charged_no_more_output_than_its_max_tokens(
    tmp_path: Path, ended: bool
) -> None:
    assert count_tokens(ANSWER, "cl100k_base") > MAX_TOKENS
    answer = openai_chunk({"role": "assistant", "content": ANSWER})
    wire = events(answer, openai_chunk(finish="length"), "[DONE]") if ended else events(answer)  # no usage either way
    async with (
        RawUpstream(wire) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, extra_models=[LLAMA]) as stub,
    ):
        if ended:
            deltas, final = await collect(stub, request("llama", max_tokens=MAX_TOKENS))
            assert final is not None
            output, estimated = str(final.usage.output_tokens), final.usage.estimated
        else:
            deltas, err = await stream_to_failure(stub, request("llama", max_tokens=MAX_TOKENS))
            assert err.reason == "STREAM_INTERRUPTED"
            output, estimated = err.metadata["output_tokens"], err.metadata["estimated"] == "true"
    assert "".join(deltas) == ANSWER
    assert output == str(MAX_TOKENS) and estimated
