"""Provider gateways: the only service that talks to upstream LLM APIs (OpenAI-compatible, Anthropic) or
runs the local model, with retries, timeouts, circuit breakers, concurrency limits and exact cost."""

from services.providers.service import build
from services.providers.settings import ProvidersSettings

__all__ = ["ProvidersSettings", "build"]
