"""The edge's HTTP/1.1 protocol: uvicorn's httptools one, with each request's head (request line and headers)
bounded in size and time and its body in stalls, each answer in its caller's stalls, and its refusals of malformed
HTTP in OpenAI's error body like every other 4xx. httptools keeps a head in memory however long it grows (uvicorn
bounds it for h11 only), and uvicorn waits for a head or a body however slowly it comes (its keep-alive timeout
ends only before the first byte of a next request): one caller, before it is even authenticated, could hold
hundreds of megabytes of the edge per connection, or as many connections as it likes (until the process has no
file descriptor left). A body trickled a byte at a time, each within the stall timeout, held its connection (and an
upload its place) as long as its caller liked: a body must also come at a least average rate. And uvicorn waits for
a caller to read an answer however long it takes: a download (a file held in memory, and one of
EDGE_BATCH_MAX_CONCURRENT_UPLOADS places) was held until its caller went away."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import socket
import struct
import termios
from typing import Any

import httptools
from prometheus_client import Counter
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

MAX_HEAD_BYTES = 64 * 1024  # four times what nginx and Node accept by default
# Requests a connection may have read ahead of their answers (HTTP/1.1 pipelining): uvicorn parses every request a
# read brings and queues each (~20 KB of its own objects), and reads on after each answer, so a caller pipelining
# megabytes of tiny requests held ~64 MB per connection. Clients pipeline a few, if any.
MAX_PIPELINED = 32
LINGER_S = 2.0  # how long a refused request's rest is read and dropped before its connection is closed
REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
}
# Refused here, before the app sees them, so not in llmrouter_edge_http_requests_total: a flood of slow or oversized
# heads, or a proxy in front sending headers past the bound, shows only here. A body refused while its app reads it is
# in both, with the status sent (CALLER_STATUS).
REFUSED = Counter(
    "llmrouter_edge_refused_requests_total",
    "Requests the edge's HTTP protocol refused before its app: malformed (400), a CONNECT (405), too slow (408), "
    "head too large (431), pipelined past the bound (429), a transfer coding other than chunked (501)",
    ["status"],
)


# The scope key of the status that tells what a request's caller got when its app's cannot (Observe logs it): this
# protocol's refusal of a body its app was reading (the app learns only that the caller is gone, and answers a 499
# that never goes out), or a 499 for a caller that left before any answer began (whatever the app sends then goes
# nowhere, an unstreamed 200 too).
CALLER_STATUS = "llmrouter.caller_status"
CLIENT_CLOSED = 499  # nginx's status for a caller that closed its request before the answer


class Refused(Exception):
    """Raised in a parser callback to stop parsing a read: the request being parsed is refused."""


class TimedFlow(FlowControl):
    """uvicorn's flow control, which also counts how long reading was paused: the app had yet to take what came."""

    paused_at: float | None = None
    paused_s = 0.0  # before paused_at
    resumed_at = 0.0  # when reading last resumed (the loop's time)

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.paused_at = asyncio.get_running_loop().time()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.paused_at is not None:
            self.resumed_at = asyncio.get_running_loop().time()
            self.paused_s += self.resumed_at - self.paused_at
            self.paused_at = None
        super().resume_reading()

    def held_s(self, now: float) -> float:
        """How long reading was paused, in all, up to now."""
        return self.paused_s + (now - self.paused_at if self.paused_at is not None else 0.0)


LENGTH_HEADERS = {b"content-length", b"transfer-encoding"}


class Http10Cycle(RequestResponseCycle):
    """An HTTP/1.0 request's cycle. uvicorn sends an answer of no declared length (a stream) chunked whatever the
    request's version, and an HTTP/1.0 caller reads no transfer coding (RFC 9112, 6.1: none is sent to one): it read
    each event behind a chunk's size, and the end as a stray `0`. Such an answer is sent as is, its end the
    connection's close (RFC 9112, 6.3)."""

    close_delimited = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            declared = {name.lower() for name, _ in message.get("headers", [])} & LENGTH_HEADERS
            if not declared and self.scope["method"] != "HEAD" and message["status"] not in (204, 304):
                self.close_delimited = True
                self.keep_alive, self.chunked_encoding = False, False  # uvicorn then adds `connection: close` alone
        elif self.close_delimited and message["type"] == "http.response.body":
            self.expected_content_length = len(message.get("body", b""))  # each piece as long as uvicorn expects
        await super().send(message)


