"""How much of a caller's deadline a provider call needs, in one place: the providers service refuses, unsent, an
attempt left too little of it, and the router makes no call that would be refused so."""

from __future__ import annotations

# Kept back by the providers from their caller's deadline, for their error to reach it first: a bare
# DEADLINE_EXCEEDED tells the router nothing of whether the upstream was called, so it is charged as an unknown
# outcome, its worst case. Generous: a busy pod's event loop can run late by 50 ms and more.
PROVIDERS_MARGIN_S = 0.25
# The least time an upstream attempt is started with: with less it would time out connecting or writing, its
# request perhaps not sent yet its outcome unknown. The providers refuse it before sending anything, `sent: false`.
MIN_SEND_S = 0.05
# Allowed for a router's call to reach the providers service (whose deadline is what is left on arrival).
REACH_PROVIDERS_S = 0.05
# The least total_timeout_s a provider's entry in the registry may give its calls (llmrouter/registry.py): a cued
# stream (the router's) spends its first moments on the round trip of the router's word to send, each way as long as
# reaching the providers, and must still have MIN_SEND_S left; with less, every call would be refused unsent. Rounded,
# as a registry writes it, for a float's last bit not to refuse 0.15 itself.
MIN_TOTAL_TIMEOUT_S = round(2 * REACH_PROVIDERS_S + MIN_SEND_S, 6)
