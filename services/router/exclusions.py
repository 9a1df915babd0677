"""Why a candidate model is ruled out, where the reason is a fixed sentence: the policy writes them, and the ledger
keeps those of its EXCLUSION_CODES as a short code, any other as written (store/ledger_entry.py). Apart from the
policy, which the money store's modules must not import (it imports them)."""

# A model the providers service does not serve here, by why it can be: a provider that needs a key has none; the
# local model (which needs none) is not built; any other is not served at all (a providers service on another registry).
UNAVAILABLE = "unavailable here (no API key for its provider)"
LOCAL_UNAVAILABLE = "unavailable here (its local model is not built)"
NOT_SERVED = "unavailable here (its provider is not served)"
UNAVAILABLE_REASONS = (UNAVAILABLE, LOCAL_UNAVAILABLE, NOT_SERVED)
FORMAT_UNHONOURED = "does not guarantee response_format"
LOGPROBS_UNRETURNED = "does not return logprobs"
LOGIT_BIAS_UNAPPLIED = "does not apply logit_bias"
NO_TOOLS = "cannot call the tools the request offers"
OBJECT_ARGUMENTS_ONLY = "takes a tool call's arguments only as a JSON object"
TEMPERATURE_CAPPED = "takes a temperature of at most"
BLANK_STOP_REFUSED = "refuses a stop sequence of only whitespace"
NO_LOGPROBS = f"{LOGPROBS_UNRETURNED} (registry: logprobs is false)"
NO_LOGIT_BIAS = f"{LOGIT_BIAS_UNAPPLIED} (registry: logit_bias is false)"
NO_RAW_ARGUMENTS = f"{OBJECT_ARGUMENTS_ONLY} (registry: raw_tool_arguments is false)"
NO_BLANK_STOP = f"{BLANK_STOP_REFUSED} (registry: blank_stop is false)"
