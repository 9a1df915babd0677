"""The output tokens an answer is charged: never past the max_tokens its call was sent. A realtime answer's
(services/providers/accounting.py) and a provider Batch API line's (services/router/deferred.py) alike."""

from __future__ import annotations


def output_charged(reported: int | None, max_tokens: int | None) -> tuple[int | None, bool]:
    """The output tokens to charge for `reported` (None: not reported), and whether they are max_tokens in its stead.
    No upstream writes past the max_tokens it was sent: a count past it (a buggy or hostile upstream, a proxy inflating
    usage, a tampered batch output file) is charged max_tokens, the most it can have written, its usage flagged
    estimated and counted by the caller; taken as reported, the tenant paid for tokens never generated, as far as the
    hold's room (its input bound) let it. `max_tokens` None: the call's is not known, and `reported` stands."""
    if reported is not None and max_tokens is not None and reported > max_tokens:
        return max_tokens, True
    return reported, False
