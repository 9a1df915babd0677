"""`python -m services.edge` as deployed bounds a request's line and headers in size and time, its body's stalls
and its caller's in reading the answer (httptools alone would buffer a head of any size, hundreds of megabytes per
connection, and uvicorn would
wait for a head or a body forever: before the caller is even authenticated), and refuses malformed HTTP with
OpenAI's error body, as any other bad input."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.edge.protocol import MAX_HEAD_BYTES, MAX_PIPELINED
from tests.conftest import ROOT
from tests.integration.test_batch_transfers import batch_file

pytestmark = pytest.mark.heavy  # make test-heavy: an edge process, its read and write timeouts waited out in real time

READ_TIMEOUT_S = 2
BODY_GRACE_S = 5  # past the trickle the test of the read timeout sends
MIN_BODY_RATE = 16
POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n"
SLOW_ANSWER_S = 2 * READ_TIMEOUT_S


@contextlib.contextmanager
def served(router_addr: str, log: Path | None = None, prelude: str = "", **settings: str) -> Iterator[int]:
    """`python -m services.edge` on loopback with the bounds here (and `settings`), its router at router_addr,
    logging to `log`, `prelude` run in its process before it starts: its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EDGE_PORT": str(port), "EDGE_METRICS_PORT": "0", "EDGE_ROUTER_ADDR": router_addr}
    env["EDGE_READ_TIMEOUT_S"] = env["EDGE_WRITE_TIMEOUT_S"] = str(READ_TIMEOUT_S)
    env["EDGE_BODY_GRACE_S"], env["EDGE_MIN_BODY_RATE"] = str(BODY_GRACE_S), str(MIN_BODY_RATE)
    env.update(settings)
    output = log.open("wb") if log is not None else subprocess.DEVNULL
    command = [sys.executable, "-m", "services.edge"]
    if prelude:
        command = [
            sys.executable,
            "-c",
            f"{prelude}\nimport runpy\nrunpy.run_module('services.edge', run_name='__main__')",
        ]
    edge = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the edge did not start"
                time.sleep(0.1)
        yield port
    finally:
        edge.terminate()
        edge.wait(timeout=30)
        if log is not None:
            output.close()  # type: ignore[union-attr]


def nowhere() -> str:
    """An address no router answers at."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1] + 1}"


@pytest.fixture(scope="module")
def edge_port() -> Iterator[int]:
    """The edge, its router nowhere: a chat completion read whole is a 503 at once."""
    with served(nowhere()) as port:
        yield port


def errors_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if '"level": "ERROR"' in line]


@pytest.fixture(scope="module")
def logged_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An edge of its own, its router nowhere, logging to a file: its port and the file. For the tests that nothing
    they send logs an error: each reads the lines logged while it ran (log_since), and the whole log, read once the
    edge has stopped (every line written), must hold none either."""
    log = tmp_path_factory.mktemp("logged_edge") / "edge.log"
    with served(nowhere(), log=log) as port:
        yield port, log
    assert errors_in(log.read_text()) == []


def log_since(log: Path, offset: int) -> str:
    """What the edge logged past `offset` (the log's size when a test began)."""
    return log.read_bytes()[offset:].decode()


@pytest.fixture(scope="module")
def slow_edge_port() -> Iterator[int]:
    """The edge, its router a socket that never answers: a chat completion read whole is a 504 after
    SLOW_ANSWER_S."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        with served(f"127.0.0.1:{silent.getsockname()[1]}", EDGE_REQUEST_TIMEOUT_S=str(SLOW_ANSWER_S)) as port:
            yield port


def answer(port: int, sent: bytes, pause_s: float = 0) -> bytes:
    """What the edge answers to `sent` (its first byte, then after pause_s the rest), up to its closing the
    connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(sent[:1])
        time.sleep(pause_s)
        s.sendall(sent[1:])
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except TimeoutError:
            pytest.fail(f"no answer after {len(sent)} bytes: the edge still waits for the rest")
        return received


@pytest.mark.parametrize("head", ["one long header", "many headers", "a long path", "a megabyte past the bound"])
def test_a_head_past_the_bound_is_a_431_with_an_openai_body(edge_port: int, head: str) -> None:
    size = MAX_HEAD_BYTES + 16 * 1024
    sent = {
        "one long header": b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * size,
        "many headers": b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n" + b"X-H: v\r\n" * (size // 8),
        "a long path": b"GET /v1/models/" + b"m" * size,
        # Much unread at the refusal: closed at once, the socket's reset could destroy the 431 before it was read.
        "a megabyte past the bound": b"GET /v1/models HTTP/1.1\r\nX-Big: " + b"b" * (size + 2**20),
    }[head]
    status, _, body = answer(edge_port, sent).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 "), status
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"


