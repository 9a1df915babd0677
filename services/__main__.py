"""The whole stack on one machine: `python -m services` starts the four services as their own processes (as
Kubernetes runs them), prints the routing demo (services/demo.py: prompts of different difficulty through
edge -> router -> classifier -> providers), then serves until Ctrl-C. `--once` stops after the demo; `--no-demo`
serves at once, without it (the demo's answers take the local model tens of seconds on a laptop's CPU).

While serving it supervises: a service that exits is reported at once and the whole stack stops with a non-zero
status (a half stack would answer /healthz while every request fails).

Ports come from the usual settings (CLASSIFIER_PORT, PROVIDERS_PORT, ROUTER_PORT, EDGE_PORT, *_METRICS_PORT);
`--port-offset N` moves every one not set by N from its default, for a second stack beside the first. The services
authenticate each other with mTLS: unless *_TLS_DIR says otherwise, a throwaway CA and one certificate per
service are made at start in a temporary directory, deleted at exit (or, the launcher killed, by the next launch:
services/stale_certificates.py). The services stop with their launcher, even a killed one
(services/die_with_parent.py).

Each service logs to a file of its own, in a directory the launcher names at start and keeps
(services/service_logs.py): its errors are shown on the launcher's stderr too, the rest stays out of the demo's way."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

from llmrouter.certs import LOOPBACK_NAMES, Authority
from llmrouter.registry import DEFAULT_REGISTRY, load_registry
from llmrouter.settings import REPO_ROOT, load_settings
from services import die_with_parent, service_logs, stale_certificates
from services.classifier.settings import ClassifierSettings
from services.demo import run_demo
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings

START_TIMEOUT_S = 180
SERVICES = ("classifier", "providers", "router", "edge")
SETTINGS = (ClassifierSettings, ProvidersSettings, RouterSettings, EdgeSettings)
MAX_PORT_OFFSET = 65535 - max(
    field.default
    for settings in SETTINGS
    for name, field in settings.model_fields.items()
    if name.endswith("port") and field.default
)
POLL_S = 0.2


def launch(name: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], threading.Event]:
    """Start `python -m services.<name>`, bound to this process (it stops once the launcher is gone, however it went),
    logging to `log` (a file, not a pipe of the launcher's: a service draining after a killed launcher still logs);
    the event is set when it reports READY (it listens). Called from the main thread, whose end is what the binding
    watches (PR_SET_PDEATHSIG): started from a thread that ended, a service would be stopped at once."""
    guard = [sys.executable, "-S", die_with_parent.__file__, str(os.getpid())]
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [*guard, sys.executable, "-m", f"services.{name}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
        )
    ready = threading.Event()

    def watch() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("READY "):
                ready.set()
            else:
                sys.stdout.write(line)

    threading.Thread(target=watch, daemon=True).start()
    return proc, ready


def wait_ready(procs: dict[str, tuple[subprocess.Popen[str], threading.Event]], names: list[str], logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for name in names:
        proc, ready = procs[name]
        while not ready.wait(0.2):
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {proc.returncode} (its log: {logs / name}.log)")
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start within {START_TIMEOUT_S} s")


@contextmanager
def running_stack(logs: Path | None = None) -> Iterator[tuple[str, dict[str, subprocess.Popen[str]]]]:
    """Start the four services, configured by the environment as usual, each logging to <logs>/<service>.log (a new
    directory unless given); yield the edge's URL and the processes; on exit, SIGTERM each (they drain in-flight
    work) and wait."""
    stale_certificates.remove_stale()
    with tempfile.TemporaryDirectory(prefix=stale_certificates.PREFIX) as certs:
        stale_certificates.mark_owner(Path(certs))
        env = with_throwaway_certificates(dict(os.environ), Path(certs))
        logs = logs or service_logs.run_directory()
        print(f"the services' logs (JSON lines; errors shown here too): {logs}/<service>.log", flush=True)
        with _running(env, logs) as stack:
            yield stack


def with_throwaway_certificates(env: dict[str, str], directory: Path) -> dict[str, str]:
    """Give every service without a *_TLS_DIR one made here: its identity (subject CN) is its name, valid
    for loopback and the host it serves on."""
    authority = Authority.create()
    for name in SERVICES:
        prefix = name.upper()
        host = env.get(f"{prefix}_HOST", "")
        hosts = LOOPBACK_NAMES if host in ("", "0.0.0.0", "::") else (*LOOPBACK_NAMES, host)
        env.setdefault(f"{prefix}_TLS_DIR", str(authority.write(directory / name, name, hosts)))
    print(f"mTLS certificates of this run (CN = service): {directory}/<service>, deleted at exit", flush=True)
    return env


def with_port_offset(env: MutableMapping[str, str], offset: int) -> None:
    """Each service's ports that `env` does not set, `offset` above their defaults (a port whose default is none, a
    health port sharing the service's, stays so)."""
    for settings in SETTINGS:
        prefix = settings.model_config.get("env_prefix", "")
        for name, field in settings.model_fields.items():
            if name.endswith("port") and field.default:
                env.setdefault(f"{prefix}{name.upper()}", str(field.default + offset))


