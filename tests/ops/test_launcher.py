"""The launcher behind `make run` supervises: a service that dies is reported at once and the stack stops
(non-zero status, no orphan left serving half a stack)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llmrouter.ports import GRPC_BIND_FAILED
from services.__main__ import supervise
from tests.conftest import ROOT
from tests.integration.conftest import free_port
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: service processes started, killed and restarted


def python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], text=True)


def test_supervise_reports_the_service_that_exits() -> None:
    procs = {
        "steady": python("import time; time.sleep(30)"),
        "dying": python("import time, sys; time.sleep(0.5); sys.exit(3)"),
    }
    try:
        start = time.monotonic()
        assert supervise(procs, threading.Event()) == ("dying", 3)
        assert time.monotonic() - start < 10
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_supervise_returns_when_asked_to_stop() -> None:
    procs = {"steady": python("import time; time.sleep(30)")}
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    try:
        assert supervise(procs, stop) is None
        assert procs["steady"].poll() is None
    finally:
        procs["steady"].kill()
        procs["steady"].wait()


def children(pid: int) -> dict[str, int]:
    """The launcher's child processes: service name -> pid."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if len(cmdline) > 2 and cmdline[1] == b"-m" and cmdline[2].startswith(b"services."):
                found[cmdline[2].decode().removeprefix("services.")] = int(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def stack_env(**extra: str) -> dict[str, str]:
    """The launcher's environment: no provider keys nor router settings of the caller's, the services on free ports."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("ROUTER_")}
    for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
        env[f"{service}_PORT"] = str(free_port())
        env[f"{service}_METRICS_PORT"] = str(free_port())
    return {**env, **extra}


def start_stack(
    env: dict[str, str] | None = None, own_session: bool = False, args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], list[str]]:
    """The stack serving at once (the demo, tests/integration/test_stack.py, adds 20-40 s), on free ports unless `env`
    gives its own. A port free when chosen may be taken by the other test worker before a service binds it: then it
    starts again on others. `own_session`: the launcher leads a process group of its own, as a terminal's job does."""
    for _ in range(3):
        launcher = subprocess.Popen(
            [sys.executable, "-m", "services", "--no-demo", *args],
            cwd=ROOT,
            env=env or stack_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=own_session,
        )
        assert launcher.stdout is not None
        deadline, printed = time.monotonic() + 300, []
        for line in launcher.stdout:  # up: now serving
            printed.append(line)
            if line.startswith("Serving;") or time.monotonic() > deadline:
                break
        if printed and printed[-1].startswith("Serving;") and launcher.poll() is None:
            return launcher, printed
        _, stderr = launcher.communicate(timeout=60)  # it ended its output: it has exited, or is exiting
        if env is not None or ("in use" not in stderr.lower() and "bind" not in stderr.lower()):
            break
    raise AssertionError(f"the stack did not come up: {stderr[-2000:]}")


def certificates_of(printed: list[str]) -> Path:
    """The run's certificate directory, as the launcher's first line names it."""
    return Path(printed[0].split(": ", 1)[1].split("/<service>")[0])


def logs_of(printed: list[str]) -> Path:
    """The run's log directory, as the launcher's second line names it."""
    return Path(printed[1].split(": ", 1)[1].split("/<service>")[0])


def records(text: str) -> list[dict]:
    """The log records (JSON lines) of a text."""
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def stopped_services(logs: Path) -> set[str]:
    """The gRPC services whose logs (JSON lines, each service's file) say they drained and stopped."""
    stopped: set[str] = set()
    for line in "".join(log.read_text() for log in logs.glob("*.log")).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("msg") == "stopped":
            stopped.add(str(record.get("service")))
    return stopped


@pytest.mark.usefixtures("local_model")
def test_a_dead_service_stops_the_stack_at_once() -> None:
    launcher, printed = start_stack()
    try:
        assert not [line for line in printed if line.startswith("[")], "the demo ran"  # its prompts' lines
        services = children(launcher.pid)
        assert set(services) == {"classifier", "providers", "router", "edge"}
        os.kill(services["router"], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)
        assert launcher.returncode == 1
        assert "router exited with code -9" in stderr
        assert time.monotonic() - killed < 30  # the drain of the other three included
        assert not [name for name, pid in services.items() if alive(pid)]
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(timeout=60)


def test_the_services_logs_go_to_their_files_and_only_errors_to_the_terminal() -> None:
    """The services' JSON lines were printed amid the demo's own output, burying it for a reader following the README;
    now each service logs to its file, named at start, and what a reader must see (here the providers' port taken: a
    line that is no log record) is still on the terminal."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = stack_env(PROVIDERS_PORT=str(port))
        done = subprocess.run(
            [sys.executable, "-m", "services", "--no-demo"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 1, done.stderr
    logs = logs_of(done.stdout.splitlines(keepends=True))
    said = f"providers: cannot listen on 127.0.0.1:{port} ({GRPC_BIND_FAILED}): set PROVIDERS_PORT to a free port"
    assert said in done.stderr.splitlines()
    assert done.stderr.strip().splitlines()[-1] == f"providers exited with code 1 (its log: {logs}/providers.log)"
    assert records(done.stdout) == records(done.stderr) == []  # no service's log record on the terminal
    assert said in (logs / "providers.log").read_text()
    assert {r["msg"] for r in records((logs / "classifier.log").read_text())} >= {"stopped"}


def stack_processes(edge_port: int) -> list[int]:
    """Every service process of the stack whose edge is on `edge_port`, whoever its parent now is (a service the
    launcher left behind is the init process's)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, PermissionError, NotADirectoryError, ProcessLookupError):
            continue
        is_service = len(cmdline) > 2 and cmdline[1] == b"-m" and cmdline[2].startswith(b"services.")
        if is_service and f"EDGE_PORT={edge_port}".encode() in environ and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_a_stop_while_starting_stops_the_services_started(stop: signal.Signals) -> None:
    """SIGTERM (a supervisor's stop, `docker stop`, `kill`) or SIGHUP (its terminal closed) before the stack serves, as
    it starts its services or runs the demo: those started are stopped and the certificates deleted. The default
    SIGTERM or SIGHUP ended the launcher there and then, its services left running on their ports (the next `make run`
    could not listen) and their keys on disk."""
    env = stack_env(**{f"{service}_METRICS_PORT": "0" for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE")})
    edge_port = int(env["EDGE_PORT"])
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert launcher.stdout is not None
        certificates = Path(launcher.stdout.readline().split(": ", 1)[1].split("/<service>")[0])
        assert certificates.is_dir()
        # The first three started, the launcher waits for them to listen.
        await eventually(lambda: len(children(launcher.pid)) >= 3, "the launcher started its first services")
        launcher.send_signal(stop)
        _, stderr = launcher.communicate(timeout=60)
        assert launcher.returncode == 128 + stop
        assert f"{stop.name} before serving" in stderr
        assert stack_processes(edge_port) == []
        assert not certificates.exists()
    finally:
        for pid in stack_processes(edge_port):
            os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


@pytest.mark.usefixtures("local_model")
async def test_a_killed_launcher_takes_its_services_with_it(tmp_path: Path) -> None:
    """SIGKILL of the launcher (the OOM killer, `kill -9`) can run none of its clean-up: its services were left running
    on their ports, so the next `make run` could not listen, and their certificates on disk. Now each service drains
    and stops once its launcher is gone (PR_SET_PDEATHSIG), and the next launch deletes the certificate directory the
    dead one left; it serves on the same ports."""
    env = stack_env(TMPDIR=str(tmp_path))
    launcher, printed = start_stack(env)
    relaunched = None
    try:
        certificates, services = certificates_of(printed), children(launcher.pid)
        assert set(services) == {"classifier", "providers", "router", "edge"}
        launcher.kill()
        launcher.wait(timeout=60)
        await eventually(lambda: not [pid for pid in services.values() if alive(pid)], "the services exited", 60)
        assert stopped_services(logs_of(printed)) == {"classifier", "providers", "router"}  # drained, not killed
        assert certificates.is_dir()  # nothing could delete them
        relaunched, printed_again = start_stack(env)
        assert certificates_of(printed_again).is_dir()
        assert not certificates.exists()
    finally:
        for process in (launcher, relaunched):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        for pid in stack_processes(int(env["EDGE_PORT"])):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.usefixtures("local_model")
def test_a_closed_terminal_stops_the_stack_as_sigterm_does() -> None:
    """Closing the terminal sends SIGHUP to its job, the launcher and its services. By default it ended every one at
    once: no drain, the certificates left on disk. Now the launcher stops the stack as on SIGTERM."""
    env = stack_env()
    launcher, printed = start_stack(env, own_session=True)
    try:
        certificates, services = certificates_of(printed), children(launcher.pid)
        os.killpg(launcher.pid, signal.SIGHUP)
        _, stderr = launcher.communicate(timeout=60)
        assert launcher.returncode == 0, stderr[-2000:]
        assert not [name for name, pid in services.items() if alive(pid)]
        assert stopped_services(logs_of(printed)) == {"classifier", "providers", "router"}
        assert not certificates.exists()
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(timeout=60)
        for pid in stack_processes(int(env["EDGE_PORT"])):
            os.kill(pid, signal.SIGKILL)


def free_port_offset() -> int:
    """An offset moving every default port of the stack to one free now."""
    defaults = (8080, 50051, 50052, 50053, 9101, 9102, 9103, 9104, 9105)
    for offset in random.sample(range(1000, 15000), 50):
        try:
            for port in defaults:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return offset
    raise AssertionError("no free port offset")


def test_a_port_offset_moves_the_stack_beside_a_first_one() -> None:
    """A second `make run` beside the first needed a dozen port settings; --port-offset N moves each port not set."""
    offset = free_port_offset()
    env = {k: v for k, v in stack_env().items() if not k.endswith("PORT")}
    launcher, printed = start_stack(env, args=("--port-offset", str(offset)))
    try:
        assert f"http://127.0.0.1:{8080 + offset}/v1" in "".join(printed)
        assert httpx.get(f"http://127.0.0.1:{8080 + offset}/v1/models").status_code == 200
        for port in (9101, 9102, 9103, 9104):
            assert "llmrouter_" in httpx.get(f"http://127.0.0.1:{port + offset}/metrics").text
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
