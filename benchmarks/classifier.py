"""Benchmark of the classifier through the real gRPC service (a separate process, as deployed): p50/p99 per
prompt at batch 1 (one call at a time for --seconds) and prompts/s under concurrent load, for short (~15 tokens)
and long (~500 tokens, all of them read by the static embedding) prompts; onnxruntime alone and Score in process
beside it show what the transport adds (`--floor`: and a server answering a constant, what gRPC alone costs);
server RSS, with the verifier loaded beside the quality model when its artefacts are there (`--no-verifier`:
without).

    python -m benchmarks.classifier [--seconds 5] [--concurrency 64] [--threads 1] [--inline-chars 256]
        [--model-dir DIR] [--floor]"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import grpc
import numpy as np
from tokenizers import Tokenizer

from llmrouter.certs import Authority
from llmrouter.channels import open_channel
from llmrouter.settings import ServiceSettings
from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc
from services.classifier.batcher import MicroBatcher
from services.classifier.model import QualityModel
from services.classifier.service import ClassifierService
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.verification import Verification

REPO = Path(__file__).resolve().parents[1]


def prompts(tokenizer: Tokenizer, tokens: int, n: int, seed: int = 0) -> list[str]:
    """Distinct prompts of about `tokens` tokens (before truncation), made of random lowercase words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [f"q{i}"]
        while (missing := tokens - len(tokenizer.encode(" ".join(words), add_special_tokens=False).ids)) > 0:
            words.extend(
                "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8))) for _ in range(max(1, missing // 4))
            )
        out.append(" ".join(words))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _match(pattern: str, text: str, flags: int = 0) -> str:
    """The first group of a pattern that must be in the text (a /proc or /metrics line)."""
    found = re.search(pattern, text, flags)
    if found is None:
        raise RuntimeError(f"{pattern!r} not found")
    return found.group(1)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: int(_match(rf"{key}:\s+(\d+) kB", status)) / 1024  # noqa: E731
    return get("VmRSS"), get("VmHWM")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_stats(metrics_port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    get = lambda name: float(_match(rf"^{name} (\S+)$", text, re.M))  # noqa: E731
    return get("llmrouter_classifier_batch_size_count"), get("llmrouter_classifier_batch_size_sum")


def pct(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50) * 1e3), float(np.percentile(samples, 99) * 1e3)


async def sequential(stub: classifier_pb2_grpc.ClassifierStub, texts: list[str], seconds: float = 0) -> list[float]:
    """One call at a time, every text once and then round again until `seconds` have passed: a p99 needs
    thousands of calls (of 300, it is the third slowest)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    while len(latencies) < len(texts) or time.perf_counter() < stop:
        start = time.perf_counter()
        await stub.Score(classifier_pb2.ScoreRequest(prompts=[texts[len(latencies) % len(texts)]]))
        latencies.append(time.perf_counter() - start)
    return latencies


async def batch_one(stub: classifier_pb2_grpc.ClassifierStub, pid: int, texts: list[str], seconds: float) -> str:
    """'p50 / p99, server CPU per call, calls' of one call at a time, after a few to warm the channel."""
    await sequential(stub, texts[:20])
    cpu0 = cpu_seconds(pid)
    latencies = await sequential(stub, texts, seconds)
    cpu = (cpu_seconds(pid) - cpu0) * 1e3 / len(latencies)
    p50, p99 = pct(latencies)
    return f"{p50:.2f} / {p99:.2f}, {cpu:.2f}, {len(latencies)}"


async def load(stub: classifier_pb2_grpc.ClassifierStub, texts: list[str], concurrency: int, seconds: float) -> int:
    done = 0
    stop = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            await stub.Score(classifier_pb2.ScoreRequest(prompts=[texts[i % len(texts)]]))
            done += 1
            i += concurrency

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return done


@contextmanager
def serving(module: str, args: argparse.Namespace, server_dir: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`python -m module` with mTLS and the given CLASSIFIER_ settings, once it has said READY."""
    env = {
        **os.environ,
        "CLASSIFIER_TLS_DIR": str(server_dir),
        "CLASSIFIER_LOG_LEVEL": "WARNING",
        "CLASSIFIER_MODEL_DIR": str(args.model_dir.resolve()),
        **env,
    }
    server = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=env, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        if not line.startswith("READY"):
            raise SystemExit(f"{module} did not start: {line!r}")
        yield server
    finally:
        server.terminate()
        server.wait(timeout=30)


async def bench_service(args: argparse.Namespace, sets: dict[str, list[str]]) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="llmrouter-bench-tls-") as certs:
        # Measured as deployed: mTLS, the benchmark calling as the router.
        authority = Authority.create()
        server_dir, client_dir = (authority.write(Path(certs) / name, name) for name in ("classifier", "router"))
        caller = ServiceSettings(tls_dir=client_dir)
        rows = await _bench_service(args, sets, server_dir, caller)
        if args.floor:
            rows += await _bench_floor(args, sets["short"], server_dir, caller)
        return rows


async def _bench_floor(
    args: argparse.Namespace, texts: list[str], server_dir: Path, caller: ServiceSettings
) -> list[tuple[str, str]]:
    """The same calls to a server answering a constant (benchmarks/classifier_floor.py): gRPC's own share."""
    port = free_port()
    env = {"CLASSIFIER_PORT": str(port), "CLASSIFIER_METRICS_PORT": "0"}
    with serving("benchmarks.classifier_floor", args, server_dir, env) as server:
        async with open_channel(f"127.0.0.1:{port}", caller) as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            figures = await batch_one(stub, server.pid, texts, args.seconds)
    return [("gRPC floor (constant answer) short, batch 1: p50 / p99 (ms), server CPU (ms), calls", figures)]


