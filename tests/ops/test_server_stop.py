"""A stopping server runs its closers in the order given, after its calls drained: the router lists its servicer
(whose charges still running must reach the money store, and whose generations the providers channel) before the
store and the channels it uses. Reversed, the store closed first and a charge landing at shutdown went to the
outbox, a generation past the grace lost its channel."""

from __future__ import annotations

from llmrouter.server import Closer, start_server
from llmrouter.settings import GrpcServiceSettings


async def test_closers_run_in_the_order_given_after_the_server_stopped() -> None:
    closed: list[str] = []

    def closer(name: str) -> Closer:
        async def close() -> None:
            closed.append(name)

        return close

    settings = GrpcServiceSettings(port=0, auth="none")
    running = await start_server("ordered", settings, {}, [closer("servicer"), closer("store"), closer("channel")])
    await running.stop(0)
    assert closed == ["servicer", "store", "channel"]
