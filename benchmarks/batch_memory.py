"""The edge's memory for one batch file of the largest size: the peak RSS (VmHWM) of `python -m services.edge`
after it starts, after one upload of EDGE_BATCH_MAX_FILE_BYTES (50,000 lines), after a batch's creation on it and
after the batch's start (its run has read its input file and turned in_progress), for this tree and for an earlier
commit (exported with `git archive` to a temporary directory), side by side in one run.

No router answers the edge: the run reads its lines, offers them to the router, finds it out of reach and stops
(resumed later), which is all of a batch's start this measures.

    python -m benchmarks.batch_memory [--before main] [--redis-url redis://127.0.0.1:6379/15]

Without --redis-url the batch store is in the edge's process (as `make run`), so the stored file is in the figures;
with it, as deployed, only what the edge holds while it serves."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import httpx
import redis

from services.batches.store import ACTIVE, PREFIX
from tests.integration.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
MAX_FILE_BYTES = 100 * 1024 * 1024  # EDGE_BATCH_MAX_FILE_BYTES's default
LINES = 50_000
PHASES = ("started", "upload", "batch created", "batch started")


def batch_file() -> bytes:
    """LINES requests, just under MAX_FILE_BYTES."""
    template = {
        "custom_id": "",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "cheap-model", "max_tokens": 16, "messages": [{"role": "user", "content": ""}]},
    }
    per_line = MAX_FILE_BYTES // LINES - 1 - len(json.dumps(template)) - 16
    lines = []
    for i in range(LINES):
        template["custom_id"] = f"request-{i:06d}"
        text = (f"line {i}: " + "lorem ipsum dolor sit amet " * (per_line // 27 + 1))[:per_line]
        template["body"]["messages"][0]["content"] = text  # type: ignore[index]
        lines.append(json.dumps(template))
    content = ("\n".join(lines) + "\n").encode()
    assert len(content) <= MAX_FILE_BYTES, len(content)
    return content


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM): now and the peak, in MB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


@contextmanager
def code_of(rev: str) -> Iterator[Path]:
    """The tree of commit `rev`, exported to a temporary directory."""
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


@contextmanager
def edge(tree: Path, redis_url: str | None) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "EDGE_PORT": str(port),
        "EDGE_METRICS_PORT": "0",
        "EDGE_ROUTER_ADDR": f"127.0.0.1:{free_port()}",  # nothing listens there
        "EDGE_ALLOW_ANONYMOUS": "true",
        "EDGE_ACCESS_LOG": "off",
        "EDGE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(tree),
    }
    env.pop("EDGE_BATCH_REDIS_URL", None)
    if redis_url:
        env["EDGE_BATCH_REDIS_URL"] = redis_url
    proc = subprocess.Popen([sys.executable, "-m", "services.edge"], cwd=tree, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the edge did not start") from None
                time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(tree: Path, content: bytes, redis_url: str | None) -> list[tuple[float, float]]:
    """(RSS, peak RSS) in MB after each of PHASES."""
    with edge(tree, redis_url) as (base, pid), httpx.Client(base_url=base, timeout=300) as http:
        time.sleep(1)
        figures = [memory_mb(pid)]
        reply = http.post("/v1/files", files={"file": ("big.jsonl", content)}, data={"purpose": "batch"})
        reply.raise_for_status()
        figures.append(memory_mb(pid))
        body = {"input_file_id": reply.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batch = http.post("/v1/batches", json=body)
        batch.raise_for_status()
        figures.append(memory_mb(pid))
        deadline = time.monotonic() + 120
        while http.get(f"/v1/batches/{batch.json()['id']}").json()["status"] == "validating":
            if time.monotonic() > deadline:
                raise SystemExit("the batch did not start")
            time.sleep(0.2)
        time.sleep(2)  # the run offers its lines to the router, which is not there, and stops
        figures.append(memory_mb(pid))
    if redis_url:  # not left for another edge on this Redis to resume
        forget(redis_url, batch.json()["id"], body["input_file_id"])
    return figures


def forget(redis_url: str, batch_id: str, file_id: str) -> None:
    db = redis.Redis.from_url(redis_url)
    try:
        db.srem(ACTIVE, batch_id)
        db.delete(*db.keys(f"{PREFIX}*{batch_id}*"), *db.keys(f"{PREFIX}*{file_id}*"))
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--redis-url", default=None, help="the batch store (default: in the edge's process)")
    args = parser.parse_args()
    content = batch_file()
    print(f"file: {len(content):,} bytes, {LINES:,} lines; store: {args.redis_url or 'in process'}")
    with code_of(args.before) as old:
        before = measure(old, content, args.redis_url)
    after = measure(REPO, content, args.redis_url)
    print(f"| after | {args.before}: RSS / peak (MB) | this tree: RSS / peak (MB) | peak, this / {args.before} |")
    print("|---|---|---|---|")
    for phase, (rss_b, peak_b), (rss_a, peak_a) in zip(PHASES, before, after, strict=True):
        print(f"| {phase} | {rss_b:.0f} / {peak_b:.0f} | {rss_a:.0f} / {peak_a:.0f} | {peak_a / peak_b:.2f} |")
    grown_b, grown_a = before[-1][1] - before[0][0], after[-1][1] - after[0][0]
    print(f"peak over the started RSS: {grown_b:.0f} -> {grown_a:.0f} MB ({grown_a / grown_b:.2f}x)")


if __name__ == "__main__":
    main()