class BoundedReadProtocol(HttpToolsProtocol):
    """A head (or a chunked body's trailers) past MAX_HEAD_BYTES gets a 431; a head not whole read_timeout_s after
    the connection opened or the request began, a body that stalls that long, or one that has come at under
    min_body_rate bytes/s on average body_grace_s or more after the head ended, a 408; then the connection is closed,
    as after a malformed request's 400 (the time the edge's app had yet to take what came is not the caller's: not
    counted). A connection that sends nothing for read_timeout_s is closed. One whose caller takes none of an answer
    for write_timeout_s, the answer's sending held up meanwhile, is dropped (looked at every write_timeout_s: within
    twice that of the caller's last read)."""

    read_timeout_s = 30.0  # the edge's setting EDGE_READ_TIMEOUT_S (edge_protocol)
    write_timeout_s = 30.0  # EDGE_WRITE_TIMEOUT_S
    min_body_rate = 1024  # EDGE_MIN_BODY_RATE, bytes/s; 0: no least rate
    body_grace_s = 10.0  # EDGE_BODY_GRACE_S
    read_timer: asyncio.TimerHandle | None = None
    write_timer: asyncio.TimerHandle | None = None
    rate_timer: asyncio.TimerHandle | None = None
    flow: TimedFlow
    body_began = 0.0  # when the body's head ended (the loop's time)
    body_held_s = 0.0  # the flow's held_s then
    body_bytes = 0  # of the body received (its content: chunked framing not counted)
    in_head = False  # a request's head has begun and not ended
    in_body = False  # a request's head has ended and its body not
    head_bytes = 0  # received since the head began (the whole chunk it began in)
    head_tail = b""  # the last bytes of the read a head is unfinished after: its end may begin there
    parsed_head_bytes = 0  # of the head's request target and headers the parser handed over
    chunk_bare = False  # a chunked body's chunk has begun and none of it came yet: the last one's trailers come
    trailer_bytes = 0  # of the chunked body's trailers (about)
    ended = False  # a request ended in the chunk being parsed: the next one's head, pipelined, is not counted
    refused = False  # answered with a refusal: what still comes is dropped until the connection closes
    owed: bytes | None = None  # a refusal not yet sent, for the answers of the requests before it to be sent first
    unmade_upgrade: str | None = None  # the protocol a request offered to upgrade to, not made: served without it

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = TimedFlow(transport)  # before any request, which is given the protocol's flow
        self.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.scope.setdefault(CALLER_STATUS, CLIENT_CLOSED)  # type: ignore[misc]  # an extension's key
        self.disarm()
        self.unwatch_body()
        self.unwatch_writes()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:  # the rest of a refused request: read, and dropped
            return
        self.ended = False
        if self.in_body:  # the body progresses
            self.arm()
        if self.head_past_bound(data):
            self.refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes", "request_header_fields_too_large")
            return
        bare = self.chunk_bare
        if self.feed(data):  # the read handed on whole to a new parser (without_upgrade), which counted it
            return
        if bare and self.chunk_bare and self.in_body:  # all of it the last chunk's trailers
            self.trailer_bytes += len(data)
        if self.in_body and self.trailer_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            # httptools keeps a trailer in memory however long it grows, uvicorn all of them: bounded as a head.
            self.refuse(431, f"request trailers over {MAX_HEAD_BYTES} bytes", "request_header_fields_too_large")
        if not self.in_head or self.transport.is_closing():
            return
        self.head_tail = data[-3:]  # the head goes on into the next read: its end may begin here
        if self.ended:
            return
        self.head_bytes += len(data)
        if self.head_bytes > MAX_HEAD_BYTES:
            self.refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes", "request_header_fields_too_large")

    def head_past_bound(self, data: bytes) -> bool:
        """Whether the head this read ends, continued from reads before or begun between requests, passes the bound
        with its bytes up to its end (an empty line: httptools takes no other), before the parser takes them. The
        reads a head is unfinished after are counted whole after parsing (data_received); what the parser hands over
        (count_head) leaves out each header's ': ' and CRLF and a value's leading blanks, so a head's last read, or
        only one, of mostly those was served past the bound."""
        if self.in_head:
            end = (self.head_tail + data).find(b"\r\n\r\n")
            return end >= 0 and self.head_bytes + end + 4 - len(self.head_tail) > MAX_HEAD_BYTES
        if self.in_body:
            return False
        start = len(data) - len(data.lstrip(b"\r\n"))  # blank lines before a request are skipped
        end = data.find(b"\r\n\r\n", start)
        return end >= 0 and end + 4 - start > MAX_HEAD_BYTES

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:
            message = f"more than {MAX_PIPELINED} requests pipelined ahead of their answers"
            self.refuse(429, message, "too_many_pipelined_requests")  # once those before it are answered
            raise Refused  # httptools stops parsing the read here; the rest is dropped (refused)
        super().on_message_begin()
        self.in_head, self.head_bytes, self.parsed_head_bytes = True, 0, 0
        self._unset_keepalive_if_required()  # no longer idle: its head is timed
        if self.read_timer is None:  # a next request on the connection: its own time
            self.arm()

    def on_header(self, name: bytes, value: bytes) -> None:
        # Each header's line also holds its ':' and CRLF, the least it can: a head of many empty headers is mostly
        # those, and one behind another request in a read is bounded only here (head_past_bound looks at a read's
        # first head).
        size = len(name) + len(value) + len(b":\r\n")
        if self.in_body:  # a chunked body's trailer: not one of the request's headers (uvicorn would add it)
            self.trailer_bytes += size
        else:
            self.count_head(size)
            super().on_header(name, value)

    def on_url(self, url: bytes) -> None:
        self.count_head(len(url))
        super().on_url(url)

    def count_head(self, size: int) -> None:
        """The head's bound on what the parser hands over. data_received counts the reads a head is still unfinished
        after, which leaves out the read that finishes it: a head of 60 KiB and then 60 KiB more in its last read was
        served."""
        self.parsed_head_bytes += size
        if self.parsed_head_bytes > MAX_HEAD_BYTES:
            self.refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes", "request_header_fields_too_large")
            raise Refused  # httptools stops parsing the read here: the request is never served

    def on_chunk_header(self) -> None:
        self.chunk_bare = True

    def on_headers_complete(self) -> None:
        if self.parser.get_method() == b"CONNECT":
            # The edge opens no tunnel. httptools stops after a CONNECT's head whatever its headers (re-parsed as an
            # upgrade not made, it would stop again, and again): the requests a read brought behind it were never
            # parsed nor answered, their caller waiting on an open connection. After a CONNECT the connection's
            # framing is not to be trusted (its caller may already be sending a tunnel's bytes): refused, once the
            # requests before it are answered, and the connection closed, as a proxy refusing a tunnel does.
            self.refuse(405, "method CONNECT not allowed: the edge opens no tunnels", "method_not_allowed")
            raise Refused  # httptools stops parsing the read here; the rest is dropped (refused)
        if fault := self.host_fault():
            self.refuse(400, fault, "invalid_http_request")
            raise Refused  # httptools stops parsing the read here; the rest is dropped (refused)
        if coding := self.unknown_transfer_coding():
            # httptools takes any codings before a last chunked (`gzip, chunked`) and hands on the body un-chunked
            # only: read as it is, it was served as garbage, or as JSON that says another thing than was meant.
            # RFC 9112, 6.1: a request with a transfer coding the server does not understand is a 501.
            message = f"transfer coding {coding!r} not implemented: send the body plain, or chunked only"
            self.refuse(501, message, "unsupported_transfer_encoding")
            raise Refused  # httptools stops parsing the read here; the rest is dropped (refused)
        self.in_head, self.in_body = False, True
        self.chunk_bare, self.trailer_bytes = False, 0
        self.arm()
        self.watch_body()
        if self.parser.should_upgrade() and not self._should_upgrade():
            # An upgrade offered that is not made (h2c, as `curl --http2` and Java's HttpClient offer over http://,
            # on a POST with its body too): httptools stops at the head, reading no body (the app was served an empty
            # one) and nothing after it on the connection. Not given to the app from this parser: served as the
            # HTTP/1.1 request it also is once the parser stops (feed, without_upgrade).
            self.unmade_upgrade = (self._get_upgrade() or b"").decode("latin-1")[:64]
            return
        super().on_headers_complete()
        if self.cycle is not None and self.parser.get_http_version() == "1.0":
            self.cycle.__class__ = Http10Cycle  # made by uvicorn's on_headers_complete, its app not yet begun
            # RFC 9110, 10.1.1: HTTP/1.0 has no 1xx answers, and a server ignores such a request's 100-continue
            # expectation (uvicorn sent the 100, which an HTTP/1.0 client may take for the answer).
            self.cycle.waiting_for_100_continue = False
        if self.cycle is not None and self.cycle.waiting_for_100_continue:
            # Its caller waits for a 100 Continue (sent when the app first asks for the body, which then resumes
            # reading) before it sends the body: until then, time the app holds it up, as when it has yet to take
            # what came.
            self.flow.pause_reading()

    def host_fault(self) -> str:
        """What is wrong with the request's Host headers, '' when nothing. RFC 9112, 3.2: a server must answer 400 to an
        HTTP/1.1 request without one and to any request with more than one (a proxy in front may act on either)."""
        hosts = sum(name == b"host" for name, _ in self.headers)
        if hosts > 1:
            return f"{hosts} Host headers: send one"
        if hosts == 0 and self.parser.get_http_version() == "1.1":
            return "an HTTP/1.1 request needs a Host header"
        return ""

    def unknown_transfer_coding(self) -> str:
        """The first of the request's transfer codings other than chunked, in any of its Transfer-Encoding headers, or
        '' when there is none (httptools refuses a request's codings that do not end in chunked as malformed)."""
        for name, value in self.headers:
            if name == b"transfer-encoding":
                for coding in value.split(b","):
                    if coding.strip() and coding.strip().lower() != b"chunked":
                        return coding.strip().decode("latin-1")[:64]
        return ""

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        self.chunk_bare = False
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self.unmade_upgrade is None:
            super().on_message_complete()
        self.ended, self.in_body, self.chunk_bare = True, False, False
        self.disarm()
        self.unwatch_body()
        if self.cycle is not None and self.cycle.response_complete and not self.transport.is_closing():
            # Answered before its body ended (uvicorn's keep-alive timer, armed then, went at the body's next read):
            # idle from here, closed as any connection kept alive.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def feed(self, data: bytes) -> bool:
        """uvicorn's data_received, but for an upgrade offered that is not made (on_headers_complete): the request is
        served as HTTP/1.1 (RFC 9110, 7.8: a server may ignore Upgrade), from the read's bytes after its head. True
        when the read was so handed on."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.refused:  # a callback refused the request (Refused): answered already, not malformed
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade as upgrade:
            if self.unmade_upgrade is not None:
                self.without_upgrade(data[upgrade.args[0] :])
                return True
            self._unsupported_upgrade_warning()
        return False

    def without_upgrade(self, rest: bytes) -> None:
        """The request whose head the parser stopped after (an upgrade offered that is not made), parsed again by a
        new parser as plain HTTP/1.1: its head without the offer (Upgrade, HTTP2-Settings, and those tokens of
        Connection), then `rest`, its body and whatever follows on the connection."""
        offer = {b"upgrade", b"http2-settings"}
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/", self.parser.get_http_version().encode(), b"\r\n"]
        for name, value in self.headers:
            if name == b"connection":
                value = b", ".join(t.strip() for t in value.split(b",") if t.strip().lower() not in offer)
            if name not in offer and value:
                head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn makes its parser
        self.unmade_upgrade = None
        self.data_received(b"".join(head) + rest)

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, msg, "invalid_http_request")

    def arm(self) -> None:
        self.disarm()
        self.read_timer = self.loop.call_later(self.read_timeout_s, self.timed_out)

    def disarm(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def timed_out(self) -> None:
        self.read_timer = None
        if (self.in_head or self.in_body) and self.flow.read_paused:
            # The app has yet to take what came (or to answer the requests queued before this one, pipelined: the
            # head of a next one cut where the read ended): no stall of the caller's.
            self.arm()
        elif (self.in_head or self.in_body) and self.loop.time() < self.flow.resumed_at + self.read_timeout_s:
            # Reading resumed since: the caller has a whole read timeout from then.
            self.read_timer = self.loop.call_at(self.flow.resumed_at + self.read_timeout_s, self.timed_out)
        elif self.in_head or self.in_body:
            what = "request line and headers not received" if self.in_head else "request body stalled"
            self.refuse(408, f"{what} within {self.read_timeout_s:g} s", "request_timeout")
        else:  # nothing sent
            self.transport.close()

    def watch_body(self) -> None:
        self.unwatch_body()
        self.body_began, self.body_bytes = self.loop.time(), 0
        self.body_held_s = self.flow.held_s(self.body_began)
        if self.min_body_rate:
            self.rate_timer = self.loop.call_later(self.body_grace_s, self.check_rate)

    def unwatch_body(self) -> None:
        if self.rate_timer is not None:
            self.rate_timer.cancel()
            self.rate_timer = None

    def check_rate(self) -> None:
        """The body's time so far, less what the app held it up, against what it has sent: looked at again when, if
        nothing more came, its average would fall under min_body_rate (a body sent at twice the rate is looked at
        twice, each time twice as late); under it, refused."""
        self.rate_timer = None
        if not self.in_body or self.refused:
            return
        now = self.loop.time()
        spent_s = now - self.body_began - (self.flow.held_s(now) - self.body_held_s)
        due_s = max(self.body_grace_s, self.body_bytes / self.min_body_rate)
        if spent_s < due_s:
            # Reading held up, the body's time stands still: looked at again once a grace has passed at the least,
            # not over and over (it stood just under its due).
            wait_s = max(due_s - spent_s, self.body_grace_s) if self.flow.read_paused else due_s - spent_s
            self.rate_timer = self.loop.call_later(wait_s, self.check_rate)
        else:
            message = f"request body slower than {self.min_body_rate} bytes/s on average"
            self.refuse(408, f"{message} after {self.body_grace_s:g} s", "request_timeout")

    def pause_writing(self) -> None:
        """The answer's sending waits for the caller to take what it was sent (uvicorn's send waits for this)."""
        super().pause_writing()
        self.unwatch_writes()
        self.watch_writes(self.unsent())

    def resume_writing(self) -> None:
        self.unwatch_writes()
        super().resume_writing()

    def watch_writes(self, unsent: int) -> None:
        self.write_timer = self.loop.call_later(self.write_timeout_s, self.write_stalled, unsent)

    def unwatch_writes(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def write_stalled(self, unsent_before: int) -> None:
        """Still held up write_timeout_s on: watched again if the caller took any of it meanwhile, else dropped.
        Reset, not closed: a close waits for the caller to take the rest (and the socket's kernel buffer, that
        long, even past the transport's abort)."""
        self.write_timer = None
        unsent = self.unsent()
        if unsent < unsent_before:
            self.watch_writes(unsent)
            return
        with contextlib.suppress(AttributeError, OSError):
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # closed: a reset
        self.transport.abort()  # uvicorn then ends the response, and the app's sends return at once

    def unsent(self) -> int:
        """The answer's bytes the caller has yet to take: in the transport's buffer, and in the socket's (on Linux;
        elsewhere only the transport's, which goes down only once the socket's has room for more)."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        try:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (AttributeError, OSError):
            return unsent
        return unsent + int(struct.unpack("i", queued)[0])

    def refuse(self, status: int, message: str, code: str) -> None:
        """The request being read refused: the refusal is its answer, written once every request before it on the
        connection (pipelined) has its answer sent whole, never one more if its own answer has begun (a 404, 413 or
        429 before its body was read): the connection is then closed. What still comes is dropped. One refusal a
        connection: a read refused as malformed that also passes the head's bound is not refused again."""
        if self.refused:
            return
        self.refused = True
        REFUSED.labels(str(status)).inc()
        self.disarm()
        self.unwatch_body()
        own = self.cycle if self.in_body else None  # its cycle, once its head was read
        if own is not None and own.response_started:
            self.transport.close()
            return
        queued = [item for item in self.pipeline if item[0] is own]
        for item in queued:  # its app never started: never will
            self.pipeline.remove(item)
        if own is not None and not queued:  # its app, running, learns its caller is gone: nothing it sends goes out
            own.scope[CALLER_STATUS] = status  # type: ignore[literal-required]  # an extension's key, not ASGI's
            own.disconnected, own.waiting_for_100_continue = True, False
            own.message_event.set()
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        body = json.dumps({"error": error}).encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.owed = head % (status, REASONS[status], len(body)) + body
        self.transport.resume_reading()
        earlier = self.cycle if own is None else None  # the request before it, when it has no cycle of its own
        if queued or self.pipeline or (earlier is not None and not earlier.response_complete):
            return  # sent when their answers are (on_response_complete)
        self.send_refusal()

    def on_response_complete(self) -> None:
        last = not self.pipeline  # no request queued behind the one answered
        super().on_response_complete()
        if self.owed is not None and last and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self.send_refusal()

    def send_refusal(self) -> None:
        assert self.owed is not None
        self.transport.write(self.owed)
        self.owed = None
        # Closed at once with the rest of the request unread (a head past the bound, a body), the socket would
        # answer with a reset, which can destroy the refusal before the caller reads it. So, as nginx does: stop
        # sending, read and drop what still comes, and close when the caller does, or LINGER_S from now.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.read_timer = self.loop.call_later(LINGER_S, self.transport.close)


def edge_protocol(
    read_timeout_s: float, write_timeout_s: float, min_body_rate: int, body_grace_s: float
) -> type[BoundedReadProtocol]:
    bounds = {
        "read_timeout_s": read_timeout_s,
        "write_timeout_s": write_timeout_s,
        "min_body_rate": min_body_rate,
        "body_grace_s": body_grace_s,
    }
    return type("EdgeHttpProtocol", (BoundedReadProtocol,), bounds)
