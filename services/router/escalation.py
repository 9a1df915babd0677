"""When a cheap model's answer is weak enough to ask a stronger tier: the signals, per escalation mode.

- empty: no content and no tool call;
- truncated: finish_reason "length" while the answer is shorter than the caller's own max_tokens (the
  model's or the router's cap cut it, not the caller's);
- refusal: the model refused (OpenAI's refusal field, or a finish_reason content_filter: Anthropic's refusal stop,
  a provider's filter withholding the answer), or the answer opens by declining (a small phrase detector; `strict`
  looks through the whole answer);
- low_confidence: the mean log-probability of the answer's tokens (asked of OpenAI-compatible upstreams when
  escalation is on) is below the mode's threshold: a geometric-mean token probability under 25% in auto,
  under 50% in strict;
- verifier: the answer verifier's P(good) is below the threshold: the request's own, else the router's setting
  for the mode, else the one calibrated for the verifier for the mode (services/verifier/thresholds.py). A
  verifier that cannot say in time, or is not calibrated, raises no signal: the answer is kept.

Modes: `off` never escalates; `auto` (the default, ROUTER_ESCALATION) escalates on the signals above;
`strict` also on a longer refusal, at a higher log-probability threshold and at its own verifier threshold."""

from __future__ import annotations

import math
import re
from typing import Protocol

from llmrouter.errors import invalid
from llmrouter.v1 import router_pb2
from services.router import metrics
from services.router.routed import Mode, Served
from services.verifier.client import Verdict

MODES: tuple[Mode, ...] = ("off", "auto", "strict")
# Below this mean token log-probability, per mode, the model itself was unsure (ln 0.25 and ln 0.5).
MIN_MEAN_LOGPROB = {"off": -math.inf, "auto": math.log(0.25), "strict": math.log(0.5)}
# A refusal is said early: in auto only the opening is read, so an answer that quotes one is not taken for it.
OPENING_CHARS = 160

_DECLINED = r"assist|answer|provide|comply|do that|fulfil|fulfill|support|complete"
_REFUSAL = re.compile(
    r"\b(?:"
    r"i(?:'m| am)\s+(?:sorry|afraid)[^.!?]{0,40}\b(?:can(?:'|no)t|cannot|unable|not able)"
    # "can't help but" or "can't help" a gerund ("thinking") is what one cannot stop doing, not a refusal; the idiom is
    # "can't help" alone: "won't help" or "am unable to help" a gerund declines it.
    rf"|i\s+(?:can(?:'|no)t|cannot)\s+(?:help(?!\s+(?:but|\w+ing)\b)|{_DECLINED})"
    rf"|i(?:\s+won't|\s+will not|(?:'m|\s+am)\s+(?:unable|not able) to)\s+(?:help|{_DECLINED})"
    r"|as an ai(?: language model)?,? i (?:can(?:'|no)t|cannot|don't|do not)"
    r"|i must (?:decline|refuse)"
    r")",
    re.IGNORECASE,
)


class Verifier(Protocol):
    """The answer verifier: its verdict on the answer to the prompt, or None when it cannot say in time. Asked
    in `modes` only, unless a request sets its own threshold."""

    modes: frozenset[str]

    async def verdict(self, prompt: str, answer: str, time_left: float | None) -> Verdict | None: ...


def mode_of(requested: str, default: str) -> Mode:
    """The request's mode, else the router's default; anything else is the caller's error."""
    value = requested or default
    for mode in MODES:
        if value == mode:
            return mode
    raise invalid("escalation must be off, auto or strict", "escalation")


def verifier_threshold(request: router_pb2.CompleteRequest) -> float | None:
    """The request's own verifier threshold, when it sets one; outside [0, 1] is the caller's error."""
    if not request.HasField("verifier_threshold"):
        return None
    if not 0 <= request.verifier_threshold <= 1:  # NaN included
        raise invalid("verifier_threshold must be within [0, 1]", "verifier_threshold")
    return request.verifier_threshold


def verifier_asked(modes: frozenset[str], mode: Mode, threshold: float | None) -> bool:
    """Whether the verifier judges an answer in `mode`: one of the router's verifier `modes`, or any but off when the
    request sets its own threshold."""
    return mode != "off" and (threshold is not None or mode in modes)


def is_refusal(text: str, mode: Mode) -> bool:
    """Whether the answer declines to answer: its opening in auto, anywhere in strict."""
    normalised = text.replace("\u2019", "'")
    return bool(_REFUSAL.search(normalised if mode == "strict" else normalised[:OPENING_CHARS]))


def signal(served: Served, mode: Mode, caller_max_tokens: int | None, money_capped: bool = False) -> str:
    """Why the answer is weak without asking a verifier ('' when it is not): empty, truncated, refusal or
    low_confidence."""
    if mode == "off" or served.tool_calls_json:  # a tool call is an answer
        return ""
    if served.refusal or served.finish_reason == "content_filter":  # said by the provider, not guessed from words
        return "refusal"
    if not served.content.strip():
        return "empty"
    cut_short = caller_max_tokens is None or served.output_tokens < caller_max_tokens
    # When max_cost_usd or the budget set the cap, a stronger model would be cut shorter still: not a signal.
    if served.finish_reason == "length" and cut_short and not money_capped:
        return "truncated"
    if is_refusal(served.content, mode):
        return "refusal"
    if served.mean_logprob is not None and served.mean_logprob < MIN_MEAN_LOGPROB[mode]:
        return "low_confidence"
    return ""


async def doubt(
    verifier: Verifier | None,
    prompt: str,
    served: Served,
    mode: Mode,
    time_left: float | None,
    threshold: float | None = None,
) -> str | None:
    """'verifier 0.31 < 0.45' when the verifier's P(good) is below `threshold` (else the verdict's own for the
    mode); '' when it is not, it is not asked, or no threshold is known; None when it was asked and could not say."""
    if verifier is None or served.tool_calls_json or not verifier_asked(verifier.modes, mode, threshold):
        return ""
    verdict = await verifier.verdict(prompt, served.content, time_left)
    if verdict is None:
        return None  # counted by the verifier as unavailable or timeout
    below = verdict.escalate_below.get(mode) if threshold is None else threshold
    if below is None:
        metrics.VERIFIER.labels("uncalibrated").inc()
        return ""
    doubted = verdict.doubtful(below)
    metrics.VERIFIER.labels("doubted" if doubted else "kept").inc()
    return f"verifier {verdict.good:.3g} < {below:.3g}" if doubted else ""
