"""The services of llm-cost-router, one package each; each runs as its own process."""
