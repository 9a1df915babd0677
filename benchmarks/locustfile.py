"""Locust load test of the OpenAI-compatible API: mixed prompt difficulty (easy and hard prompts, so the router
picks cheap and strong models), plain and streamed, each request a new prompt (no response-cache hits). At the
end it prints req/s, p50/p95/p99 latency, the error rate and the mean cost per request (x-router-cost-usd, or
the stream's final x_router chunk).

Against the local stack with a fast stub upstream: `make loadtest`. Against a deployment:

    LOADTEST_API_KEY=k-... locust -f benchmarks/locustfile.py --headless -u 50 -r 5 -t 5m \\
        --host https://llm.example.com
"""

from __future__ import annotations

import itertools
import json
import os
import random
from decimal import Decimal
from typing import Any

from locust import HttpUser, between, events, task

EASY = [
    "What is 7 + 5?",
    "Say hello in French.",
    "Name a primary colour.",
    "What is the capital of Italy?",
    "Give a synonym for happy.",
]
HARD = [
    "Prove that there are infinitely many prime numbers, step by step.",
    "Write a Python function that merges overlapping intervals and explain its complexity.",
    "Compare the CAP theorem's trade-offs for a globally replicated payment ledger.",
    "Derive the gradient of the softmax cross-entropy loss with respect to the logits.",
    "Explain how a B-tree keeps itself balanced on insertion, with an example.",
]
COSTS: list[Decimal] = []
SEQUENCE = itertools.count()


class ChatUser(HttpUser):
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        self.client.headers["authorization"] = f"Bearer {os.environ.get('LOADTEST_API_KEY', 'loadtest')}"

    def body(self, prompts: list[str], stream: bool) -> dict[str, Any]:
        prompt = f"{random.choice(prompts)} (request {next(SEQUENCE)})"
        body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    def plain(self, prompts: list[str], name: str) -> None:
        with self.client.post(
            "/v1/chat/completions", json=self.body(prompts, False), name=name, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
            else:
                COSTS.append(Decimal(r.headers.get("x-router-cost-usd", "0")))

    def stream(self, prompts: list[str], name: str) -> None:
        body = self.body(prompts, True)
        with self.client.post("/v1/chat/completions", json=body, name=name, stream=True, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
                return
            cost = None
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        r.failure(event["error"].get("message", "stream error"))
                        return
                    cost = event.get("x_router", {}).get("cost_usd", cost)
            if cost is None:
                r.failure("stream ended without its final chunk")
            else:
                COSTS.append(Decimal(cost))

    @task(3)
    def easy_plain(self) -> None:
        self.plain(EASY, "easy")

    @task(1)
    def hard_plain(self) -> None:
        self.plain(HARD, "hard")

    @task(2)
    def easy_stream(self) -> None:
        self.stream(EASY, "easy stream")

    @task(1)
    def hard_stream(self) -> None:
        self.stream(HARD, "hard stream")


@events.quitting.add_listener
def summary(environment: Any, **_: Any) -> None:
    total = environment.stats.total
    if not total.num_requests:
        print("loadtest: no requests were made")
        return
    cost = sum(COSTS, Decimal(0)) / len(COSTS) if COSTS else Decimal(0)
    print(
        f"loadtest: {total.num_requests} requests, {total.total_rps:.1f} req/s, "
        f"p50 {total.get_response_time_percentile(0.5):.0f} ms, p95 {total.get_response_time_percentile(0.95):.0f} ms, "
        f"p99 {total.get_response_time_percentile(0.99):.0f} ms, errors {total.fail_ratio:.2%}, "
        f"cost per request ${cost:.8f}"
    )
