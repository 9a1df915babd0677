"""The Files and Batches routes: POST and GET /v1/files, GET and DELETE /v1/files/{id}, GET
/v1/files/{id}/content, POST and GET /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel. Per
tenant: another tenant's file or batch is a 404, and never listed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from services.batches import idempotent, output_files, wire
from services.batches.idempotent import Claim
from services.batches.output_files import FileGone
from services.batches.quota import FileQuota
from services.batches.runner import Runner, file_fields
from services.batches.store import (
    CANCELLABLE,
    COUNTING_S,
    GROUPS,
    Store,
    batch_key,
    delete_if_unread,
    file_key,
    readers_key,
    remove_file,
    stamp,
    unread,
)
from services.edge.given_once import known_only, single
from services.edge.idempotency import sent_key
from services.edge.openai_api import ApiError, decode_json, read_limited, unknown_argument
from services.edge.router_headers import refuse_unapplied
from services.router.store import key_id

log = logging.getLogger("llmrouter.edge.batches")

SMALL_BODY_BYTES = 64 * 1024  # a batch creation's JSON: ids and metadata, never content
# Never the content.
FILE_LISTED = ["tenant", "filename", "purpose", "created_at", "bytes", "deleted", "lines", "status_details"]
FILE_LISTING = ("after", "limit", "order", "purpose")  # OpenAI's query parameters of each listing
BATCH_LISTING = ("after", "limit")
UPLOAD_FIELDS = ("file", "purpose")
PAGE_CHUNK = 1000  # ids read from an index at a time
# A batch failed as a retry took over its stalled creation (_batch_there): its record names it no longer.
TAKEN_OVER = "taken_over"
TAKEN_OVER_FIELDS = {
    TAKEN_OVER: "1",
    "errors": wire.batch_errors(
        "creation_taken_over",
        "The batch's creation stalled, and a retry with its Idempotency-Key created another batch in its place: this "
        "one never runs.",
    ),
}

Caller = Callable[[Request], tuple[str, str]]
T = TypeVar("T")


class BatchApi:
    def __init__(
        self,
        store: Store,
        runner: Runner,
        caller: Caller,
        max_file_bytes: int,
        retention_s: int,
        window_s: int,
        max_uploads: int,
        max_uploads_per_tenant: int,
        max_line_bytes: int,
        tenant_file_bytes: int,
    ) -> None:
        self.store = store
        self.quota = FileQuota(store, tenant_file_bytes)  # a tenant's uploaded files stored at once, in bytes
        # Each upload is held whole in memory (up to max_file_bytes, once: its lines are checked one at a time):
        # past max_uploads at once a new one is refused (429) before its body is read. One tenant holds at most
        # max_uploads_per_tenant of them, so its slow transfers cannot lock every other tenant out.
        self.max_uploads = max_uploads
        self.max_uploads_per_tenant = max_uploads_per_tenant
        self.uploads: Counter[str] = Counter()  # places held, by tenant
        self.retention_s = retention_s  # uploaded files, and batches and their files once ended
        self.window_s = window_s  # a batch's completion window: it expires this long after its creation
        self.runner = runner
        self.caller = caller  # (tenant, API key) of the request, as the edge authenticates it
        self.max_file_bytes = max_file_bytes
        self.max_line_bytes = max_line_bytes  # a request's body at most, as the chat route takes it
        self._writing: set[asyncio.Task[Any]] = set()  # creations whose request was cancelled, still writing

    async def close(self) -> None:
        """Let the creations in progress finish (or be undone) before the store closes."""
        await asyncio.gather(*self._writing, return_exceptions=True)

    async def _to_end(self, writes: Awaitable[T]) -> T:
        """A creation's writes (and their undo) run to their end, even when its request is cancelled (the server
        stopping past its grace, or a client gone where the server cancels its request): cancelled between two
        writes, a batch stayed `validating` for ever, holding its input file, or a file stayed unlisted, perhaps
        without expiry. Only the request ends at once."""
        task = asyncio.ensure_future(writes)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._writing.add(task)  # held (a task only weakly referenced may be collected) until it ends
            task.add_done_callback(self._abandoned)
            raise

    def _abandoned(self, task: asyncio.Task[Any]) -> None:
        self._writing.discard(task)
        if not task.cancelled() and task.exception() is not None:  # no request left to report it
            log.warning("batch store: a creation whose request was cancelled failed", exc_info=task.exception())

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.create_file, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{id}/cancel", self.cancel_batch, methods=["POST"]),
        ]

    async def create_file(self, request: Request) -> Response:
        tenant, key = self.caller(request)
        refuse_unapplied(request.headers, "POST /v1/files")  # before a place is taken or the body read
        sent = sent_key(request.headers)
        async with self._upload_slot(tenant):
            return await self._create_file(request, tenant, key, sent)

    @asynccontextmanager
    async def _upload_slot(self, tenant: str) -> AsyncIterator[None]:
        """One of max_uploads (a file's content in memory), at most max_uploads_per_tenant of them the tenant's,
        or a 429."""
        if self.uploads.total() >= self.max_uploads:
            busy = f"{self.max_uploads} file uploads or downloads are in progress on this server"
        elif self.uploads[tenant] >= self.max_uploads_per_tenant:
            busy = f"{self.max_uploads_per_tenant} of your file uploads or downloads are in progress on this server"
        else:
            busy = ""
        if busy:
            raise ApiError(429, f"{busy}; retry shortly", code="rate_limit_exceeded", retry_after="1")
        self.uploads[tenant] += 1  # no await since the check: the event loop runs one request at a time up to here
        try:
            yield
        finally:
            self.uploads[tenant] -= 1
            if not self.uploads[tenant]:
                del self.uploads[tenant]

    async def _create_file(self, request: Request, tenant: str, key: str, sent: str | None) -> Response:
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
        refuse_unknown_fields(form)
        upload, purpose = form.get("file"), single(form, "purpose", "form field")
        if purpose != "batch":
            raise ApiError(400, "purpose must be 'batch'", param="purpose", code="invalid_value")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "file is missing", param="file", code="invalid_file")
        content = await upload.read(self.max_file_bytes + 1)
        if len(content) > self.max_file_bytes:
            raise ApiError(413, f"file over {self.max_file_bytes} bytes", code="request_too_large")
        # A bad file is refused now, naming its first bad line.
        count = await wire.check_lines_off_loop(content, self.max_line_bytes)
        filename = (upload.filename or "batch.jsonl")[:256]
        claim = None
        if sent is not None:  # the same file is its name, purpose and content
            asked = await asyncio.to_thread(_file_request, filename, purpose, content)  # up to max_file_bytes hashed
            claim = idempotent.claim_for("file", tenant, key, sent, asked)
            if made := await idempotent.existing(self.store, claim, self._file_there(tenant)):
                return JSONResponse(wire.file_body(*made))
        file_id = f"file-{uuid.uuid4().hex}"
        fields = file_fields(tenant, filename, content, "batch", count)
        if made := await self._to_end(self._write_file(tenant, file_id, fields, len(content), claim)):
            return JSONResponse(wire.file_body(*made))
        return await self._file_reply(file_id)

    async def _file_reply(self, file_id: str) -> Response:
        return JSONResponse(wire.file_body(file_id, (await self.store.fields([file_key(file_id)], FILE_LISTED))[0]))

    def _file_there(self, tenant: str) -> idempotent.StillThere:
        """The tenant's file's fields when it is there to be told: not deleted, nor one whose upload died part way. One
        still being uploaded (`creating`: its record claimed, not yet counted or stored) is a 409 to retry: told now,
        its upload refused next (the quota) or undone, its caller would hold the id of a file that never was."""

        async def there(file_id: str) -> dict[str, bytes] | None:
            fields = (await self.store.fields([file_key(file_id)], [*FILE_LISTED, "creating"]))[0]
            if fields.get("tenant", b"").decode() != tenant or "deleted" in fields:
                return None
            if "creating" not in fields:
                return fields
            if await self.store.clock(file_key(file_id)) - _upload_began(fields) < idempotent.CREATING_S:
                raise idempotent.in_use("file")
            # Left so by an upload that died part way, or stalled there (its edge paused), which may yet resume: taken
            # from it in one step, so that it stores nothing beside the file that takes its place. Stored meanwhile,
            # it is told as it is.
            if await self.store.abandon(file_key(file_id)):
                return None
            return await there(file_id)

        return there

    async def _write_file(
        self, tenant: str, file_id: str, fields: dict[str, str | bytes], size: int, claim: Claim | None
    ) -> idempotent.Made | None:
        """The file counted against its tenant's quota (or refused, nothing kept), written and listed; or, when an
        upload with the same Idempotency-Key made one first, that file (and its fields), this one dropped. Its fields
        without content, marked `creating`, come first, then the record's claim, then the count: a retry racing it is
        told to retry (409) until the file is there, where counted a second time it was refused at the quota's edge
        though the first stored the file. Its content is written last, in one step with the end of `creating`, unless
        a retry took the upload over (it stalled past CREATING_S): then it is undone."""
        creating = {name: value for name, value in fields.items() if name != "content"}
        began = await stamp(self.store, file_key(file_id))
        creating |= {"creating": began, "created_at": CREATING_CREATED_AT}  # its created_at as COMPLETE writes it
        fields = fields | {"created_at": began}  # by the store's clock, as a batch's: not this edge's own
        try:
            await self.store.put(file_key(file_id), creating, COUNTING_S)  # as its count: lapses if this edge dies
            if claim is not None:
                made = await idempotent.take(self.store, claim, file_id, self.retention_s, self._file_there(tenant))
                if made is not None:
                    await remove_file(self.store, tenant, file_id)  # not counted nor listed yet
                    return made
            if (counted := await self.quota.take(tenant, file_id, size)) is not None:
                raise ApiError(
                    400,
                    f"file storage limit reached: your files stored take {counted} bytes of your "
                    f"{self.quota.most}, and this one would take {size} more (each file counts at least 1024); "
                    "delete files (DELETE /v1/files/{file_id}) or wait for them to expire",
                    param="file",
                    code="storage_limit_exceeded",
                )
            # A stall past COUNTING_S lapses the hash or its count, or a retry takes the upload over (abandoning its
            # hash): stored then, it would stay uncounted, or be a second file of one Idempotency-Key (undone). Its
            # count is kept first: a file stored is counted as long as it is kept.
            if not await self.store.keep_counted(tenant, file_id, self.retention_s):
                raise _stalled()
            if not await self.store.complete(file_key(file_id), fields, self.retention_s):
                raise _stalled()
            await self.store.index(tenant, "file", file_id, self.retention_s, "batch")
        except Exception:  # a file refused part way is not kept, unlisted (and perhaps without expiry) in the store
            await _undo(lambda: remove_file(self.store, tenant, file_id), *self._unclaim(claim, file_id))
            raise
        return None

    async def list_files(self, request: Request) -> Response:
        """As OpenAI's: newest first unless order=asc, up to `limit` (1 to 10,000, all by default) past `after`,
        of one `purpose` if given: read from that purpose's index, so a page of it costs its size, however many
        files of other purposes the tenant has."""
        tenant, _ = self.caller(request)
        query = request.query_params
        known_only(query, FILE_LISTING, "a file listing takes")
        order = single(query, "order")
        if order not in (None, "asc", "desc"):
            raise ApiError(400, "order must be 'asc' or 'desc'", param="order", code="invalid_value")
        limit = _limit(single(query, "limit"), 10_000, 10_000)
        purpose, after = single(query, "purpose"), single(query, "after")
        if purpose is not None and purpose not in GROUPS["file"]:
            # No file here has it: an empty page, its `after` checked as any listing's.
            await self._list(tenant, "file", after, 0, True, ["tenant"])
            return JSONResponse(_page([], limit))
        found = await self._list(tenant, "file", after, limit, order != "asc", FILE_LISTED, purpose)
        return JSONResponse(_page([wire.file_body(i, f) for i, f in found], limit))

    async def delete_file(self, request: Request) -> Response:
        """The file is gone from the API at once. One a running batch reads keeps its content, unseen, until the
        batch ends (or a batch resumed by another edge would fail): the batch goes on, as at OpenAI."""
        tenant, _ = self.caller(request)
        file_id, _ = await self._file(request)
        if await unread(self.store, file_id):
            # Removed at once, before any write: a full batch Redis (noeviction) refuses writes but takes deletes,
            # and the room freed lets the unindexing through. Its bytes given back even if the request is cancelled.
            await self._to_end(remove_file(self.store, tenant, file_id))
        else:
            await self.store.put(file_key(file_id), {"deleted": await stamp(self.store, file_key(file_id))})
            await delete_if_unread(self.store, file_id)  # its batches may have ended since: its bytes back then
        await self.store.unindex(tenant, "file", file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def get_file(self, request: Request) -> Response:
        file_id, fields = await self._file(request)
        return JSONResponse(wire.file_body(file_id, fields))

    async def file_content(self, request: Request) -> Response:
        """Sent a part at a time as it is read (output_files.parts): a batch's output or error file in its stored
        parts, whatever its size; one stored whole (an upload, up to max_file_bytes) read whole. A download takes one
        of the uploads' places until its content is sent."""
        file_id, fields = await self._file(request)
        tenant, _ = self.caller(request)
        async with AsyncExitStack() as held:
            await held.enter_async_context(self._upload_slot(tenant))
            parts = output_files.parts(self.store, file_key(file_id), fields)
            held.push_async_callback(parts.aclose)
            try:
                first = await anext(parts)
            except StopAsyncIteration:  # an empty file
                first = b""
            except FileGone:  # deleted or expired since
                raise ApiError(404, f"no file {file_id[:64]!r}", code="not_found") from None
            return _Sent(first, parts, int(fields["bytes"]), held.pop_all())

    async def create_batch(self, request: Request) -> Response:
        tenant, key = self.caller(request)
        refuse_unapplied(request.headers, "POST /v1/batches")
        sent = sent_key(request.headers)
        body = decode_json(await read_limited(request, SMALL_BODY_BYTES))
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        _check(body)
        claim = None
        if sent is not None:
            # Before the input file is looked at: a retry gets its batch even once that file is deleted.
            claim = idempotent.claim_for("batch", tenant, key, sent, json.dumps(body, sort_keys=True).encode())
            if made := await idempotent.existing(self.store, claim, self._batch_there(tenant)):
                return JSONResponse(wire.batch_body(*made))
        input_id = body["input_file_id"]
        fields = (await self.store.fields([file_key(input_id)], [*FILE_LISTED, "creating"]))[0]
        if not _readable(fields, tenant):
            raise ApiError(404, f"no file {input_id[:64]!r}", param="input_file_id", code="not_found")
        if fields["purpose"] != b"batch":
            raise ApiError(400, "the input file's purpose is not 'batch'", param="input_file_id", code="invalid_file")
        total = int(fields["lines"]) if "lines" in fields else await self._count(tenant, input_id)
        batch_id = f"batch_{uuid.uuid4().hex}"
        # By the store's clock, as every edge's runner judges its expires_at (Store.window_left_s): this edge's own,
        # off, had it expire early or late.
        created = await stamp(self.store, batch_key(batch_id))
        batch: dict[str, str | bytes] = {
            "tenant": tenant,
            "key_id": key_id(key),
            "input_file_id": input_id,
            "endpoint": wire.ENDPOINT,
            "completion_window": "24h",
            "status": "validating",
            "created_at": created,
            "expires_at": str(int(created) + self.window_s),
            "total": str(total),
        }
        if body.get("metadata") is not None:
            batch["metadata"] = json.dumps(body["metadata"])
        if made := await self._to_end(self._write_batch(tenant, batch_id, batch, claim)):
            return JSONResponse(wire.batch_body(*made))  # a creation with the same Idempotency-Key made it first
        # Its fields as written: a read failing now would tell the caller of a batch that runs that it failed.
        return JSONResponse(
            wire.batch_body(batch_id, {k: v.encode() if isinstance(v, str) else v for k, v in batch.items()})
        )

    def _batch_there(self, tenant: str) -> idempotent.StillThere:
        """The tenant's batch's fields when it is there to be told: not gone, nor one whose creation died part way (its
        edge killed between its record's claim and its activation), which no edge would ever run or end. One still
        being created is a 409 to retry: told now, its creation undone next (the store failing), its caller would hold
        the id of a batch that never was."""

        async def there(batch_id: str) -> dict[str, bytes] | None:
            fields = await self.store.get(batch_key(batch_id))
            if fields.get("tenant", b"").decode() != tenant or TAKEN_OVER in fields:
                return None
            if fields.get("status") != b"validating" or await self.store.is_active(batch_id):
                return fields
            created = int(fields.get("created_at", b"0"))  # by the store's clock, as read here
            if await self.store.clock(batch_key(batch_id)) - created < idempotent.CREATING_S:
                raise idempotent.in_use("batch")  # still being written
            # Left so by a creation that died part way, or stalled there (its edge paused), which may yet resume and
            # activate it: failed first, in one step only while still `validating` (its run moves it on the same way),
            # so that it never runs beside the batch that takes its place. Moved on meanwhile, it is told as it is.
            if await self.store.advance(batch_id, ("validating",), "failed", TAKEN_OVER_FIELDS) is not None:
                await self.store.expire([batch_key(batch_id)], self.retention_s)  # kept as an ended batch is
                return None
            return await there(batch_id)

        return there

    async def _write_batch(
        self, tenant: str, batch_id: str, batch: dict[str, str | bytes], claim: Claim | None
    ) -> idempotent.Made | None:
        """The batch written and started; or, when a creation with the same Idempotency-Key made one first, that batch
        (and its fields), this one dropped, never run."""
        input_id, created = str(batch["input_file_id"]), batch["created_at"]
        try:
            await self.store.put(batch_key(batch_id), batch)
            if claim is not None:
                # As long as any batch is kept: its window, then retention_s once it ended.
                kept_s = self.window_s + self.retention_s
                made = await idempotent.take(self.store, claim, batch_id, kept_s, self._batch_there(tenant))
                if made is not None:
                    await self.store.delete([batch_key(batch_id)])  # nothing else of it written yet
                    return made
            # Its content stays, deleted, until the batch ends.
            await self.store.put(readers_key(input_id), {batch_id: created})
            # The input file outlives the batch's window, however short the retention: a batch resumed by another
            # edge reads it again.
            kept_s = self.window_s + self.retention_s
            await self.store.expire([file_key(input_id), readers_key(input_id)], kept_s)
            await self.store.keep_counted(tenant, input_id, kept_s)  # its bytes counted as long
            await self.store.index(tenant, "file", input_id, kept_s, "batch")
            await self.store.index(tenant, "batch", batch_id, None)  # listed for as long as it runs, then retention_s
            await self.store.activate(batch_id, True)  # last: from here any edge runs it
        except Exception:
            # The store full (507) or failing part way: a batch left behind `validating` was never run, nor ended,
            # yet listed and holding its input file. Its hash goes first: without it the rest is inert.
            await _undo(
                lambda: self.store.delete([batch_key(batch_id)]),
                lambda: self.store.activate(batch_id, False),
                lambda: self.store.drop(readers_key(input_id), batch_id),
                lambda: self.store.unindex(tenant, "batch", batch_id),
                *self._unclaim(claim, batch_id),
            )
            raise
        self.runner.start(batch_id, tenant=tenant)
        return None

    def _unclaim(self, claim: Claim | None, item_id: str) -> list[Callable[[], Awaitable[None]]]:
        """The undo of a creation's claim of its Idempotency-Key, if any: a retry creates it anew."""
        if claim is None:
            return []
        return [lambda: self.store.unclaim(claim.key, claim.value(item_id))]

    async def _count(self, tenant: str, file_id: str) -> int:
        """The requests of a file uploaded before files kept their count: its content read and checked again,
        an upload's worth of memory, so within the uploads' bound."""
        async with self._upload_slot(tenant):
            content = await self.store.content(file_key(file_id))
            if content is None:  # gone since: as a file never stored
                raise ApiError(404, f"no file {file_id[:64]!r}", param="input_file_id", code="not_found")
            return await wire.check_lines_off_loop(content, self.max_line_bytes)

    async def get_batch(self, request: Request) -> Response:
        batch_id, fields = await self._batch(request)
        return JSONResponse(wire.batch_body(batch_id, fields))

    async def list_batches(self, request: Request) -> Response:
        """As OpenAI's: newest first, up to `limit` (1 to 100, 20 by default) past `after`."""
        tenant, _ = self.caller(request)
        # OpenAI's batch listing has no order (nor purpose): newest first, always.
        known_only(request.query_params, BATCH_LISTING, "a batch listing takes")
        limit = _limit(single(request.query_params, "limit"), 20, 100)
        after = single(request.query_params, "after")
        found = await self._list(tenant, "batch", after, limit, True, None)
        return JSONResponse(_page([wire.batch_body(i, f) for i, f in found], limit))

    async def _list(
        self,
        tenant: str,
        kind: str,
        after: str | None,
        limit: int,
        newest_first: bool,
        names: list[str] | None,
        group: str | None = None,
    ) -> list[tuple[str, dict[str, bytes]]]:
        """Up to limit + 1 (the one past says there are more) of the tenant's listed items (of one group) past
        `after`, from its index. An entry whose hash is gone (evicted, or deleted) is passed over, and left to lapse."""
        key = file_key if kind == "file" else batch_key
        found: list[tuple[str, dict[str, bytes]]] = []
        gone: list[str] = []
        cursor = after
        while len(found) <= limit:
            ids = await self.store.page(tenant, kind, cursor, min(limit + 1, PAGE_CHUNK), newest_first, group)
            if ids is None:
                raise ApiError(
                    400, f"after: no {kind} {cursor!r:.64} to list from", param="after", code="invalid_value"
                )
            for item_id, fields in zip(ids, await self.store.fields([key(i) for i in ids], names), strict=True):
                if fields.get("tenant", b"").decode() != tenant:
                    gone.append(item_id)
                elif "deleted" not in fields:
                    found.append((item_id, fields))
            if len(ids) < min(limit + 1, PAGE_CHUNK):
                break
            cursor = ids[-1]
        # Unindexed once the listing is done: a write to the index drops every entry past its deadline, perhaps the
        # last one read, which the next page starts after.
        for item_id in gone:
            await self.store.unindex(tenant, kind, item_id)
        return found[: limit + 1]

    async def cancel_batch(self, request: Request) -> Response:
        """Lines not yet sent are not sent; those in flight finish (those in doubt too: runner.py). The batch ends
        `cancelled`, with the files of the lines that finished. A batch already ending or ended is returned as it is."""
        batch_id, fields = await self._batch(request)
        if await self.store.advance(batch_id, CANCELLABLE, "cancelling") is not None:  # not one its run ended meanwhile
            # On this edge, if no other runs it: it ends the batch.
            self.runner.start(batch_id, tenant=fields["tenant"].decode())
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
        fields = (await self.store.fields([file_key(file_id)], [*FILE_LISTED, "creating", "parts"]))[0]  # no content
        if not _readable(fields, tenant):
            raise ApiError(404, f"no file {file_id[:64]!r}", code="not_found")
        return file_id, fields


class _Sent(Response):
    """A file's content, its first part read, that gives back its upload place once sent or its client gone: returned
    by the handler, the place is held until then (a slow reader holds it for long). Each part is read once the client
    took the last (the server takes a whole body into its send buffer at once, so the last send returned, and the
    place went, before the client had read any of it). A file gone as it is sent cuts the response short: its
    Content-Length tells the client."""

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None], size: int, place: AsyncExitStack) -> None:
        super().__init__(media_type="application/jsonl", headers={"content-length": str(size)})
        self.first, self.rest, self.place = first, rest, place

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A client gone (closed, or dropped as too slow) takes sends without a word: each next part, read from the
        # store, went nowhere to the file's end, the place held meanwhile. Each read ends at its leaving instead.
        leaving = asyncio.create_task(_client_left(receive))
        reading: asyncio.Future[bytes | None] | None = None
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.first, "more_body": True})
            while True:
                reading = asyncio.ensure_future(anext(self.rest, None))
                await asyncio.wait((reading, leaving), return_when=asyncio.FIRST_COMPLETED)
                if not reading.done() and _left(leaving):
                    return
                if (part := await reading) is None:
                    break
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            leaving.cancel()
            # The read under way ended before its generator is closed (the place's): the client gone, or this request
            # cancelled (the server's shutdown past its grace), which left it running and the closing raising.
            if reading is not None and not reading.done():
                reading.cancel()
                await asyncio.wait((reading,))
            await self.place.aclose()


