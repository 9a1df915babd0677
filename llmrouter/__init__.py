"""Shared library of the llm-cost-router services: contracts (llmrouter.v1), settings, server bootstrap,
errors, metrics and the model registry. Importing it builds nothing heavy."""
