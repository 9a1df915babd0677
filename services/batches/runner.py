"""Running batches: the lines the router defers go to the providers' Batch APIs (deferral.py); every other line
is a chat completion sent to the router like any request (same policy, budgets and ledger), as the batch's tenant
and key, with request id `<batch id>:<custom_id>`, at most EDGE_BATCH_CONCURRENCY lines at a time across the
edge's batches.

Each line's result is written once to the store, so a restarted edge resumes a batch where it stopped. A
line the router never admitted (the router unreachable or restarting, the money store down, a rate limit)
is retried with the same request id; any other failure is the line's error (the error file). Stopping the
edge stops taking lines and lets those in flight finish; a crash loses the results of lines in flight,
whose retry the router then refuses as a duplicate (charged once, in the ledger, and in the error file)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Gauge

from llmrouter.errors import ServiceError
from llmrouter.tasks import stop as stop_task
from llmrouter.v1 import router_pb2_grpc
from services.batches import results, wire
from services.batches.deferral import Deferral
from services.batches.store import Store, batch_key, file_key, now, results_key
from services.edge.openai_api import ApiError, check_encoded_size, completion_body, parse_request

log = logging.getLogger("llmrouter.edge.batches")

RUNNING = Gauge("llmrouter_edge_batches_running", "Batches this edge is running")

LEASE_S = 30  # an edge that stops renewing (crashed) loses its batches to another within this
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # then every 5 s, until the router admits the line

ErrorFor = Callable[[grpc.RpcError, str], ApiError]


class Runner:
    def __init__(
        self,
        store: Store,
        router: router_pb2_grpc.RouterStub,
        error_for: ErrorFor,
        concurrency: int,
        timeout_s: float,
        retention_s: int,
        poll_s: float = 60.0,
    ) -> None:
        self.store = store
        self.deferral = Deferral(store, router, poll_s)  # the lines sent through the providers' Batch APIs
        self.owner = uuid.uuid4().hex  # this edge, in batch leases
        self.retention_s = retention_s
        self.router = router
        self.error_for = error_for  # the edge's mapping of a router error to OpenAI's status and body
        self.slots = asyncio.Semaphore(concurrency)
        self.timeout_s = timeout_s
        self.runs: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def resume(self) -> None:
        """Run the batches still active in the store that no other edge runs (a stopped or crashed edge
        left them unfinished), now and then every LEASE_S / 2, so another edge's batches outlive it."""
        await self._adopt()
        self._watch = asyncio.create_task(self._keep_adopting())

    async def _adopt(self) -> None:
        for batch_id in sorted(await self.store.active()):
            self.start(batch_id)

    async def _keep_adopting(self) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 2)
            try:
                await self._adopt()
            except Exception:
                log.warning("batch store unreachable; will look for batches to resume again", exc_info=True)

    def start(self, batch_id: str) -> None:
        if batch_id not in self.runs and not self.stopping:
            task = asyncio.create_task(self._run(batch_id))
            self.runs[batch_id] = task
            RUNNING.inc()
            task.add_done_callback(lambda _: self._ended(batch_id))

    def _ended(self, batch_id: str) -> None:
        self.runs.pop(batch_id, None)
        RUNNING.dec()

    async def close(self) -> None:
        """Take no more lines; let the lines in flight finish and record their results."""
        self.stopping = True
        if self._watch is not None:
            await stop_task(self._watch)  # it reads the store, which can swallow one cancellation
        if self.runs:
            await asyncio.gather(*self.runs.values(), return_exceptions=True)

    async def _run(self, batch_id: str) -> None:
        if not await self.store.lease(batch_id, self.owner, LEASE_S):
            return  # another edge runs it
        renewing = asyncio.create_task(self._renew(batch_id))
        try:
            batch = await self.store.get(batch_key(batch_id))
            content = (await self.store.get(file_key(batch["input_file_id"].decode())))["content"]
            lines = wire.parse_lines(content)  # validated when the batch was created
            done = await self.store.get(results_key(batch_id))
            if batch["status"] == b"validating":
                await self.store.put(batch_key(batch_id), {"status": "in_progress", "in_progress_at": now()})
            if batch["status"] == b"cancelling":
                deferred: dict[int, dict[str, str]] | None = await self.deferral.recorded(batch_id)
            else:
                deferred = await self.deferral.offer(batch_id, batch, lines, set(done))
            if deferred is None:
                return  # the router is out of reach: resumed later
            done = await self.store.get(results_key(batch_id))
            cancelled = False
            async with asyncio.TaskGroup() as group:
                for index, line in enumerate(lines):
                    if str(index) in done or index in deferred:
                        continue
                    await self.slots.acquire()
                    if self.stopping or renewing.done():  # stopping, or the lease is lost: another edge resumes
                        self.slots.release()
                        return
                    if (await self.store.get(batch_key(batch_id))).get("status") == b"cancelling":
                        self.slots.release()
                        cancelled = True  # the lines in flight finish; no more are sent
                        break
                    group.create_task(self._line(batch_id, batch, index, line))
            # The lines in provider batches finish too, cancelled or not: they run at the provider.
            if not await self.deferral.collect(
                batch_id, batch, lines, deferred, lambda: not (self.stopping or renewing.done())
            ):
                return
            await self._finish(batch_id, batch, len(lines), cancelled)
        except Exception:
            log.exception("batch run failed; it stays active and is resumed", extra={"id": batch_id})
        finally:
            await stop_task(renewing)  # not left renewing the lease of a run that ended

    async def _renew(self, batch_id: str) -> None:
        """Keeps the lease while the batch runs; returns when it is lost (the run then stops taking lines)."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                if not await self.store.lease(batch_id, self.owner, LEASE_S):
                    log.warning("batch lease lost to another edge; stopping", extra={"id": batch_id})
                    return
            except Exception:
                log.warning("batch lease not renewed; stopping", extra={"id": batch_id}, exc_info=True)
                return

    async def _line(self, batch_id: str, batch: dict[str, bytes], index: int, line: dict[str, Any]) -> None:
        try:
            custom_id = line["custom_id"]
            answered = await self._complete(batch, f"{batch_id}:{custom_id}", line["body"])
            if answered is None:
                return  # stopping before the router admitted it: the next run sends it
            status, body = answered
            cost = body.get("x_router", {}).get("cost_usd", "0") if status == 200 else "0"
            await results.record(self.store, batch_id, index, custom_id, status, body, cost)
        finally:
            self.slots.release()

    async def _complete(self, batch: dict[str, bytes], request_id: str, body: Any) -> tuple[int, Any] | None:
        """(HTTP status, body) of one line, as POST /v1/chat/completions would answer it; None when the edge
        stops before the router admitted it."""
        try:
            parsed, raw = parse_request(json.dumps(body).encode())
            if parsed.stream:
                raise ApiError(400, "a batch request cannot stream", param="stream", code="invalid_value")
            message = parsed.to_router(raw, batch["tenant"].decode(), "", request_id)
            message.api_key_id = batch["key_id"].decode()
            check_encoded_size(message)
        except ApiError as err:
            return err.status, err.body()
        attempt = 0
        while True:
            try:
                response = await self.router.Complete(message, timeout=self.timeout_s)
            except grpc.RpcError as err:
                if not not_admitted(ServiceError.from_rpc_error(err)):
                    error = self.error_for(err, request_id)
                    return error.status, error.body()
                if self.stopping:
                    return None
                await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
                continue
            return 200, completion_body(response)

    async def _finish(self, batch_id: str, batch: dict[str, bytes], total: int, cancelled: bool) -> None:
        """The output and error files of the lines that finished, in input order; ids derived from the batch,
        so a finish interrupted and run again writes the same files."""
        if not cancelled:
            await self.store.put(batch_key(batch_id), {"status": "finalizing", "finalizing_at": now()})
        results = await self.store.get(results_key(batch_id))
        parsed = [json.loads(results[str(i)]) for i in range(total) if str(i) in results]
        tenant = batch["tenant"].decode()
        fields: dict[str, str | bytes] = (
            {"status": "cancelled", "cancelled_at": now()}
            if cancelled
            else {"status": "completed", "completed_at": now()}
        )
        for kind, ok in (("output", True), ("error", False)):
            lines = [r["line"] for r in parsed if r["ok"] is ok]
            if lines:
                content = ("\n".join(lines) + "\n").encode()
                file_id = f"file-{batch_id}-{kind}"
                await self.store.put(file_key(file_id), file_fields(tenant, f"{batch_id}_{kind}.jsonl", content))
                fields[f"{kind}_file_id"] = file_id
        await self.store.put(batch_key(batch_id), fields)
        kept = [
            batch_key(batch_id),
            results_key(batch_id),
            *(file_key(str(fields[f"{k}_file_id"])) for k in ("output", "error") if f"{k}_file_id" in fields),
        ]
        await self.store.expire(kept, self.retention_s)
        await self.store.activate(batch_id, False)
        log.info("batch ended", extra={"id": batch_id, "lines": len(parsed), "status": fields["status"]})


def not_admitted(error: ServiceError) -> bool:
    """A failure before the router admitted the request (nothing claimed, nothing charged): the same request
    id may be sent again. A call without the router's ErrorInfo that it never answered is the router itself
    unreachable, or stopping (a restart) and dropping the call unserved; with the ErrorInfo (reason
    UPSTREAM_ERROR: the router's own call to the providers broke), the request was admitted."""
    return error.unanswered or error.reason in ("STORE_UNAVAILABLE", "RATE_LIMITED")


def file_fields(tenant: str, filename: str, content: bytes, purpose: str = "batch_output") -> dict[str, str | bytes]:
    return {
        "tenant": tenant,
        "filename": filename,
        "purpose": purpose,
        "created_at": now(),
        "bytes": str(len(content)),
        "content": content,
    }
