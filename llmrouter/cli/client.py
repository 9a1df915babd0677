"""The edge's HTTP API as the CLI calls it: OpenAI's error bodies become one clear line."""

from __future__ import annotations

import os
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080/v1"


class ApiFailure(Exception):
    pass


class Client:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        self.base_url = (base_url or os.environ.get("LLMROUTER_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("LLMROUTER_API_KEY", "")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.keyed = bool(key)
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            reply = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            failure = exc.__class__.__name__
            raise ApiFailure(f"cannot reach {self.base_url} ({failure}): is the stack running?") from None
        if reply.status_code >= 400:
            try:
                message = reply.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = reply.text[:200]
            if reply.status_code == 401:  # the edge's words are about a header: a CLI user gives the key otherwise
                message += (
                    " (--api-key or LLMROUTER_API_KEY)" if self.keyed else " (give it: --api-key or LLMROUTER_API_KEY)"
                )
            raise ApiFailure(f"HTTP {reply.status_code}: {message}")
        return reply

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.decoded(self.call(method, path, **kwargs))

    def decoded(self, reply: httpx.Response) -> Any:
        """A reply's JSON body; one that is none (--url naming some other server) is an ApiFailure saying so."""
        try:
            return reply.json()
        except ValueError:
            said = f"HTTP {reply.status_code} with no JSON body: is {self.base_url} the edge's API?"
            raise ApiFailure(said) from None

    def close(self) -> None:
        self.http.close()
