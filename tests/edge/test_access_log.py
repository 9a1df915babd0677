"""The edge's access log: one JSON line per request, written by its own thread; a stalled destination drops
(and counts) lines instead of holding requests or growing memory, and a failing one loses (and counts) its lines
without stopping the writer."""

from __future__ import annotations

import io
import json
import threading
import time

import httpx
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.edge import access_log
from services.edge.access_log import AccessLog
from services.edge.app import Observe


async def reply(request: Request) -> JSONResponse:
    status = int(request.query_params.get("status", "200"))
    return JSONResponse({}, status_code=status, headers={"x-request-id": "req-1", "x-router-model": "cheap-model"})


async def test_one_line_per_request_with_status_and_request_id() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    app = Starlette(routes=[Route("/v1/chat/completions", reply, methods=["POST"])])
    app.add_middleware(Observe, access_log=log)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as http:
        await http.post("/v1/chat/completions")
        await http.post("/v1/chat/completions?status=429")
        await http.get("/nowhere/" + "x" * 1000)
    log.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["method"], e["status"]) for e in lines] == [("POST", 200), ("POST", 429), ("GET", 404)]
    assert lines[0]["path"] == "/v1/chat/completions" and lines[0]["request_id"] == "req-1"
    assert lines[0]["model"] == "cheap-model" and lines[0]["duration_ms"] >= 0
    assert "request_id" not in lines[2] and len(lines[2]["path"]) == 256  # a caller's path is cut


class Stalled(io.StringIO):
    """A destination that blocks until released, like a full pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait()
        return super().write(text)


def test_a_stalled_destination_drops_lines_and_never_blocks(monkeypatch) -> None:
    monkeypatch.setattr(access_log, "QUEUE_LINES", 5)
    out = Stalled()
    log = AccessLog(out)
    dropped = REGISTRY.get_sample_value("llmrouter_edge_access_log_dropped_total") or 0.0
    for i in range(20):  # returns at once though nothing can be written
        log.record((0.0, "POST", f"/{i}", 200, 0.001, "", ""))
    after = REGISTRY.get_sample_value("llmrouter_edge_access_log_dropped_total") or 0.0
    assert after - dropped >= 20 - 5 - 1  # the queue's 5, and the one the writer holds
    out.release.set()
    log.close()
    assert 5 <= len(out.getvalue().splitlines()) <= 6


class Failing(io.StringIO):
    """A destination whose writes fail until it is mended, like a full disk."""

    failing = True

    def write(self, text: str) -> int:
        if self.failing:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_a_failing_destination_loses_its_lines_counted_and_the_writer_goes_on() -> None:
    out = Failing()
    log = AccessLog(out)
    dropped = REGISTRY.get_sample_value("llmrouter_edge_access_log_dropped_total") or 0.0
    for i in range(3):
        log.record((0.0, "POST", f"/lost-{i}", 200, 0.001, "", ""))
    deadline = time.monotonic() + 5
    while (REGISTRY.get_sample_value("llmrouter_edge_access_log_dropped_total") or 0.0) - dropped < 3:
        assert time.monotonic() < deadline, "the failed lines were never counted"
        time.sleep(0.01)
    out.failing = False
    log.record((0.0, "GET", "/kept", 200, 0.001, "", ""))
    log.close()
    assert [json.loads(line)["path"] for line in out.getvalue().splitlines()] == ["/kept"]


def test_off_opens_nothing(tmp_path) -> None:
    assert AccessLog.open("off") is None
    log = AccessLog.open(str(tmp_path / "access.log"))
    assert log is not None
    log.record((0.0, "GET", "/healthz", 200, 0.0, "", ""))
    log.close()
    assert json.loads((tmp_path / "access.log").read_text())["path"] == "/healthz"
