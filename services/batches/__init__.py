"""OpenAI's Batch API at the edge: files of chat completion requests, run through the router line by line."""
