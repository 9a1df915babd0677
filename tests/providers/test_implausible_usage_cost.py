"""An answer whose usage it belies is counted here once: judging the report needs only enough of the answer to pass
UNDER_COUNT_FACTOR times it. Counted whole to judge it, then whole again to charge it, a hostile upstream's answer of
megabytes reported as a token cost the service twice the CPU of one sent without usage. The work is measured as the
characters handed to the tokenizer, not as time."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrouter import tokens
from services.providers.accounting import implausible_output
from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, request
from tests.providers.test_accounting_prompt_fields import model
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk
from tests.providers.test_huge_answer_counting import PIECE

USAGE_OF_ONE = {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}


def tokenized_chars(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text the real tokenizer is handed from now on."""
    seen: list[int] = []
    real = tokens.count_tokens

    def counting(text: str, name: tokens.Encoding = "cl100k_base") -> int:
        seen.append(len(text))
        return real(text, name)

    monkeypatch.setattr(tokens, "count_tokens", counting)
    return seen


async def test_judging_a_report_an_answer_belies_tokenizes_only_enough_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = PIECE * 4
    seen = tokenized_chars(monkeypatch)
    assert await implausible_output(model("cl100k_base"), None, answer, 1)
    assert 0 < sum(seen) <= 2 * tokens.CHUNK_CHARS, "judged by counting the whole answer"


async def test_an_answer_its_report_belies_is_charged_its_text_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tokenized_chars(monkeypatch)
    final_chunk = openai_chunk({}, "stop") | {"usage": USAGE_OF_ONE}
    wire = events(*[openai_chunk({"content": PIECE})] * 4, final_chunk, "[DONE]")
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        _, final = await collect(stub, request("cheap"))
    assert final is not None and final.usage.estimated
    answer_chars = 4 * len(PIECE)
    # The prompt is a few characters; the answer counted once to charge it, plus at most a chunk or two to judge it.
    assert answer_chars <= sum(seen) <= answer_chars + 4 * tokens.CHUNK_CHARS, (sum(seen), answer_chars)