async def _bench_service(
    args: argparse.Namespace, sets: dict[str, list[str]], server_dir: Path, caller: ServiceSettings
) -> list[tuple[str, str]]:
    port, metrics_port = free_port(), free_port()
    env = {
        "CLASSIFIER_PORT": str(port),
        "CLASSIFIER_METRICS_PORT": str(metrics_port),
        "CLASSIFIER_THREADS": str(args.threads),
        "CLASSIFIER_MAX_BATCH": str(args.max_batch),
        "CLASSIFIER_MAX_WAIT_MS": str(args.max_wait_ms),
        "CLASSIFIER_SMALL_BATCH": str(args.small_batch),
        "CLASSIFIER_INLINE_CHARS": str(args.inline_chars),
    }
    if args.no_verifier:
        env["CLASSIFIER_VERIFIER_DIR"] = str(Path(server_dir) / "no-verifier")
    rows = []
    with serving("services.classifier", args, server_dir, env) as server:
        rows.append(("RSS after start (MB)", f"{rss_mb(server.pid)[0]:.0f}"))
        async with open_channel(f"127.0.0.1:{port}", caller) as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            for kind, texts in sets.items():
                figures = await batch_one(stub, server.pid, texts, args.seconds)
                rows.append((f"gRPC {kind}, batch 1: p50 / p99 (ms), server CPU (ms), calls", figures))
                runs0, scored0 = batch_stats(metrics_port)
                start = time.perf_counter()
                done = await load(stub, texts, args.concurrency, args.seconds)
                rate = done / (time.perf_counter() - start)
                runs, scored = batch_stats(metrics_port)
                mean_batch = (scored - scored0) / max(runs - runs0, 1)
                rows.append(
                    (
                        f"gRPC {kind}, {args.concurrency} concurrent: prompts/s (mean batch)",
                        f"{rate:.0f} ({mean_batch:.1f})",
                    )
                )
        current, peak = rss_mb(server.pid)
        rows.append(("RSS after load: current / peak (MB)", f"{current:.0f} / {peak:.0f}"))
    return rows


async def bench_in_process(args: argparse.Namespace, sets: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Score awaited in this process, one call at a time (servicer, batcher, model; no gRPC): the service's own CPU
    per call, the inference thread's included when runs go to it."""
    model = QualityModel(args.model_dir, threads=args.threads, small_batch=args.small_batch)
    batcher = MicroBatcher(model.predict, args.max_batch, args.max_wait_ms, args.inline_chars)
    batcher.start()
    service = ClassifierService(model, batcher, max_prompts=1, verification=Verification(None, 1))
    no_context = cast(grpc.aio.ServicerContext, None)  # Score reads none
    figures = []
    try:
        for texts in sets.values():
            requests = [classifier_pb2.ScoreRequest(prompts=[text]) for text in texts]
            for request in requests[:20]:
                await service.Score(request, no_context)
            calls, cpu0, stop = 0, time.process_time(), time.perf_counter() + args.seconds / 2
            while time.perf_counter() < stop:
                await service.Score(requests[calls % len(requests)], no_context)
                calls += 1
            figures.append(f"{(time.process_time() - cpu0) / calls * 1e6:.0f}")
    finally:
        await batcher.close()
    return [("Score in process (no gRPC), short / long: CPU per call (us)", " / ".join(figures))]


def bench_direct(args: argparse.Namespace, sets: dict[str, list[str]]) -> list[tuple[str, str]]:
    model = QualityModel(args.model_dir, threads=args.threads, small_batch=args.small_batch)
    rows = []
    for kind, texts in sets.items():
        model.predict(texts[:10])
        latencies = []
        for text in texts:
            start = time.perf_counter()
            model.predict([text])
            latencies.append(time.perf_counter() - start)
        p50, p99 = pct(latencies)
        rows.append((f"onnxruntime {kind}, batch 1: p50 / p99 (ms)", f"{p50:.2f} / {p99:.2f}"))
        batch, done = texts[: args.max_batch], 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds / 2:
            model.predict(batch)
            done += len(batch)
        rate = done / (time.perf_counter() - start)
        rows.append((f"onnxruntime {kind}, batch {len(batch)}: prompts/s", f"{rate:.0f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--inline-chars", type=int, default=256, help="runs up to this many characters: event loop")
    parser.add_argument("--small-batch", type=int, default=4, help="runs up to this size use one thread")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--no-verifier", action="store_true", help="serve without the verifier (its RSS apart)")
    parser.add_argument("--floor", action="store_true", help="also time a server answering a constant (gRPC alone)")
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    sets = {"short": prompts(tokenizer, 15, 300), "long": prompts(tokenizer, 500, 300)}
    sizes = {k: np.mean([len(tokenizer.encode(t).ids) for t in v]) for k, v in sets.items()}
    rows = [("prompt tokens, short / long (before truncation)", f"{sizes['short']:.0f} / {sizes['long']:.0f}")]
    rows += (
        bench_direct(args, sets) + asyncio.run(bench_in_process(args, sets)) + asyncio.run(bench_service(args, sets))
    )
    width = max(len(k) for k, _ in rows)
    verifier = "without the verifier" if args.no_verifier else "verifier loaded when built"
    print(f"classifier benchmark ({os.cpu_count()} CPUs, {args.threads} onnxruntime threads, {verifier})")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
