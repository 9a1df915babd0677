"""OpenAI's Batch API, as api.openai.com speaks it: POST /v1/files (multipart: purpose=batch, file=JSONL of
{custom_id, method, url, body}), POST /v1/batches, GET /v1/batches/{id}, GET /v1/files/{id}/content.

A batch is `validating`, then `in_progress` until `release` is set (set by default), then ends when next read:
`completed`, or `expired` when any line's fate is "expire" (the lines answered are in the output file, the others
in the error file with code batch_expired), or `failed` when `fail_next` is set (refused whole: errors, no files).
Each line's fate comes from `fate(body)`: "ok" (answered, with exact usage, in the output file), "error" (a 400
in the error file) or "expire". `tamper(output, errors)` may rewrite the two files' lines (JSON text) before they are
written, as a faulty provider would."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from tests.fakes.server import Received, Reply

CompletionFn = Callable[[dict[str, Any]], dict[str, Any]]
FateFn = Callable[[dict[str, Any]], str]
TamperFn = Callable[[list[str], list[str]], tuple[list[str], list[str]]]
EXPIRED = "This request could not be executed before the completion window expired."


class FakeBatches:
    def __init__(self, completion: CompletionFn) -> None:
        self.completion = completion
        self.fate: FateFn = lambda body: "ok"
        self.tamper: TamperFn = lambda output, errors: (output, errors)
        self.release = threading.Event()  # while clear, batches stay in_progress
        self.release.set()
        self.fail_next = False
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.answered: list[str] = []  # custom_ids answered (billed), across batches

    def route(self, request: Received) -> Reply | None:
        path, method = request.path, request.method
        if method == "POST" and path == "/v1/files":
            return self._upload(request)
        if method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            found = self.files.get(path.removeprefix("/v1/files/").removesuffix("/content"))
            return None if found is None else Reply(raw=found["content"])
        if method == "POST" and path == "/v1/batches":
            return self._create(request.json)
        if method == "GET" and path.startswith("/v1/batches/"):
            batch = self.batches.get(path.removeprefix("/v1/batches/"))
            return None if batch is None else Reply(body=self._advance(batch))
        return None

    def _upload(self, request: Received) -> Reply:
        head = f"content-type: {request.headers['content-type']}\r\n\r\n".encode()
        form = BytesParser(policy=HTTP).parsebytes(head + request.body)
        parts = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
        assert parts["purpose"].get_content().strip() == "batch", "purpose must be batch"
        content = parts["file"].get_payload(decode=True)
        assert isinstance(content, bytes), "the file part holds the JSONL"
        file = self._file(content, "batch", parts["file"].get_filename() or "upload.jsonl")
        return Reply(body={k: v for k, v in file.items() if k != "content"})

    def _file(self, content: bytes, purpose: str, filename: str) -> dict[str, Any]:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
            "content": content,
        }
        return self.files[file_id]

    def _create(self, body: dict[str, Any]) -> Reply:
        assert body["endpoint"] == "/v1/chat/completions" and body["completion_window"] == "24h", body
        lines = [json.loads(line) for line in self.files[body["input_file_id"]]["content"].decode().splitlines()]
        assert all(line["method"] == "POST" and line["url"] == "/v1/chat/completions" for line in lines)
        now = int(time.time())
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86_400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": None,
            "_lines": lines,
        }
        return Reply(body=_public(self.batches[batch_id]))

    def _advance(self, batch: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        if batch["status"] == "validating":
            if self.fail_next:
                self.fail_next = False
                batch.update(status="failed", failed_at=now)
                batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": "refused"}]}
            else:
                batch.update(status="in_progress", in_progress_at=now)
        elif batch["status"] == "in_progress" and self.release.is_set():
            self._run(batch, now)
        return _public(batch)

    def _run(self, batch: dict[str, Any], now: int) -> None:
        output, errors = [], []
        for line in batch["_lines"]:
            fate, custom_id = self.fate(line["body"]), line["custom_id"]
            ident = f"batch_req_{uuid.uuid4().hex[:24]}"
            if fate == "ok":
                self.answered.append(custom_id)
                response = {"status_code": 200, "request_id": uuid.uuid4().hex, "body": self.completion(line["body"])}
                output.append({"id": ident, "custom_id": custom_id, "response": response, "error": None})
            elif fate == "error":
                error = {"message": "fake refusal", "type": "invalid_request_error", "param": None, "code": None}
                response = {"status_code": 400, "request_id": uuid.uuid4().hex, "body": {"error": error}}
                errors.append({"id": ident, "custom_id": custom_id, "response": response, "error": None})
            else:
                error = {"code": "batch_expired", "message": EXPIRED}
                errors.append({"id": ident, "custom_id": custom_id, "response": None, "error": error})
        expired = any(e["error"] for e in errors)
        files = self.tamper([json.dumps(e) for e in output], [json.dumps(e) for e in errors])
        for kind, entries in zip(("output", "error"), files, strict=True):
            if entries:
                content = "".join(e + "\n" for e in entries).encode()
                batch[f"{kind}_file_id"] = self._file(content, f"batch_{kind}", f"{kind}.jsonl")["id"]
        batch["request_counts"].update(completed=len(output), failed=len(errors))
        batch.update(finalizing_at=now, status="expired" if expired else "completed")
        batch["expired_at" if expired else "completed_at"] = now


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}
