"""An answer whose usage it belies is counted here once: judging the report needs only enough of the answer to pass
UNDER_COUNT_FACTOR times it. Counted whole to judge it, then whole again to charge it, a hostile upstream's answer of
megabytes reported as a token cost the service twice the seconds of CPU of one sent without usage."""

from __future__ import annotations

import time
from pathlib import Path

from llmrouter.v1 import common_pb2
from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, request
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk
from tests.providers.test_huge_answer_counting import PIECE

USAGE_OF_ONE = {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}


async def cpu_of_answer(tmp_path: Path, usage: dict[str, int] | None) -> tuple[float, common_pb2.Usage]:
    """The CPU time of the service (in this thread, as the upstream and this test) serving a 4 MB answer."""
    final_chunk = openai_chunk({}, "stop") | ({"usage": usage} if usage else {})
    wire = events(*[openai_chunk({"content": PIECE})] * 4, final_chunk, "[DONE]")
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        started = time.thread_time()
        _, final = await collect(stub, request("cheap"))
        spent = time.thread_time() - started
    assert final is not None
    return spent, final.usage


async def test_an_answer_its_report_belies_is_counted_once(tmp_path: Path) -> None:
    unreported, counted = await cpu_of_answer(tmp_path, None)
    belied, judged = await cpu_of_answer(tmp_path, USAGE_OF_ONE)
    assert judged.estimated and judged.output_tokens == counted.output_tokens  # charged its text counted here
    # Counted twice, it took 1.7 to 1.8 times as long (seen); once, about as long.
    assert belied < 1.4 * unreported, (belied, unreported)
