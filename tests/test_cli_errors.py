"""The `llmrouter` CLI, its main() run in this process (as a process of its own where that is what is tested): a file
it cannot read is one line on standard error and exit status 1, never a traceback; a count below 1, a NaN or an
infinity is its usage error (exit status 2), said beside the option before anything is sent."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from llmrouter.cli.__main__ import main
from tests.conftest import ROOT
from tests.in_process import Ran, environment_without, run_main


def closed_url() -> str:
    """An edge URL nothing listens at: a command that got as far as calling it would say so instead."""
    with socket.create_server(("127.0.0.1", 0)) as spare:
        port = spare.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


Llmrouter = Callable[..., Ran]


@pytest.fixture
def llmrouter(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Llmrouter:
    """`llmrouter --url <closed> ARGV` from a shell without LLMROUTER_ settings, its main() run in this process."""
    environment_without(monkeypatch, "LLMROUTER_")
    return lambda *argv: run_main(main, ["--url", closed_url(), *argv], capfd)


def shell_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMROUTER_")}


def as_a_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m llmrouter.cli --url <closed> ARGV` as a process of its own, from a shell_environment()."""
    return subprocess.run(
        [sys.executable, "-m", "llmrouter.cli", "--url", closed_url(), *argv],
        cwd=ROOT,
        env=shell_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("argv", "status", "said"),
    [
        (["evaluate", "{missing}"], 1, "llmrouter evaluate: cannot read {missing}: No such file or directory\n"),
        (["ask", "hi", "--max-tokens", "0"], 2, "error: argument --max-tokens: must be at least 1, not 0\n"),
    ],
    ids=["unreadable-file", "usage-error"],
)
def test_the_command_exits_with_its_status_and_says_why_on_standard_error(
    tmp_path: Path, argv: list[str], status: int, said: str
) -> None:
    """The process boundary the in-process tests below leave out: `python -m llmrouter.cli` exits with the status
    main() returns (or argparse's), its one line on standard error, nothing on standard output."""
    missing = tmp_path / "missing.jsonl"
    result = as_a_process(*(a.format(missing=missing) for a in argv))
    assert result.returncode == status
    assert result.stderr.endswith(said.format(missing=missing)) and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("prompts", "said"),
    [
        ("missing.jsonl", "No such file or directory"),
        (".", "Is a directory"),
        ("latin1.txt", "not UTF-8 text (at byte 3)"),
    ],
)
def test_a_prompt_file_it_cannot_read_is_one_line_and_status_1(
    llmrouter: Llmrouter, tmp_path: Path, prompts: str, said: str
) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1") + b"\n")
    path = tmp_path / prompts
    result = llmrouter("evaluate", str(path))
    assert result.returncode == 1
    assert result.stderr == f"llmrouter evaluate: cannot read {path}: {said}\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("line", "said"),
    [
        # a line of the routing data's answers file, given for its prompts file: its Python repr was routed
        ('{"prompt_id": "p1", "model": "gpt-4o", "answer": "4"}', 'a JSON object without a "prompt" string'),
        ('{"prompt": 5}', 'a JSON object without a "prompt" string'),  # routed as "5"
        ('{"prompt": null}', 'a JSON object without a "prompt" string'),  # routed as "None"
        ('{"prompt": "  "}', "an empty prompt"),
        ('""', "an empty prompt"),
    ],
)
def test_a_prompt_file_line_that_holds_no_prompt_is_one_line_and_status_1(
    llmrouter: Llmrouter, tmp_path: Path, line: str, said: str
) -> None:
    """Read before anything is sent: the edge this run names is out of reach, and the file's line is what it says."""
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "What is 2+2?"}\n\n' + line + "\n")
    result = llmrouter("evaluate", str(path))
    assert result.returncode == 1
    assert result.stderr == f"llmrouter evaluate: cannot read {path}: line 3 is {said}\n"
    assert result.stdout == ""


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` answering on loopback for the block: its API base URL. Its loop looks for the block's end every 10 ms
    (the default half second was most of each test's time)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class RecordingDecide(BaseHTTPRequestHandler):
    """An edge's /router/decide that records the prompts it is asked about."""

    prompts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.prompts.append(body["messages"][0]["content"])
        answer = json.dumps({"model": "m", "candidates": [{"model": "m", "eligible": True, "estimated_cost_usd": "1"}]})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_prompt_file_line_of_plain_text_is_the_prompt_as_written(llmrouter: Llmrouter, tmp_path: Path) -> None:
    """A plain line that happens to parse as JSON other than a string or an object (`true`, `1e3`, `[1, 2]`) is
    plain text, sent as written, not as Python writes the value it parses to (`True`, `1000.0`)."""
    handler: type[RecordingDecide] = type("Recording", (RecordingDecide,), {"prompts": []})
    path = tmp_path / "prompts.txt"
    path.write_text('true\n1e3\n[1, 2]\nWhat is 2+2?\n"a JSON string"\n{"prompt": "an object\'s prompt"}\n')
    with serving(handler) as url:
        result = llmrouter("--url", url, "evaluate", str(path))
    assert result.returncode == 0, result.stderr
    assert handler.prompts == ["true", "1e3", "[1, 2]", "What is 2+2?", "a JSON string", "an object's prompt"]


def test_a_prompt_file_saved_with_a_bom_and_crlf_or_a_line_separator_in_a_prompt_is_read_line_by_line(
    llmrouter: Llmrouter, tmp_path: Path
) -> None:
    """A file an editor saved with a byte order mark and CRLF line ends, and a JSON line whose prompt holds U+2028 as
    JSON allows it unescaped: the BOM made the first line no JSON, routed as its text (`{"prompt": ...}`), and the
    line separator split one line in two, each routed as a fragment of JSON."""
    handler: type[RecordingDecide] = type("Recording", (RecordingDecide,), {"prompts": []})
    path = tmp_path / "prompts.jsonl"
    lines = ['{"prompt": "first"}', '{"prompt": "one\u2028line"}', "plain"]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    with serving(handler) as url:
        result = llmrouter("--url", url, "evaluate", str(path))
    assert result.returncode == 0, result.stderr
    assert handler.prompts == ["first", "one\u2028line", "plain"]


@pytest.mark.parametrize(
    ("argv", "option", "said"),
    [
        (["evaluate", "{prompts}", "--limit", "0"], "--limit", "must be at least 1, not 0"),
        (["evaluate", "{prompts}", "--limit", "-2"], "--limit", "must be at least 1, not -2"),
        (["evaluate", "{prompts}", "--limit", "1.5"], "--limit", "'1.5' is not a whole number"),
        (["ask", "hi", "--max-tokens", "0"], "--max-tokens", "must be at least 1, not 0"),
        (["decide", "hi", "--quality-target", "nan"], "--quality-target", "must be a finite number, not 'nan'"),
        (["ask", "hi", "--quality-target", "inf"], "--quality-target", "must be a finite number, not 'inf'"),
        (["ask", "hi", "--quality-target", "1.5"], "--quality-target", "must be within [0, 1], not 1.5"),
        (["ledger", "export", "--out", "{out}", "--since", "nan"], "--since", "'nan' is neither Unix seconds nor a"),
        (["ledger", "export", "--out", "{out}", "--until=-inf"], "--until", "'-inf' is neither Unix seconds nor a"),
        (["stats", "--since", "inf"], "--since", "'inf' is neither Unix seconds nor a"),
        (["stats", "--until", "nan"], "--until", "'nan' is neither Unix seconds nor a"),
    ],
)
def test_a_number_out_of_its_range_is_a_usage_error(
    llmrouter: Llmrouter, tmp_path: Path, argv: list[str], option: str, said: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2+2?\n")
    out = tmp_path / "ledger.jsonl"
    result = llmrouter(*(a.format(prompts=prompts, out=out) for a in argv))
    assert result.returncode == 2
    assert f"error: argument {option}: {said}" in result.stderr
    assert result.stderr.startswith("usage: llmrouter ") and "Traceback" not in result.stderr
    assert not out.exists()


class NotTheEdge(BaseHTTPRequestHandler):
    """Some other web server: every request answered 200 with a page."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        page = b"<html><body>Welcome</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def not_the_edge() -> Iterator[str]:
    with serving(NotTheEdge) as url:
        yield url


@pytest.mark.parametrize("command", [["evaluate", "{prompts}"], ["decide", "hi"], ["ask", "hi"]])
def test_an_answer_that_is_no_json_is_one_line_and_status_1(
    llmrouter: Llmrouter, tmp_path: Path, not_the_edge: str, command: list[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2+2?\n")
    result = llmrouter("--url", not_the_edge, *(a.format(prompts=prompts) for a in command))
    assert result.returncode == 1
    assert result.stderr == f"llmrouter {command[0]}: HTTP 200 with no JSON body: is {not_the_edge} the edge's API?\n"


class OtherJsonApi(BaseHTTPRequestHandler):
    """Some other JSON API (or an edge of another version): every request answered 200 with JSON of its own shape,
    the body the test sets."""

    body = b"{}"

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_json_api() -> Iterator[tuple[str, type[OtherJsonApi]]]:
    handler = type("Answering", (OtherJsonApi,), {})
    with serving(handler) as url:
        yield url, handler


@pytest.mark.parametrize(
    "body",
    [
        b'{"object": "something else"}',
        b"[1, 2]",
        b'{"choices": [], "candidates": "none", "total": 3, "budgets": [{"period_end": "soon"}]}',
        b'{"choices": [{"message": {}}], "candidates": [{"estimated_cost_usd": "a lot"}], "budgets": [{}]}',
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["ask", "hi"],
        ["decide", "hi"],
        ["stats"],
        ["budgets"],
        ["budgets", "--set", "tenant", "acme", "5"],
        ["evaluate", "{prompts}"],
    ],
)
def test_a_json_answer_of_another_shape_is_one_line_and_status_1(
    llmrouter: Llmrouter,
    tmp_path: Path,
    other_json_api: tuple[str, type[OtherJsonApi]],
    command: list[str],
    body: bytes,
) -> None:
    url, handler = other_json_api
    handler.body = body
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2+2?\n")
    result = llmrouter("--url", url, *(a.format(prompts=prompts) for a in command))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"llmrouter {command[0]}: a reply without what it reads (")
    assert result.stderr.endswith(f"): is {url} the edge's API?\n")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_a_reader_that_leaves_early_gets_no_traceback(other_json_api: tuple[str, type[OtherJsonApi]]) -> None:
    """`llmrouter --json budgets | head`: the output stops where the reader left, with status 1 and nothing on
    standard error (it printed a BrokenPipeError's traceback, and Python's own complaint at exit)."""
    url, handler = other_json_api
    row = {"scope": "tenant", "name": "acme", "tenant": "acme", "limit_usd": "", "spent_usd": "0", "held_usd": "0"}
    row |= {"remaining_usd": "", "period": "day", "period_end": "0"}
    handler.body = json.dumps({"budgets": [row] * 5000}).encode()  # far more than a pipe holds
    command = [sys.executable, "-m", "llmrouter.cli", "--url", url, "--json", "budgets"]
    with subprocess.Popen(
        command, cwd=ROOT, env=shell_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as cli:
        assert cli.stdout is not None and cli.stderr is not None
        assert cli.stdout.read(10) == b'{\n  "budge'
        cli.stdout.close()
        said = cli.stderr.read()
        assert cli.wait(timeout=60) == 1
    assert said == b""


class RefusingKeys(OtherJsonApi):
    """An edge with API keys refusing the request's, in its words (services/edge/auth.py)."""

    def answer(self) -> None:
        key = self.headers.get("authorization")
        said = "invalid API key" if key else "no API key: send it as 'Authorization: Bearer <key>'"
        error = {"message": said, "type": "invalid_request_error", "code": "invalid_api_key"}
        self.body = json.dumps({"error": error}).encode()
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = do_PUT = do_DELETE = answer


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ([], "no API key: send it as 'Authorization: Bearer <key>' (give it: --api-key or LLMROUTER_API_KEY)"),
        (["--api-key", "sk-wrong"], "invalid API key (--api-key or LLMROUTER_API_KEY)"),
    ],
)
def test_a_refused_key_says_how_the_cli_takes_one(llmrouter: Llmrouter, key: list[str], said: str) -> None:
    """The edge's 401 speaks of a header, which a CLI user never writes."""
    with serving(RefusingKeys) as url:
        result = llmrouter("--url", url, *key, "budgets")
    assert result.returncode == 1
    assert result.stderr == f"llmrouter budgets: HTTP 401: {said}\n"
