"""Local HTTP servers speaking the providers' exact wire formats, with fault injection. Real sockets on
127.0.0.1, one background thread each, usable from sync and async tests alike.

    from tests.fakes import Fault, FakeOpenAI

    with FakeOpenAI() as fake:                      # or FakeOpenAI(reply=lambda body: "fixed answer")
        client = openai.OpenAI(base_url=fake.base_url, api_key="x")
        fake.enqueue(Fault.error(429, retry_after=1), Fault.cut(after_chunks=3))   # next two requests
        ...
        fake.requests[-1].json                      # what the client sent
        fake.answer(body)                           # (content, finish_reason, usage) the fake replies with

Default replies are deterministic, "[<model>] You said: <last user message>", with exact usage, so the same
fake can stand in for a cheap and a strong model (they differ by model name). Faults: Fault.error(status,
retry_after), .delay(s) (slow first byte), .hang() (timeout), .reset() (TCP RST), .close() (FIN, no answer),
.malformed(), .cut(n)
(stream dropped after n events), .no_usage(). Knobs: `latency`, `chunk_delay`, `api_key`; observations:
`requests`, `in_flight`, `max_in_flight`, `wait_disconnect()`."""

from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_openai import FakeOpenAI, echo_reply
from tests.fakes.server import Fault, Received

__all__ = ["FakeAnthropic", "FakeOpenAI", "Fault", "Received", "echo_reply"]
