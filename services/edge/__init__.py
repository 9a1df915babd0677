"""The REST edge: OpenAI-compatible HTTP over the Router's gRPC API."""
