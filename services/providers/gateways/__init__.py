"""One gateway per provider kind. Each speaks one wire format and nothing else: resilience, usage
accounting and cost live in services/providers/dispatch.py."""