async def _client_left(receive: Receive) -> bool:
    """Whether the client has gone: the request's body read and dropped (a GET has none, or a little), the next
    message is http.disconnect. Another is no news of the client (waiting on could spin): the watch ends there."""
    message = await receive()
    while message["type"] == "http.request" and message.get("more_body", False):
        message = await receive()
    if message["type"] == "http.request":
        message = await receive()
    return message["type"] == "http.disconnect"


def _left(watch: asyncio.Task[bool]) -> bool:
    """A watch that ended (_client_left) ended on the client's leaving, not on its receive failing."""
    return not watch.cancelled() and watch.exception() is None and watch.result()


def _readable(fields: dict[str, bytes], tenant: str) -> bool:
    """The tenant's file, neither deleted nor still being uploaded (`creating`: not yet counted, it may yet be refused
    and removed; a DELETE removing it, its upload wrote it anew uncounted, without expiry)."""
    return fields.get("tenant", b"").decode() == tenant and "deleted" not in fields and "creating" not in fields


# The created_at of a file still being uploaded (its `creating` holds when the upload began, by the store's clock): an
# edge of the version before (which wrote `creating` 1 and judged a stall by created_at, its own clock) reads it as an
# upload just begun, a 409 to retry, so it never takes over an upload of this version, whose last write it would not
# stop (COMPLETE: it leaves the hash `creating`), and two files of one Idempotency-Key were stored. The hash lapses
# COUNTING_S after it is written: its takeover then finds it gone, as a dead upload's is to any edge.
CREATING_CREATED_AT = "9999999999"
OLD_CREATING = b"1"  # the `creating` of an upload of the version before: its created_at says when it began


