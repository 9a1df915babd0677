"""A chat message's `name` (its participant's), one rule for the edge's REST callers and the router's and providers'
gRPC callers (llmrouter/validation.py). Unbounded and unchecked, a 100 kB name, or one holding a NUL or a line break,
was sent on to an OpenAI-compatible upstream to refuse or bill as prompt, and dropped for the others, as routing chose.

OpenAI documents no bound for it ("An optional name for the participant"); its 64 characters for a function's name
would refuse the display names and email addresses callers send there. 512, as the longest end-user id, `user`
(END_USER_ID_CHARS): generous for any participant's name, and a bound on a field no caller needs long."""

from __future__ import annotations

import re

from llmrouter.openai_fields import Fault
from llmrouter.passthrough import END_USER_ID_CHARS

MAX_NAME_CHARS = END_USER_ID_CHARS["user"]
# C0, DEL and C1: no participant's name holds one; a NUL or a line break in one is a bug or an injection.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def name_fault(name: str, param: str) -> Fault | None:
    """Why the message's name at `param` (messages[<i>].name) is refused, in OpenAI's words; None when it is not."""
    if len(name) > MAX_NAME_CHARS:
        message = (
            f"Invalid '{param}': string too long. Expected a string with maximum length {MAX_NAME_CHARS}, but got a "
            f"string with length {len(name)} instead."
        )
        return Fault(param, message, "string_above_max_length")
    if CONTROL.search(name):
        return Fault(param, f"Invalid '{param}': a name must not contain control characters.")
    return None
