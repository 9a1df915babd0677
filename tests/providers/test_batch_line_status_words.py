"""A failed line of OpenAI's Batch API error file is told in the service's own words: its status code quoted only
when it is one (a number). A status_code of any other JSON type, text from the provider's file, went to the caller
word for word, whatever it held (an internal address, an organisation, the key)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from services.providers.gateways.openai_batch import OpenAIBatches
from tests.fakes import FakeOpenAI
from tests.providers.test_openai_batches import KEY, fake_and_api  # noqa: F401  (a fixture)

SECRET = f"org-4471 at 10.2.3.4 with {KEY}"


def _status_said(status: object) -> Callable[[list[str], list[str]], tuple[list[str], list[str]]]:
    def tamper(output: list[str], errors: list[str]) -> tuple[list[str], list[str]]:
        lines = [json.loads(line) for line in errors]
        for line in lines:
            line["response"]["status_code"] = status
            line["error"] = {"code": "server_error", "message": "the line failed"}  # said apart from the response
        return output, [json.dumps(line) for line in lines]

    return tamper


@pytest.mark.parametrize(("status", "told"), [(SECRET, ""), ({"at": SECRET}, ""), (429, " (status 429)")])
async def test_a_failed_lines_status_is_quoted_only_as_a_number(
    fake_and_api: tuple[FakeOpenAI, OpenAIBatches],  # noqa: F811
    status: object,
    told: str,
) -> None:
    fake, api = fake_and_api
    fake.batches.fate = lambda body: "error"
    fake.batches.tamper = _status_said(status)
    line = {"model": "up-1", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
    batch_id = await api.submit([("id-0", line)])
    await api.poll(batch_id)  # in progress
    (result,) = (await api.poll(batch_id)).results
    assert result.answer is None and result.error == f"the provider failed the line{told}"
