"""How long one caller's body of many tiny items stalls every other request of an edge process, and the memory its
parse takes: 200,000 messages (chat) or input items (/v1/responses), or 2,700,000 zeros, 2,000,000 empty lists or
2,000,000 empty objects, or 1,600,000 fractions, short strings or `true`s as metadata, in a body under
EDGE_MAX_BODY_BYTES (8 MiB), posted to `python -m services.edge` while a second client asks /healthz every 5 ms. A
body of over 100,000 objects and arrays or 200,000 items in them (llmrouter/json_bounds.py) is a 413 before it is
parsed.
Reported per body: the longest /healthz wait meanwhile (the event loop's stall) and the body's own answer time, median
of --runs, and how much the edge's peak RSS (VmHWM) grew over them (an edge of its own for each body), for --before
(default main, exported with `git archive`) and this tree, side by side in one run. No router answers: a body that
passes the edge's checks is answered 503 once it is built for the router, which is all the edge's own work.

    python -m benchmarks.item_stall [--before main] [--runs 3]"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx

from benchmarks.batch_memory import REPO, code_of, edge, memory_mb

ITEMS = 200_000
MAX_BODY_BYTES = 8 * 1024 * 1024  # EDGE_MAX_BODY_BYTES's default
TINY = {"role": "user", "content": "x"}
ZEROS = 2_700_000  # 8.1 MB of them: a list where the schema wants an object
EMPTY_LISTS = 2_000_000  # 8.0 MB of them, as json.dumps spaces them: millions of objects the collector counts
EMPTY_OBJECTS = 2_000_000  # 8.0 MB of them, as json.dumps spaces them: the objects OpenAI bodies are made of
SCALARS = 1_600_000  # 8.0 MB of 0.5 or "a" as json.dumps spaces them (8.0 MB of true: 1,350,000)
BODIES = {
    "chat, 200k messages": ("/v1/chat/completions", {"model": "auto", "messages": [TINY] * ITEMS}),
    "responses, 200k input items": ("/v1/responses", {"model": "auto", "input": [TINY] * ITEMS}),
    "chat, metadata of 2.7M zeros": ("/v1/chat/completions", {"messages": [TINY], "metadata": [0] * ZEROS}),
    "responses, metadata of 2.7M zeros": ("/v1/responses", {"input": [TINY], "metadata": [0] * ZEROS}),
    "chat, metadata of 2M empty lists": ("/v1/chat/completions", {"messages": [TINY], "metadata": [[]] * EMPTY_LISTS}),
    "chat, metadata of 2M empty objects": (
        "/v1/chat/completions",
        {"messages": [TINY], "metadata": [{}] * EMPTY_OBJECTS},
    ),
    "chat, metadata of 1.6M fractions": ("/v1/chat/completions", {"messages": [TINY], "metadata": [0.5] * SCALARS}),
    "chat, metadata of 1.6M short strings": ("/v1/chat/completions", {"messages": [TINY], "metadata": ["a"] * SCALARS}),
    "chat, metadata of 1.35M trues": ("/v1/chat/completions", {"messages": [TINY], "metadata": [True] * 1_350_000}),
}


def stall(base: str, path: str, body: bytes) -> tuple[float, float, int]:
    """(longest /healthz wait, the body's answer time) in seconds, and the body's status."""
    waits: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            while not done.is_set():
                started = time.perf_counter()
                http.get("/healthz")
                waits.append(time.perf_counter() - started)
                time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.2)
    with httpx.Client(base_url=base, timeout=120) as http:
        started = time.perf_counter()
        reply = http.post(path, content=body, headers={"content-type": "application/json"})
        took = time.perf_counter() - started
    time.sleep(0.1)
    done.set()
    prober.join()
    return max(waits), took, reply.status_code


def measure(tree: Path, bodies: dict[str, tuple[str, bytes]], runs: int) -> dict[str, tuple[float, float, int, float]]:
    """(stall, answer time, status, peak RSS added in MB) per body."""
    figures = {}
    for name, (path, body) in bodies.items():
        with edge(tree, None) as (base, pid):
            started_mb = memory_mb(pid)[1]
            results = [stall(base, path, body) for _ in range(runs)]
            added_mb = memory_mb(pid)[1] - started_mb
        stalls, answers = zip(*((s, a) for s, a, _ in results), strict=True)
        figures[name] = statistics.median(stalls), statistics.median(answers), results[-1][2], added_mb
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bodies = {name: (path, json.dumps(body).encode()) for name, (path, body) in BODIES.items()}
    for name, (_, body) in bodies.items():
        assert len(body) <= MAX_BODY_BYTES, (name, len(body))
        print(f"{name}: {len(body):,} bytes")
    with code_of(args.before) as old:
        before = measure(old, bodies, args.runs)
    after = measure(REPO, bodies, args.runs)
    print(
        f"| body | {args.before}: stall / answer (s), status, peak RSS added (MB) "
        "| this tree: stall / answer (s), status, peak RSS added (MB) | stall ratio |"
    )
    print("|---|---|---|---|")
    for name in bodies:
        (sb, ab, cb, mb), (sa, aa, ca, ma) = before[name], after[name]
        print(
            f"| {name} | {sb:.3f} / {ab:.3f}, {cb}, {mb:.0f} | {sa:.3f} / {aa:.3f}, {ca}, {ma:.0f} | {sb / sa:.0f}x |"
        )


if __name__ == "__main__":
    main()
