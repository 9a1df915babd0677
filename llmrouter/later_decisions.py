"""A CompleteStream caller's word, in its call metadata, that it reads a decision sent after the first: another
model taking over before the first delta (a fallback, an escalated buffered stream, an answer from the response
cache) is told to such a caller alone. One that does not say so (an edge of the version before, a plain gRPC client)
is sent the first decision only, as before: an edge of the version before took a second one for the stream's first
chunk and started its 200 stream on it, so a fallback failing then reached its caller as an error event."""

from __future__ import annotations

from typing import Any

KEY = "llmrouter-reads-later-decisions"
ANNOUNCED = ((KEY, "1"),)  # the metadata a caller that reads them sends


def announced(context: Any) -> bool:
    """Whether the call's caller said it reads later decisions."""
    return any(key == KEY and value == "1" for key, value in context.invocation_metadata() or ())
