"""OpenAI chat-completions fields a caller may pass through to a provider: only those that change neither the
price of a call nor where its data is kept, so what the registry charges is what the provider bills.
The edge refuses, or accepts and sends nowhere, every other field (services/edge/openai_api.py: REFUSED, IGNORED);
the OpenAI gateway forwards no other field (a direct gRPC caller too), the Anthropic gateway translates those it has
an equivalent for and drops the rest. `prompt_cache_key`, `user` and `safety_identifier` only hint: a prompt cache
hit lowers what the provider bills, never what the router charges (input at its full price). The router sends the
three scoped to the paying tenant (services/router/end_users.py): tenants share the providers' accounts."""

import json
from typing import Any

PASSTHROUGH_FIELDS = frozenset(
    {
        "response_format",
        "top_p",
        "stop",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "safety_identifier",
        "prompt_cache_key",
    }
)
# The router's own body fields, beside OpenAI's (the edge takes them as x-router-* headers too).
ROUTER_EXTENSIONS = frozenset(
    {
        "quality_target",
        "strong_share",
        "quality_kept",
        "max_cost_usd",
        "max_latency_ms",
        "session_id",
        "escalation",
        "buffer_stream",
        "verifier_threshold",
    }
)
# A chat body's fields a CompleteRequest carries as its own (the edge maps a REST caller's there). Written in a gRPC
# caller's passthrough_json they would reach no provider and cap nothing: refused, never served uncapped.
REQUEST_FIELDS = (
    frozenset({"model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature"}) | ROUTER_EXTENSIONS
)
# The CompleteRequest's fields that say who pays and which request this is, which the edge sets for a REST caller
# (its API key's tenant, a request id of its own) and no REST body names: written in a gRPC caller's passthrough_json,
# they would bill, authenticate or deduplicate nothing, and are refused as REQUEST_FIELDS are. OpenAI's own `user` and
# `metadata` are no such field: an end user's id, a tag.
CALLER_FIELDS = frozenset({"tenant", "api_key", "api_key_id", "request_id"})
# The end-user ids' bounds, in characters, for the edge's REST callers and the router's gRPC callers alike. OpenAI
# documents and enforces 64 for safety_identifier, and enforces 64 for prompt_cache_key; it documents none for user
# (deprecated for those two), where callers send longer ids to other upstreams: 512, as OpenAI bounds a metadata value.
# Each is sent on as a hash (services/router/end_users.py), so unbounded, a 100,000-character id was accepted, hashed
# and stored with nothing to refuse it.
END_USER_ID_CHARS = {"user": 512, "safety_identifier": 64, "prompt_cache_key": 64}
# The passthrough fields a provider renders into the prompt and bills as input: tool definitions, the tool forced, the
# response format's schema. The others are read beside the prompt, never billed: stop sequences, sampling settings,
# logit_bias, end-user ids. Counted as prompt, a caller's long stop sequence made a prompt of a few words a
# CONTEXT_LENGTH_EXCEEDED, and a shorter one multiplied its hold.
PROMPT_FIELDS = frozenset({"tools", "tool_choice", "response_format"})
# The passthrough fields each provider kind's gateway sends on, as they are or translated (Anthropic: stop as
# stop_sequences, tools and tool_choice in its shape, safety_identifier or user as metadata.user_id); it drops the
# others. The local gateway takes the router's own request (max_tokens, temperature) and `stop`, which the local model
# honours itself (services/providers/local_model/stop_text.py).
SENT_BY_KIND = {
    "openai": PASSTHROUGH_FIELDS,
    "anthropic": frozenset({"top_p", "stop", "tools", "tool_choice", "user", "safety_identifier"}),
    "local": frozenset({"stop"}),
}
# OpenAI's bound on `stop`: a string, or a list of at most this many.
MAX_STOP = 4
# Each stop sequence's bound, in characters. OpenAI documents none; a stop sequence is a delimiter of a few tokens, and
# unbounded, a 100 kB one was accepted and sent on (a local model scans its output for each sequence as it writes). 512,
# as OpenAI bounds a metadata value and the router a `user` id (END_USER_ID_CHARS).
MAX_STOP_CHARS = 512


def stop_sequences_of(passthrough: dict[str, Any]) -> list[str]:
    """The stop sequences `stop` holds (validated: a string, or a list of strings), none empty: "" stops nothing."""
    stop = passthrough.get("stop")
    sequences = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    return [sequence for sequence in sequences if isinstance(sequence, str) and sequence]


def has_blank_stop(passthrough: dict[str, Any]) -> bool:
    """Whether `stop` holds a sequence of nothing but whitespace ("\\n", " ", or "" in a list), which some APIs refuse
    (registry `blank_stop`). A `stop` of "" or [] holds no sequence: Anthropic's gateway sends none."""
    stop = passthrough.get("stop")
    sequences = [stop] if isinstance(stop, str) and stop else stop if isinstance(stop, list) else []
    return any(isinstance(sequence, str) and not sequence.strip() for sequence in sequences)


# OpenAI's 400 for top_logprobs without logprobs true: it only sizes the log-probabilities logprobs asks for.
TOP_LOGPROBS_ALONE = "logprobs must be set to true when top_logprobs is used"


def prompt_fields(passthrough: dict[str, Any]) -> dict[str, Any]:
    """The fields of `passthrough` a provider bills as input (PROMPT_FIELDS)."""
    return {name: value for name, value in passthrough.items() if name in PROMPT_FIELDS}


def prompt_json(passthrough: dict[str, Any]) -> str:
    """prompt_fields as counted (llmrouter.tokens.count_prompt_tokens): written by json.dumps, its separators as
    the edge writes them and the providers service is sent them (a compact text counts a prompt of many tools
    short); "" when there are none."""
    fields = prompt_fields(passthrough)
    return json.dumps(fields) if fields else ""