def test_a_head_past_the_bound_whose_last_read_passes_it_is_a_431(edge_port: int) -> None:
    """The head's reads were counted only while it was unfinished: 60 KiB, then 60 KiB more with its end in one read,
    was served."""
    first = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-A: " + b"a" * (MAX_HEAD_BYTES - 4096) + b"\r\n"
    last = b"X-B: " + b"b" * (MAX_HEAD_BYTES - 4096) + b"\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        s.sendall(first)
        time.sleep(0.3)  # read apart: the head unfinished after the first read, finished by the second
        s.sendall(last)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                received += chunk
    status, _, body = received.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 "), status
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"


@pytest.mark.parametrize("sent", ["padded last read", "many empty headers in one read"])
def test_a_head_past_the_bound_the_parser_hands_little_of_is_a_431(edge_port: int, sent: str) -> None:
    """What the parser hands over leaves out a value's leading blanks and each header's ': ' and CRLF: a head whose
    last read (or only one) is mostly those was served past the bound, 100 KB with 60 KB of blanks before a value
    after 40 KB read apart, or 80 KB of 20,000 empty headers sent at once."""
    if sent == "padded last read":
        first = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-A: " + b"a" * 40_000 + b"\r\n"
        last = b"X-B:" + b" " * 60_000 + b"b\r\nConnection: close\r\n\r\n"
    else:
        first = b""
        last = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n" + b"a:\r\n" * 20_000 + b"Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        if first:
            s.sendall(first)
            time.sleep(0.3)  # read apart: the head unfinished after the first read, finished by the second
        s.sendall(last)
        assert responses(s, 10) == [b"HTTP/1.1 431 Request Header Fields Too Large"]