def _upload_began(fields: dict[str, bytes]) -> int:
    """When an upload still `creating` began, by the store's clock; one of the version before, by its edge's."""
    creating = fields["creating"]
    return int(fields.get("created_at", b"0")) if creating == OLD_CREATING else int(creating)


def _stalled() -> ApiError:
    """An upload that took longer than COUNTING_S to store: undone, to be sent again."""
    return ApiError(
        503,
        "the upload took too long to store and was undone: retry it",
        param="file",
        code="upload_timed_out",
        retry_after="1",
    )


async def _undo(*steps: Callable[[], Awaitable[None]]) -> None:
    """Each step tried, in order, whatever the others do: undoing what a failed write left, in a store that may be
    full (noeviction: its deletes still go through; a listing passes over an entry whose hash is gone) or out of
    reach (what could not be undone then stays)."""
    for step in steps:
        try:
            await step()
        except Exception:
            log.warning("batch store: an undo failed", exc_info=True)


def _limit(text: str | None, default: int, most: int) -> int:
    if text is None:
        return default
    # ASCII digits only: str.isdigit() holds for superscripts ('²') that int() refuses, a 500 where this is a 400.
    # Nor more digits than `most` has, past leading zeros: int() refuses a text of over 4,300 digits (zeros included).
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or len(digits) > len(str(most)) or not 1 <= int(digits or "0") <= most:
        raise ApiError(400, f"limit must be an integer from 1 to {most}", param="limit", code="invalid_value")
    return int(digits)


def _page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's list object; `data` holds one item past the page when there are more."""
    shown = data[:limit]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(data) > limit,
    }


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


def refuse_unknown_fields(form: FormData) -> None:
    """A 400 naming an upload's form field other than file and purpose. OpenAI's expires_after (`expires_after[anchor]`,
    `expires_after[seconds]`) is unsupported_parameter: ignored, a file its caller asked to expire within the hour was
    kept the retention (EDGE_BATCH_RETENTION_S, 30 days by default)."""
    for name in form:
        if name.startswith("expires_after"):
            shown = name[:64]
            told = f"{shown} is not supported: a file is kept until deleted (DELETE /v1/files/{{file_id}}) or the "
            raise ApiError(400, told + "server's retention ends", param=shown, code="unsupported_parameter")
        if name not in UPLOAD_FIELDS:
            raise unknown_argument(name)


def _file_request(filename: str, purpose: str, content: bytes) -> bytes:
    """What an upload asked, as its Idempotency-Key's record tells it apart: a digest of its content, and its name."""
    return json.dumps([filename, purpose, hashlib.sha256(content).hexdigest()]).encode()


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
