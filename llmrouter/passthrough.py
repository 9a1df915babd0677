"""OpenAI chat-completions fields a caller may pass through to a provider: only those that change neither the
price of a call nor where its data is kept, so what the registry charges is what the provider bills.
The edge refuses every other field; the OpenAI gateway forwards no other field (a direct gRPC caller too).
Refused for a reason: `n` above 1 multiplies the output, `service_tier` buys priority, `store` and `metadata`
keep the conversation at the provider, `prediction`, `audio`, `modalities`, `web_search_options` and
`reasoning_effort`, `verbosity` are billed apart or change how much the model writes, `prompt_cache_retention`
keeps the prompt at the provider."""

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
    }
)