@pytest.mark.parametrize("before", ["a request", "a body's end"])
def test_a_head_of_many_empty_headers_behind_another_request_in_its_read_is_a_431(edge_port: int, before: str) -> None:
    """head_past_bound counts a read's bytes up to its first head's end only: 80 KB of 20,000 empty headers after a
    request (or a body's end) in the same read was served, the parser handing over 1 byte of each header's 4."""
    many = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n" + b"a:\r\n" * 20_000 + b"Connection: close\r\n\r\n"
    body = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        if before == "a request":
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n" + many)
            first = b"HTTP/1.1 200 OK"
        else:
            s.sendall(POST + b"Content-Length: %d\r\n\r\n" % len(body) + body[:1])
            time.sleep(0.3)  # read apart: the next read ends the body, then holds the whole next head
            s.sendall(body[1:] + many)
            first = b"HTTP/1.1 503 Service Unavailable"  # read whole, then the router is not there
        assert responses(s, 10) == [first, b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_a_body_past_the_bound_arriving_with_its_head_is_served(edge_port: int) -> None:
    prompt = "x" * (4 * MAX_HEAD_BYTES)
    body = json.dumps({"messages": [{"role": "user", "content": prompt}]}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    status, _, _ = answer(edge_port, head % len(body) + body).partition(b"\r\n")
    assert status == b"HTTP/1.1 503 Service Unavailable"  # read whole, then the router is not there
    with httpx.Client(base_url=f"http://127.0.0.1:{edge_port}") as http:  # a head under the bound, kept alive
        for _ in range(3):
            assert http.get("/healthz", headers={"x-big": "a" * (MAX_HEAD_BYTES // 2)}).status_code == 200
    with httpx.Client(base_url=f"http://127.0.0.1:{edge_port}") as http:  # heads under the bound, one connection
        for _ in range(3):
            assert http.get("/healthz", headers={"x-big": "a" * (MAX_HEAD_BYTES // 2)}).status_code == 200


@pytest.mark.parametrize(
    "sent",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        # Framing a proxy in front may read otherwise (request smuggling): refused, never guessed.
        POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        POST + b"Content-Length: 2, 2\r\n\r\n{}",
        POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-A: a\r\n folded\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer k\x00ey\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\nA header: with a space\r\n\r\n",
        b"GET /v1/models/\xff HTTP/1.1\r\nHost: edge\r\n\r\n",
    ],
    ids=[
        "bad chunk size",
        "two lengths",
        "one length twice",
        "a length list",
        "length then chunked",
        "chunked then length",
        "chunked twice",
        "chunked not last",
        "space before colon",
        "folded header",
        "NUL in a header",
        "bad header name",
        "raw byte in path",
    ],
)
def test_malformed_http_is_a_400_with_an_openai_body(edge_port: int, sent: bytes) -> None:
    status, _, body = answer(edge_port, sent).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 "), status
    assert json.loads(body)["error"]["code"] == "invalid_http_request"


def test_a_head_not_whole_in_time_is_a_408_and_a_silent_connection_is_closed(edge_port: int) -> None:
    trickled = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: "
    start = time.monotonic()
    status, _, body = answer(edge_port, trickled, pause_s=READ_TIMEOUT_S / 2).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), status
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert time.monotonic() - start < READ_TIMEOUT_S + 2  # counted from the request's first byte
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as silent:
        assert silent.recv(1024) == b""


def test_a_body_that_stalls_is_a_408_and_one_that_trickles_is_read(edge_port: int) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 100\r\n\r\n"
    status, _, body = answer(edge_port, head + b'{"messages": [').partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), status
    assert json.loads(body)["error"]["code"] == "request_timeout"
    trickled = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        s.sendall(head % len(trickled))
        for byte in trickled[:4]:  # each within the timeout, together past it
            time.sleep(READ_TIMEOUT_S / 2)
            s.sendall(bytes([byte]))
        s.sendall(trickled[4:])
        assert s.recv(1024).startswith(b"HTTP/1.1 503 ")  # read whole, then the router is not there


def test_a_body_trickled_under_the_least_rate_is_a_408(edge_port: int) -> None:
    """A byte every half read timeout never stalls: refused once its average is under the rate, after the grace."""
    trickled = json.dumps({"messages": [{"role": "user", "content": "hi " * 100}]}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        s.sendall(head % len(trickled))
        start = time.monotonic()
        for byte in trickled[: 4 * BODY_GRACE_S]:  # a byte a second, for four times the grace
            s.sendall(bytes([byte]))
            if select.select([s], [], [], READ_TIMEOUT_S / 2)[0]:  # answered
                break
        else:
            pytest.fail(f"still read {4 * BODY_GRACE_S} bytes, a second apart")
        received = s.recv(65536)
    assert BODY_GRACE_S - 1 < time.monotonic() - start < BODY_GRACE_S + READ_TIMEOUT_S
    status, _, body = received.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), status
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_two_authorization_headers_are_a_400_on_an_edge_without_keys_too(edge_port: int) -> None:
    """No key chooses anything here, but a proxy in front may still act on one of the two: never served."""
    sent = b"GET /v1/models HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n"
    status, _, body = answer(edge_port, sent + b"Connection: close\r\n\r\n").partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 "), status
    assert json.loads(body)["error"]["code"] == "ambiguous_credentials"


def test_an_answer_its_caller_stops_reading_is_reset(edge_port: int) -> None:
    """On the deployed event loop (uvloop): a download its caller stops reading is dropped, not held for ever."""
    base = f"http://127.0.0.1:{edge_port}/v1"
    uploaded = httpx.post(f"{base}/files", files={"file": ("b.jsonl", batch_file(12))}, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small receive window
        s.settimeout(10)
        s.connect(("127.0.0.1", edge_port))
        s.sendall(f"GET /v1/files/{uploaded.json()['id']}/content HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
        received = len(s.recv(1024))
        time.sleep(2 * READ_TIMEOUT_S + 1)  # checked every EDGE_WRITE_TIMEOUT_S: dropped within twice that
        with pytest.raises(ConnectionResetError):
            while chunk := s.recv(1024 * 1024):
                received += len(chunk)
    assert received < int(uploaded.json()["bytes"])


def responses(s: socket.socket, within_s: float, whole: int | None = None) -> list[bytes]:
    """The status lines of what the edge sends on `s` within within_s, or up to its closing the connection, or (with
    `whole`) up to that many answers received whole: what follows is left for the next read to find."""
    received, deadline = b"", time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
        if whole is not None and len(found := answers(received)) >= whole and found[-1][1]:
            break
    return [status for status, _ in answers(received)]


def answers(received: bytes) -> list[tuple[bytes, bool]]:
    """Each answer in `received` (its head, then a body of its content-length): its status line, and whether it
    came whole."""
    found = []
    while received:
        head, ended, received = received.partition(b"\r\n\r\n")
        status, *fields = head.split(b"\r\n")
        length = [int(f.split(b":")[1]) for f in fields if f.lower().startswith(b"content-length:")]
        found.append((status, bool(ended) and len(received) >= (length[0] if length else 0)))
        received = received[length[0] if length else len(received) :]
    return found


def test_a_body_answered_before_it_is_read_gets_no_second_answer(edge_port: int) -> None:
    """A 404 (a 413 or a 429 alike) sent before the body was read is its request's one answer: what the caller
    sends next, malformed, stalled or trickled, closes the connection, never answered again (the caller would read
    a second answer as that of its next request)."""
    for rest, pause_s in [(b"zz\r\n", 0.0), (b"5\r\n{", 0.0), (b"5\r\n{", 2 * READ_TIMEOUT_S)]:
        with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
            s.sendall(b"POST /nowhere HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n")
            assert responses(s, 1, whole=1) == [b"HTTP/1.1 404 Not Found"]
            s.sendall(rest)
            time.sleep(pause_s)
            assert responses(s, 2 * READ_TIMEOUT_S) == [], rest


def test_a_next_request_on_a_kept_alive_connection_is_timed_as_its_own(edge_port: int) -> None:
    """The head of a request after one answered whole is refused when it stalls (408), not dropped unanswered as
    if the answer before were its."""
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        s.sendall(b"GET /nowhere HTTP/1.1\r\nHost: edge\r\n\r\nGET /healthz HTTP/1.1\r\n")
        assert responses(s, 2 * READ_TIMEOUT_S) == [b"HTTP/1.1 404 Not Found", b"HTTP/1.1 408 Request Timeout"]


@pytest.mark.parametrize(
    "then",
    [
        b"GET /healthz HTTP/1.1\r\n",
        POST + b"Content-Length: 9\r\n\r\n{",
        b"GET /healthz HTTP/1.1\r\nX-Nul: \x00\r\n\r\n",
    ],
    ids=["head stalled", "body stalled", "malformed"],
)
def test_a_pipelined_request_refused_is_answered_after_the_one_before(slow_edge_port: int, then: bytes) -> None:
    """A request pipelined behind one still being answered, its head or body stalled (408) or malformed (400): its
    refusal follows the answer before it, never comes first (where its caller would read it as that answer)."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", slow_edge_port), timeout=10) as s:
        s.sendall(POST + b"Content-Length: %d\r\n\r\n%s%s" % (len(body), body, then))
        statuses = responses(s, SLOW_ANSWER_S + READ_TIMEOUT_S)
    refused = b"HTTP/1.1 400 Bad Request" if b"\x00" in then else b"HTTP/1.1 408 Request Timeout"
    assert statuses == [b"HTTP/1.1 504 Gateway Timeout", refused]


@pytest.mark.parametrize("trailers", ["many trailers", "one long trailer"])
def test_a_chunked_body_s_trailers_past_the_bound_are_a_431(edge_port: int, trailers: str) -> None:
    """Trailers are bounded as a head is: httptools kept a trailer however long, uvicorn all of them (as headers of
    the request), hundreds of megabytes within the body's grace. (Counted from the read after the last chunk's
    head: past the bound by as much as one read, 256 KiB, before.)"""
    size = MAX_HEAD_BYTES + 2**20
    rest = {"many trailers": b"X-T: v\r\n" * (size // 8), "one long trailer": b"X-T: " + b"v" * size}[trailers]
    start = time.monotonic()
    sent = POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n" + rest
    status, _, body = answer(edge_port, sent).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 "), status
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    assert time.monotonic() - start < READ_TIMEOUT_S  # not a stall's 408


def test_a_chunked_body_with_trailers_under_the_bound_is_read(edge_port: int) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    chunked = b"%x\r\n%s\r\n0\r\nX-Checksum: abc\r\n\r\n" % (len(body), body)
    sent = POST + b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    status, _, _ = answer(edge_port, sent).partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 503 "), status  # read whole, then the router is not there


@pytest.mark.parametrize(
    "codings",
    [b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"],
    ids=["in one header", "in two headers"],
)
def test_a_transfer_coding_other_than_chunked_is_a_501_never_read_as_plain(edge_port: int, codings: bytes) -> None:
    """httptools takes codings before a last chunked and un-chunks the body only: it was served as if plain."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    sent = POST + b"Connection: close\r\n" + codings + b"\r\n\r\n" + chunked
    status, _, refusal = answer(edge_port, sent).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 501 "), status
    error = json.loads(refusal)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "unsupported_transfer_encoding")
    assert "'gzip'" in error["message"]


def test_plain_chunked_in_any_case_is_read(edge_port: int) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    sent = POST + b"Connection: close\r\nTransfer-Encoding: Chunked\r\n\r\n" + chunked
    status, _, _ = answer(edge_port, sent).partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 503 "), status  # read whole, then the router is not there


def test_a_pipelined_head_the_edge_stopped_reading_is_not_timed_out(slow_edge_port: int) -> None:
    """Two requests queued behind one being served (its router silent): the edge stops reading, the third's head cut
    where the read ended. Its rest, sent meanwhile, waits unread: not the caller's stall, no 408."""
    with socket.create_connection(("127.0.0.1", slow_edge_port), timeout=10) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: edge\r\n\r\nGET /healthz HTTP/1.1\r\nHost: edge\r\n\r\nGET /hea")
        time.sleep(0.5)
        s.sendall(b"lthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
        statuses = responses(s, 15)
    assert statuses[1:] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"], statuses


def test_a_connection_idle_after_a_body_answered_before_it_ended_is_closed(edge_port: int) -> None:
    """Answered (a 404) before its body came, the request's body then ends: the connection, idle from there, is
    closed as any other kept alive (uvicorn's 5 s); it was held with no timer at all, as long as its caller liked."""
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        s.sendall(b"POST /nowhere HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n\r\n")
        assert responses(s, 1, whole=1) == [b"HTTP/1.1 404 Not Found"]
        s.sendall(b"{}   ")
        start = time.monotonic()
        assert select.select([s], [], [], 5 + READ_TIMEOUT_S)[0], "still open"
        assert s.recv(1024) == b""
        assert time.monotonic() - start > 4


def test_a_head_refused_malformed_past_the_bound_is_refused_once(logged_edge: tuple[int, Path]) -> None:
    """Malformed (400) in a read that also passed the head's bound: no 431 tried after it, which failed (a write
    after the refusal's end) and dropped the connection with an error logged."""
    port, log = logged_edge
    logged = log.stat().st_size
    sent = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Nul: \x00" + b"a" * (MAX_HEAD_BYTES + 16 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(sent[:1])
        time.sleep(0.2)
        c.sendall(sent[1:])
        assert responses(c, READ_TIMEOUT_S + 2) == [b"HTTP/1.1 400 Bad Request"]
    assert errors_in(log_since(log, logged)) == []


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: %d\r\n\r\n%s", b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"],
    ids=["content-length", "chunked"],
)
def test_a_request_offering_an_upgrade_not_made_is_served_as_http_1_1(edge_port: int, framing: bytes) -> None:
    """A request offering to upgrade to h2c, as `curl --http2` and Java's HttpClient (its default version) do over
    http://, a POST with its body too: httptools read none of the body (the app was served an empty one, a 400 "not
    valid JSON" for a valid request), then it was refused whole (400 unsupported_upgrade), every request of those
    clients. A server may ignore Upgrade (RFC 9110, 7.8): the request is served as HTTP/1.1, its body read (here the
    router is nowhere: a valid chat completion is a 503), and the connection serves the next request as ever."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    offer = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
    then = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        sent = POST + offer + framing % (len(body), body) + then
        head_ends = sent.index(b"\r\n\r\n") + 4
        s.sendall(sent[:head_ends])  # the head alone first, as clients often send it: the body comes in a later read
        time.sleep(0.2)
        s.sendall(sent[head_ends:])
        assert responses(s, 10) == [b"HTTP/1.1 503 Service Unavailable", b"HTTP/1.1 200 OK"]
    get = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        s.sendall(get + then)  # kept alive after a bodiless offer: the next request is read and answered
        assert responses(s, 10) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]


@pytest.mark.parametrize(
    "target", [b"api.openai.com:443", b"/v1/chat/completions"], ids=["authority-form", "origin-form"]
)
def test_a_connect_is_answered_not_re_parsed_forever(logged_edge: tuple[int, Path], target: bytes) -> None:
    """httptools stops after a CONNECT's head as after an upgrade offer, whatever its headers: re-parsed as an
    upgrade not made (without_upgrade), it stopped there again, and again, until a RecursionError (~1,000 frames, a
    copy of the head each) dropped the connection unanswered with a traceback of ~270 KB logged, for every CONNECT
    anyone sent. Then the requests pipelined behind one were never answered, the connection held open. A CONNECT is
    refused (405, in OpenAI's body), after the answers of the requests before it, and the connection closed: the
    edge opens no tunnel, and what follows a CONNECT is not reliably framed as requests."""
    port, log = logged_edge
    logged = log.stat().st_size
    before = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n"
    connect = b"CONNECT %s HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n" % target
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(before + connect + before)
        start = time.monotonic()
        assert responses(c, READ_TIMEOUT_S + 5) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 405 Method Not Allowed"]
        assert time.monotonic() - start < READ_TIMEOUT_S  # closed by the edge, not left open
        refused = answer(port, connect)
    head, _, body = refused.partition(b"\r\n\r\n")
    assert b"connection: close" in head.split(b"\r\n")
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    assert errors_in(log_since(log, logged)) == []


def test_a_websocket_handshake_is_a_404_in_openais_body(edge_port: int) -> None:
    """The edge serves no WebSocket (OpenAI's Realtime API is not routed): a handshake got uvicorn's bare 403, no
    body; it is an HTTP request like any other, to a route that does not exist."""
    handshake = (
        b"GET /v1/realtime?model=gpt-4o-realtime HTTP/1.1\r\nHost: edge\r\nConnection: Upgrade, close\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    status, _, body = answer(edge_port, handshake).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 404 "), status
    assert json.loads(body)["error"]["code"] == "not_found"


def test_requests_pipelined_past_the_bound_are_refused_after_those_before_are_answered(edge_port: int) -> None:
    """uvicorn parsed and queued every pipelined request a read brought, reading on after each answer: a caller
    sending megabytes of tiny requests held ~64 MB per connection. The first is served, MAX_PIPELINED more wait,
    the next is refused (429) once they are answered, and the connection is closed."""
    with socket.create_connection(("127.0.0.1", edge_port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n" * (MAX_PIPELINED + 100))
        statuses = responses(s, 10)
    assert statuses == [b"HTTP/1.1 200 OK"] * (MAX_PIPELINED + 1) + [b"HTTP/1.1 429 Too Many Requests"]


@pytest.mark.parametrize("path", ["/v1/chat/completions/", "/v1/completions/", "/v1/batches/"])
def test_a_trailing_slash_is_a_404_in_openais_body_not_a_redirect_to_the_host_header(edge_port: int, path: str) -> None:
    """Starlette redirected it (307, no body) to a URL built from the Host header: behind a proxy that sets it, the
    edge's internal address, where a client following the 307 sent its body again."""
    reply = httpx.post(f"http://127.0.0.1:{edge_port}{path}", json={}, headers={"host": "edge.internal:8080"})
    assert (reply.status_code, reply.headers.get("location")) == (404, None)
    assert reply.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1%2Fchat%2Fcompletions"), ("POST", "/v1/chat%2fcompletions"), ("GET", "/v1/files/file-x%2Fcontent")],
)
def test_a_slash_sent_encoded_where_a_route_has_a_separator_is_a_404(edge_port: int, method: str, path: str) -> None:
    """uvicorn decodes the path before routing: it was served as the route it spells."""
    reply = httpx.request(method, f"http://127.0.0.1:{edge_port}{path}", json={"messages": []})
    assert reply.status_code == 404, reply.text
    assert reply.json()["error"] == {
        "message": f"no route {method} {path}",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


def test_a_slash_sent_encoded_within_a_model_id_is_routed(edge_port: int) -> None:
    """OpenAI's SDKs send a model id's slash encoded (`models.retrieve("org/model")`)."""
    reply = httpx.get(f"http://127.0.0.1:{edge_port}/v1/models/org%2Fmodel")
    assert reply.status_code == 503, reply.text  # routed, then the router is not there


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/files", "GET, HEAD, POST"),  # two routes, one a method
        ("PATCH", "/v1/files/file-x", "DELETE, GET, HEAD"),
        ("POST", "/v1/models/org/model", "GET, HEAD"),
    ],
)
def test_a_405_names_the_methods_its_path_takes_in_allow(edge_port: int, method: str, path: str, allowed: str) -> None:
    reply = httpx.request(method, f"http://127.0.0.1:{edge_port}{path}")
    assert (reply.status_code, reply.headers.get("allow")) == (405, allowed)
    assert reply.json()["error"]["code"] == "method_not_allowed"
