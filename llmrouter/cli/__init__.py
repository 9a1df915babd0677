"""`llmrouter`: the operator's and developer's command line, a thin client over the edge's HTTP API."""
