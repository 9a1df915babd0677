"""The Files and Batches routes: POST /v1/files, GET /v1/files/{id}, GET /v1/files/{id}/content,
POST /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel. Per tenant: another tenant's file or
batch is a 404."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from services.batches import wire
from services.batches.runner import Runner, file_fields
from services.batches.store import Store, batch_key, file_key, now
from services.edge.openai_api import ApiError, decode_json, read_limited
from services.router.store import key_id

SMALL_BODY_BYTES = 64 * 1024  # a batch creation's JSON: ids and metadata, never content

Caller = Callable[[Request], tuple[str, str]]


class BatchApi:
    def __init__(
        self, store: Store, runner: Runner, caller: Caller, max_file_bytes: int, retention_s: int, window_s: int
    ) -> None:
        self.store = store
        self.retention_s = retention_s  # uploaded files, and batches and their files once ended
        self.window_s = window_s  # a batch's completion window: it expires this long after its creation
        self.runner = runner
        self.caller = caller  # (tenant, API key) of the request, as the edge authenticates it
        self.max_file_bytes = max_file_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.create_file, methods=["POST"]),
            Route("/v1/files/{id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches/{id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{id}/cancel", self.cancel_batch, methods=["POST"]),
        ]

    async def create_file(self, request: Request) -> Response:
        tenant, _ = self.caller(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_file_bytes + 64 * 1024:
            raise ApiError(413, f"file over {self.max_file_bytes} bytes", code="request_too_large")
        try:
            form = await _bounded(request, self.max_file_bytes + 64 * 1024).form(
                max_files=1, max_fields=4, max_part_size=self.max_file_bytes
            )
        except ApiError:
            raise
        except Exception:  # starlette's MultiPartException and a malformed or oversized body alike
            raise ApiError(400, "expected a multipart form with file and purpose", code="invalid_file") from None
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch":
            raise ApiError(400, "purpose must be 'batch'", param="purpose", code="invalid_value")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "file is missing", param="file", code="invalid_file")
        content = await upload.read(self.max_file_bytes + 1)
        if len(content) > self.max_file_bytes:
            raise ApiError(413, f"file over {self.max_file_bytes} bytes", code="request_too_large")
        await wire.parse_lines_off_loop(content)  # a bad file is refused now, naming its first bad line
        file_id = f"file-{uuid.uuid4().hex}"
        fields = file_fields(tenant, (upload.filename or "batch.jsonl")[:256], content, purpose="batch")
        await self.store.put(file_key(file_id), fields)
        await self.store.expire([file_key(file_id)], self.retention_s)
        return JSONResponse(wire.file_body(file_id, await self.store.get(file_key(file_id))))

    async def get_file(self, request: Request) -> Response:
        file_id, fields = await self._file(request)
        return JSONResponse(wire.file_body(file_id, fields))

    async def file_content(self, request: Request) -> Response:
        _, fields = await self._file(request)
        return Response(fields["content"], media_type="application/jsonl")

    async def create_batch(self, request: Request) -> Response:
        tenant, key = self.caller(request)
        body = decode_json(await read_limited(request, SMALL_BODY_BYTES))
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        _check(body)
        input_id = body["input_file_id"]
        fields = await self.store.get(file_key(input_id))
        if fields.get("tenant", b"").decode() != tenant:
            raise ApiError(404, f"no file {input_id[:64]!r}", param="input_file_id", code="not_found")
        if fields["purpose"] != b"batch":
            raise ApiError(400, "the input file's purpose is not 'batch'", param="input_file_id", code="invalid_file")
        batch_id = f"batch_{uuid.uuid4().hex}"
        created = now()
        batch: dict[str, str | bytes] = {
            "tenant": tenant,
            "key_id": key_id(key),
            "input_file_id": input_id,
            "endpoint": wire.ENDPOINT,
            "completion_window": "24h",
            "status": "validating",
            "created_at": created,
            "expires_at": str(int(created) + self.window_s),
            "total": str(len(await wire.parse_lines_off_loop(fields["content"]))),
        }
        if body.get("metadata") is not None:
            batch["metadata"] = json.dumps(body["metadata"])
        await self.store.put(batch_key(batch_id), batch)
        # The input file outlives the batch's window, however short the retention: a batch resumed by another
        # edge reads it again.
        await self.store.expire([file_key(input_id)], self.window_s + self.retention_s)
        await self.store.activate(batch_id, True)
        self.runner.start(batch_id)
        return JSONResponse(wire.batch_body(batch_id, await self.store.get(batch_key(batch_id))))

    async def get_batch(self, request: Request) -> Response:
        batch_id, fields = await self._batch(request)
        return JSONResponse(wire.batch_body(batch_id, fields))

    async def cancel_batch(self, request: Request) -> Response:
        """Lines not yet sent are not sent; those in flight finish. The batch ends `cancelled`, with the files
        of the lines that finished. A batch already ending or ended is returned as it is."""
        batch_id, fields = await self._batch(request)
        if fields["status"] in (b"validating", b"in_progress"):
            await self.store.put(batch_key(batch_id), {"status": "cancelling", "cancelling_at": now()})
            self.runner.start(batch_id)  # on this edge, if no other runs it: it ends the batch
        return JSONResponse(wire.batch_body(batch_id, await self.store.get(batch_key(batch_id))))

    async def _batch(self, request: Request) -> tuple[str, dict[str, bytes]]:
        tenant, _ = self.caller(request)
        batch_id = request.path_params["id"]
        fields = await self.store.get(batch_key(batch_id))
        if fields.get("tenant", b"").decode() != tenant:  # also a hash of the store that is no batch (`<id>:results`)
            raise ApiError(404, f"no batch {batch_id[:64]!r}", code="not_found")
        return batch_id, fields

    async def _file(self, request: Request) -> tuple[str, dict[str, bytes]]:
        tenant, _ = self.caller(request)
        file_id = request.path_params["id"]
        fields = await self.store.get(file_key(file_id))
        if fields.get("tenant", b"").decode() != tenant:
            raise ApiError(404, f"no file {file_id[:64]!r}", code="not_found")
        return file_id, fields


def _bounded(request: Request, limit: int) -> Request:
    """The request, refused (413) once its body passes limit as it arrives: a chunked upload declares no length,
    and starlette's form parser spools a file part to disk without bound."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise ApiError(413, f"upload over {limit} bytes", code="request_too_large")
        return message

    return Request(request.scope, receive)


def _check(body: dict[str, Any]) -> None:
    if not isinstance(body.get("input_file_id"), str):
        raise ApiError(400, "input_file_id is required", param="input_file_id", code="invalid_value")
    if body.get("endpoint") != wire.ENDPOINT:
        raise ApiError(400, f"endpoint must be {wire.ENDPOINT}", param="endpoint", code="invalid_value")
    if body.get("completion_window") != "24h":
        raise ApiError(400, "completion_window must be '24h'", param="completion_window", code="invalid_value")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
        )
    ):
        raise ApiError(400, "metadata: at most 16 string pairs", param="metadata", code="invalid_value")
    unknown = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata"}
    if unknown:
        name = sorted(unknown)[0][:64]
        raise ApiError(400, f"unrecognized request argument: {name!r}", param=name, code="unknown_parameter")
