"""Generated from protos/llmrouter/v1 by scripts/gen_protos.py: do not edit."""
