"""Anthropic's Message Batches API, as api.anthropic.com speaks it: POST /v1/messages/batches ({"requests":
[{custom_id, params}]}, custom ids ^[a-zA-Z0-9_-]{1,64}$ and unique, params a Messages body without stream),
GET /v1/messages/batches/{id} (a message_batch: processing_status, request_counts, results_url once ended) and
GET /v1/messages/batches/{id}/results (JSONL of {custom_id, result}).

A batch is `in_progress` until `release` is set (set by default), then `ended` when next read. Each request's fate
comes from `fate(params)`: "ok" (succeeded, its message with exact usage), "error" (errored: an
invalid_request_error), "expire" (expired) or "cancel" (canceled). `tamper(lines)` may rewrite the results file's
lines (JSON text) before it is written, as a faulty provider would."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakes.server import Received, Reply

BATCHES_PATH = "/v1/messages/batches"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MessageFn = Callable[[dict[str, Any]], dict[str, Any]]
FateFn = Callable[[dict[str, Any]], str]
TamperFn = Callable[[list[str]], list[str]]
RESULT_TYPES = {"ok": "succeeded", "error": "errored", "expire": "expired", "cancel": "canceled"}


class FakeMessageBatches:
    def __init__(self, message: MessageFn, base_url: Callable[[], str]) -> None:
        self.message = message
        self.base_url = base_url  # the server's, known once it listens
        self.fate: FateFn = lambda params: "ok"
        self.tamper: TamperFn = lambda lines: lines
        self.release = threading.Event()  # while clear, batches stay in_progress
        self.release.set()
        self.batches: dict[str, dict[str, Any]] = {}
        self.results: dict[str, bytes] = {}
        self.answered: list[str] = []  # custom_ids answered (billed), across batches

    def route(self, request: Received) -> Reply | None:
        path, method = request.path, request.method
        if method == "POST" and path == BATCHES_PATH:
            return self._create(request.json)
        batch_id = path.removeprefix(BATCHES_PATH + "/")
        if method == "GET" and path.endswith("/results"):
            found = self.results.get(batch_id.removesuffix("/results"))
            return None if found is None else Reply(raw=found)
        batch = self.batches.get(batch_id) if method == "GET" else None
        return None if batch is None else Reply(body=self._advance(batch))

    def _create(self, body: dict[str, Any]) -> Reply:
        requests = body["requests"]
        ids = [r["custom_id"] for r in requests]
        assert requests and all(isinstance(i, str) and CUSTOM_ID.match(i) for i in ids), ids
        assert len(set(ids)) == len(ids), "custom_ids must be unique within a batch"
        assert all("stream" not in r["params"] and r["params"]["max_tokens"] > 0 for r in requests)
        now = datetime.now(UTC)
        batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
        self.batches[batch_id] = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": None,
            "created_at": _time(now),
            "expires_at": _time(now + timedelta(days=1)),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
            "_requests": requests,
        }
        return Reply(body=_public(self.batches[batch_id]))

    def _advance(self, batch: dict[str, Any]) -> dict[str, Any]:
        if batch["processing_status"] == "in_progress" and self.release.is_set():
            self._run(batch)
        return _public(batch)

    def _run(self, batch: dict[str, Any]) -> None:
        lines, counts = [], batch["request_counts"]
        for request in batch["_requests"]:
            kind, custom_id = RESULT_TYPES[self.fate(request["params"])], request["custom_id"]
            result: dict[str, Any] = {"type": kind}
            if kind == "succeeded":
                self.answered.append(custom_id)
                result["message"] = self.message(request["params"])
            elif kind == "errored":
                error = {"type": "invalid_request_error", "message": "fake refusal"}
                result["error"] = {"type": "error", "error": error}
            counts[kind] += 1
            lines.append(json.dumps({"custom_id": custom_id, "result": result}))
        counts["processing"] = 0
        self.results[batch["id"]] = "".join(line + "\n" for line in self.tamper(lines)).encode()
        batch.update(
            processing_status="ended",
            ended_at=_time(datetime.now(UTC)),
            results_url=f"{self.base_url()}{BATCHES_PATH}/{batch['id']}/results",
        )


def _time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}
