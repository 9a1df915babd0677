"""An error of the legacy completions route names the field its caller sent, `prompt`: the route serves the prompt as a
chat completion of one user turn, and the chat path's errors (a prompt over every context window, a prompt the router
refuses) named `messages`, a field a caller of /v1/completions never sent (the Responses route maps them to `input`
already). The official SDK against the real chain."""

from __future__ import annotations

import openai
import pytest

from tests.integration.conftest import Chain
from tests.integration.test_chain import client


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_over_every_context_window_is_named_prompt(chain: Chain, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as failed:
        await client(chain).completions.create(model="auto", prompt="a " * 200_000, stream=stream)
    assert failed.value.param == "prompt"
    assert failed.value.code == "context_length_exceeded"
    assert "messages" not in failed.value.message