@contextmanager
def _running(env: dict[str, str], logs: Path) -> Iterator[tuple[str, dict[str, subprocess.Popen[str]]]]:
    def tls_dir(name: str) -> Path:
        return Path(env[f"{name.upper()}_TLS_DIR"])

    # Each service's own settings, as its process will read them (the certificates are not in os.environ).
    # A bad value stops the launch here, in the services' own words (one line a setting), before any is started; a
    # name that is no setting is each service's warning, shown as it starts.
    classifier = load_settings(ClassifierSettings, name_check=False, tls_dir=tls_dir("classifier"))
    providers = load_settings(ProvidersSettings, name_check=False, tls_dir=tls_dir("providers"))
    router = load_settings(RouterSettings, name_check=False, tls_dir=tls_dir("router"))
    edge = load_settings(EdgeSettings, name_check=False, tls_dir=tls_dir("edge"))
    env.setdefault("ROUTER_CLASSIFIER_ADDR", f"{classifier.host}:{classifier.port}")
    env.setdefault("ROUTER_PROVIDERS_ADDR", f"{providers.host}:{providers.port}")
    env.setdefault("EDGE_ROUTER_ADDR", f"{router.host}:{router.port}")
    procs: dict[str, tuple[subprocess.Popen[str], threading.Event]] = {}
    followed = threading.Event()  # set once the services have exited: their logs are then shown to the end
    followers: list[threading.Thread] = []

    def start(name: str) -> None:
        with SIGNALS.held():
            procs[name] = launch(name, env, logs / f"{name}.log")
        follower = threading.Thread(target=service_logs.follow, args=(logs / f"{name}.log", followed), daemon=True)
        follower.start()
        followers.append(follower)

    try:
        for name in ("classifier", "providers", "router"):
            start(name)
        wait_ready(procs, ["classifier", "providers", "router"], logs)
        start("edge")
        wait_ready(procs, ["edge"], logs)
        yield f"http://{edge.host}:{edge.port}", {name: proc for name, (proc, _) in procs.items()}
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        followed.set()
        for follower in followers:
            follower.join()


def supervise(procs: dict[str, subprocess.Popen[str]], stop: threading.Event) -> tuple[str, int] | None:
    """Block until `stop` is set (None) or a service exits: then its name and exit code."""
    while not stop.wait(POLL_S):
        for name, proc in procs.items():
            if (code := proc.poll()) is not None:
                return name, code
    return None


def registry_path() -> Path:
    """The registry the router serves (ROUTER_REGISTRY_PATH, relative to the checkout), for the demo's prices."""
    path = Path(os.environ.get("ROUTER_REGISTRY_PATH", DEFAULT_REGISTRY))
    return path if path.is_absolute() else REPO_ROOT / path


class Stopped(Exception):
    """SIGINT, SIGTERM or SIGHUP before the stack serves: while it starts its services or runs the demo."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP (its terminal closed: by default the launcher ended at once, its services undrained
    and its certificates left) set `stop`. Until the stack serves (`raising`), the first also raises Stopped, unwinding
    the start or the demo through running_stack, which stops the services started and deletes the certificates: the
    default SIGTERM ended the launcher there and then, its services left running on their ports and their keys on
    disk. Within `held()` (a service's process being started: raised in there, it would be lost to the stop), it is
    raised as the block ends."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.raising = True
        self._holding = False
        self._held: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        first = not self.stop.is_set()
        self.stop.set()
        if first and self.raising:
            if self._holding:
                self._held = signum
            else:
                raise Stopped(signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if (signum := self._held) is not None:
                self._held = None
                raise Stopped(signum)


SIGNALS = StopSignals()  # installed by main(): imported, the launcher's parts leave signals as they are


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__.split("\n\n")[0])
    demo = parser.add_mutually_exclusive_group()
    demo.add_argument("--once", action="store_true", help="stop after the routing demo")
    demo.add_argument("--no-demo", action="store_true", help="serve without running the routing demo first")
    parser.add_argument(
        "--port-offset",
        type=int,
        default=0,
        metavar="N",
        help="move every port not set in the environment N above its default (edge 8080+N, metrics 9101+N...), "
        "for a second stack beside the first",
    )
    args = parser.parse_args()
    if not 0 <= args.port_offset <= MAX_PORT_OFFSET:
        parser.error(f"--port-offset must be 0 to {MAX_PORT_OFFSET}: the highest default port moved by it is a port")
    with_port_offset(os.environ, args.port_offset)  # where the services' settings, and the launcher's, read them
    SIGNALS.install()
    try:
        serve(args)
    except Stopped as stopped:
        print(f"llm-cost-router: {stopped} before serving; the stack is stopped", file=sys.stderr, flush=True)
        raise SystemExit(128 + stopped.signum) from None


def serve(args: argparse.Namespace) -> None:
    logs = service_logs.run_directory()
    with running_stack(logs) as (base_url, procs):
        print(f"llm-cost-router is up: OpenAI-compatible API at {base_url}/v1")
        if not args.no_demo:
            run_demo(base_url, load_registry(registry_path()))
        SIGNALS.raising = False  # from here a stop signal only sets stop: the services are stopped as the block ends
        if not args.once:
            print(f"\nServing; try: curl {base_url}/v1/models   (Ctrl-C stops)", flush=True)
            exited = supervise(procs, SIGNALS.stop)
            if exited is not None:
                name, code = exited
                print(
                    f"llm-cost-router: {name} exited with code {code} (its log: {logs / name}.log); stopping the stack",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(1)


if __name__ == "__main__":
    main()
