"""The in-chart Redis require a password (redis.auth): the chart's own Secret of random passwords, kept on upgrade
(against a Kubernetes API on loopback), or the operator's; each Redis, its probe, its exporter and its callers' URLs
get their role's password from it, and no pod spec holds one. The rendered Redis start is run for real: a local
redis-server, as the manifest starts it, refuses a client without the password and lets the rendered URLs in. Needs
helm and redis-server (a failure without them under CI=true)."""

from __future__ import annotations

import base64
import copy
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from llmrouter.redis_connect import connect
from services.router.money_check import check_money_redis

from .kube_api import KubeApi
from .support import CHART, by_kind, render, tool

RELEASE = "llm-llm-cost-router"
AUTH_SECRET = f"{RELEASE}-redis-auth"
ROLES = ("money", "cache", "batches")
# Each role's callers: (Deployment or CronJob, the env entry holding its URL).
CALLERS = {
    "money": [("router", "ROUTER_REDIS_URL"), ("ledger-trim", "ROUTER_REDIS_URL")],
    "cache": [("router", "ROUTER_CACHE_REDIS_URL")],
    "batches": [("edge", "EDGE_BATCH_REDIS_URL")],
}
WITH_TRIM = ("--set", "router.ledgerDsnSecret.name=llm-ledger", "--set", "router.ledgerDsnSecret.key=dsn")
EXISTING = ("--set", "redis.auth.existingSecret=llm-redis-auth", "--set", "redis.auth.existingSecretKeys.money=m-pw")


def name(component: str) -> str:
    return f"{RELEASE}-{component}"


def pods(docs: list[dict]) -> dict[str, dict]:
    """Every pod template's spec, by its workload's name (Deployments, StatefulSets, the CronJob's)."""
    found = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            found[doc["metadata"]["name"]] = doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            found[doc["metadata"]["name"]] = doc["spec"]["jobTemplate"]["spec"]["template"]
    return found


def containers(docs: list[dict], component: str) -> dict[str, dict]:
    return {c["name"]: c for c in pods(docs)[name(component)]["spec"]["containers"]}


def caller(docs: list[dict], component: str) -> dict:
    (container,) = containers(docs, component).values()
    return container


def passwords(docs: list[dict]) -> dict[str, str]:
    """The generated Secret's passwords, decoded, by role."""
    data = by_kind(docs, "Secret")[AUTH_SECRET]["data"]
    return {role: base64.b64decode(value).decode() for role, value in data.items()}


def kubelet_expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) replaced by VAR from `env` (left as written when it has none), $$ an escaped $: what the kubelet does
    to env values, command and args."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), value)


def kubelet_env(container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet makes it: secretKeyRef read from `secrets` (name -> key -> value;
    another Secret's entries, such as the ledger DSN, left out), values expanded from the entries defined before."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            if ref["name"] in secrets:
                env[entry["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            env[entry["name"]] = kubelet_expand(entry["value"], env)
    return env


def secret_ref(container: dict, variable: str) -> dict:
    (entry,) = [e for e in container["env"] if e["name"] == variable]
    return entry["valueFrom"]["secretKeyRef"]


def test_the_chart_makes_a_random_password_per_role() -> None:
    """By default: one Secret, a password per in-chart Redis, random and usable unescaped in a URL."""
    docs = render()
    secret = by_kind(docs, "Secret")[AUTH_SECRET]
    assert secret["metadata"]["labels"]["llm-cost-router/redis-auth"] == "generated"
    made = passwords(docs)
    assert made.keys() == set(ROLES)
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", password) for password in made.values())  # URL-safe as they are
    assert len(set(made.values())) == len(ROLES)
    # Only for the Redis the chart runs: an external one brings its own URL and password.
    external_money = render("--set", "redis.money.url=rediss://money.example:6380/0")
    assert passwords(external_money).keys() == {"cache", "batches"}
    assert "REDIS_MONEY_PASSWORD" not in {e["name"] for e in caller(external_money, "router")["env"]}
    for values in ("minimal", "production"):  # no in-chart Redis at all
        assert AUTH_SECRET not in by_kind(render("-f", str(CHART / "ci" / f"{values}-values.yaml")), "Secret")


@pytest.mark.parametrize("role", ROLES)
def test_each_redis_its_probe_its_exporter_and_its_callers_get_its_password(role: str) -> None:
    docs = render(*WITH_TRIM)
    ref = {"name": AUTH_SECRET, "key": role}
    pod = containers(docs, f"redis-{role}")
    redis_container, exporter = pod["redis"], pod["exporter"]
    assert secret_ref(redis_container, "REDIS_PASSWORD") == ref
    # The probe's redis-cli reads REDISCLI_AUTH; -e makes a refused PING (NOAUTH) fail it.
    assert {"name": "REDISCLI_AUTH", "value": "$(REDIS_PASSWORD)"} in redis_container["env"]
    command = redis_container["readinessProbe"]["exec"]["command"]
    assert command[0] == "redis-cli" and "-e" in command and "-a" not in command
    assert secret_ref(exporter, "REDIS_PASSWORD") == ref
    for component, url_variable in CALLERS[role]:
        container = caller(docs, component)
        assert secret_ref(container, f"REDIS_{role.upper()}_PASSWORD") == ref
        env = kubelet_env(container, {AUTH_SECRET: {r: f"{r}-s3cret" for r in ROLES}})
        assert env[url_variable] == f"redis://:{role}-s3cret@{name(f'redis-{role}')}:6379/0"
    # The edge, reachable from outside, holds the batch Redis' password only, never the money one.
    edge_refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in caller(docs, "edge")["env"] if "valueFrom" in e}
    assert edge_refs & set(ROLES) == {"batches"}


@pytest.mark.parametrize("values", [(), EXISTING], ids=["generated", "existing"])
def test_no_pod_spec_holds_a_password(values: tuple[str, ...]) -> None:
    """Only the generated Secret holds them: in every other object, not the password, nor its base64; no container's
    command, args or probe carries one (nor a password flag), and no env entry has one as its value."""
    docs = render(*WITH_TRIM, *values)
    made = passwords(docs) if not values else {}
    others = yaml.safe_dump_all([d for d in docs if d["metadata"]["name"] != AUTH_SECRET])
    for password in made.values():
        assert password not in others and base64.b64encode(password.encode()).decode() not in others
    for workload, template in pods(docs).items():
        for container in template["spec"]["containers"]:
            words = [*container.get("command", []), *container.get("args", [])]
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                words += container.get(probe, {}).get("exec", {}).get("command", [])
            # Nor a flag taking one, even inside a shell script.
            flag = re.compile(r"(^|\s)(-a|--pass|--requirepass|--masterauth|--redis\.password)(\s|=|$)")
            assert not [word for word in words if flag.search(word)], (workload, container["name"])
            for entry in container.get("env", []):
                if "PASSWORD" in entry["name"] or entry["name"] == "REDISCLI_AUTH":
                    assert "valueFrom" in entry or re.fullmatch(r"\$\(\w+\)", entry["value"]), entry


def test_an_existing_secret_is_used_instead_of_a_generated_one() -> None:
    docs = render(*WITH_TRIM, *EXISTING)
    assert AUTH_SECRET not in by_kind(docs, "Secret")
    keys = {"money": "m-pw", "cache": "cache", "batches": "batches"}
    for role in ROLES:
        ref = {"name": "llm-redis-auth", "key": keys[role]}
        pod = containers(docs, f"redis-{role}")
        assert secret_ref(pod["redis"], "REDIS_PASSWORD") == ref
        assert secret_ref(pod["exporter"], "REDIS_PASSWORD") == ref
        for component, _ in CALLERS[role]:
            assert secret_ref(caller(docs, component), f"REDIS_{role.upper()}_PASSWORD") == ref
    # Nothing Helm made to roll on: the operator restarts the pods after changing the Secret (deploy/README.md).
    assert not [n for n, t in pods(docs).items() if "checksum/redis-auth" in t["metadata"].get("annotations", {})]


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApi]:
    with KubeApi(tmp_path) as api:
        yield api


def checksums(docs: list[dict]) -> dict[str, str]:
    return {n: t["metadata"]["annotations"].get("checksum/redis-auth") for n, t in pods(docs).items()}


def test_generated_passwords_are_kept_on_upgrade(kube_api: KubeApi) -> None:
    """An upgrade that made new passwords would lock the running callers out at the next Redis restart: what the
    cluster holds is kept; a missing one is made, and only the pods using it roll."""

    def upgrade() -> list[dict]:
        return render(monitoring_crds=False, kubeconfig=kube_api.kubeconfig)

    installed = upgrade()
    assert passwords(render(monitoring_crds=False)) != passwords(installed)  # without a cluster: new ones each time
    kube_api.store(copy.deepcopy(by_kind(installed, "Secret")[AUTH_SECRET]))
    upgraded = upgrade()
    assert passwords(upgraded) == passwords(installed)
    assert checksums(upgraded) == checksums(installed)  # nothing changed: no rollout

    del kube_api.secrets[("llm", AUTH_SECRET)]["data"]["cache"]
    remade = upgrade()
    assert passwords(remade)["money"] == passwords(installed)["money"]
    assert passwords(remade)["cache"] != passwords(installed)["cache"]
    rolled = {n for n, value in checksums(remade).items() if value != checksums(installed)[n]}
    assert rolled == {name("redis-cache"), name("router")}


def operator_secret(**data: str) -> dict:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "llm-redis-auth", "namespace": "llm"},
        "data": encoded,
    }


GOOD_PASSWORDS = {"m-pw": "Good.Pass_word~0-9", "cache": "c" * 16, "batches": "b" * 40}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"m-pw": "p@ss:word/with?url#chars"}, 'key "m-pw": the password must be at least 16'),
        ({"batches": "short"}, 'key "batches": the password must be at least 16'),
        ({"cache": ""}, 'holds no password under key "cache"'),
    ],
)
def test_an_existing_secret_is_checked_where_the_cluster_is_read(
    kube_api: KubeApi, change: dict[str, str], complaint: str
) -> None:
    """A password the URLs could not carry unescaped, or one missing, stops the install (never echoing it); one
    usable renders, and so does a Secret not there yet (the pods wait for it)."""

    def install() -> list[dict]:
        return render(*EXISTING, monitoring_crds=False, kubeconfig=kube_api.kubeconfig)

    install()
    kube_api.store(operator_secret(**(GOOD_PASSWORDS | change)))
    with pytest.raises(subprocess.CalledProcessError) as failure:
        install()
    assert complaint in failure.value.stderr
    assert not [value for value in change.values() if value and value in failure.value.stderr]
    kube_api.store(operator_secret(**GOOD_PASSWORDS))
    install()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RenderedRedis:
    """One role's Redis container, run as the manifest runs it: its command and args, its environment as the kubelet
    makes it from the Secret, a directory standing for the /data volume (a local /bin/sh stands for the image's).
    redis-server is reached through a shim on PATH that keeps the arguments it is given (what `ps` on the node shows
    until Redis rewrites its process title) and execs the real one."""

    def __init__(self, docs: list[dict], role: str, secrets: dict[str, dict[str, str]], workdir: Path) -> None:
        self.container = containers(docs, f"redis-{role}")["redis"]
        self.env = kubelet_env(self.container, secrets)
        self.port = int(self.container["ports"][0]["containerPort"])
        self.data, shims, self.argv = workdir / "data", workdir / "bin", workdir / "redis-server-argv"
        self.data.mkdir()
        shims.mkdir()
        shim = shims / "redis-server"
        real = tool("redis-server")
        shim.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "$@" >{shlex.quote(str(self.argv))}\nexec {shlex.quote(real)} "$@"\n'
        )
        shim.chmod(0o755)
        self.path = f"{shims}{os.pathsep}{os.environ['PATH']}"

    def run(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [kubelet_expand(word, self.env) for word in (*self.container["command"], *self.container["args"])],
            cwd=self.data,
            env={"PATH": self.path, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def start(self) -> subprocess.Popen[str]:
        """Run it, and wait until it listens."""
        process = self.run()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return process
            except OSError:
                time.sleep(0.05)
        process.kill()
        raise AssertionError(f"redis did not start: {process.communicate()[0]}")

    def probe(self, env: dict[str, str]) -> int:
        command = self.container["readinessProbe"]["exec"]["command"]
        return subprocess.run(command, env={"PATH": self.path, **env}, capture_output=True).returncode


@pytest.fixture
def rendered() -> Iterator[tuple[list[dict], dict[str, int]]]:
    """The chart rendered with each in-chart Redis on a free local port (the only change), and those ports."""
    tool("redis-server")
    ports = {role: free_port() for role in ROLES}
    docs = render(*WITH_TRIM, *(arg for role in ROLES for arg in ("--set", f"redis.{role}.port={ports[role]}")))
    yield docs, ports


def local_url(docs: list[dict], component: str, variable: str, secrets: dict[str, dict[str, str]]) -> str:
    """A caller's rendered URL as its process sees it, the Service's name swapped for loopback."""
    url = kubelet_env(caller(docs, component), secrets)[variable]
    return re.sub(rf"@{RELEASE}-redis-\w+:", "@127.0.0.1:", url)


@pytest.mark.parametrize("role", ROLES)
async def test_the_rendered_redis_refuses_strangers_and_serves_its_callers(
    rendered: tuple[list[dict], dict[str, int]], role: str, tmp_path: Path
) -> None:
    docs, ports = rendered
    secrets = {AUTH_SECRET: passwords(docs)}
    password = secrets[AUTH_SECRET][role]
    server = RenderedRedis(docs, role, secrets, tmp_path)
    process = server.start()
    try:
        # The shell exec'd redis-server: PID 1 in the pod gets SIGTERM; the password is not on its command line.
        assert Path(f"/proc/{process.pid}/comm").read_text().strip() == "redis-server"
        argv = server.argv.read_text()
        assert "--port" in argv and password not in argv

        stranger = redis.Redis(port=ports[role])
        with pytest.raises(redis.AuthenticationError):
            stranger.ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=ports[role], password="wrong-password-0123456789").ping()

        assert server.probe(server.env) == 0
        assert server.probe({k: v for k, v in server.env.items() if k != "REDISCLI_AUTH"}) != 0

        for component, variable in CALLERS[role]:
            client = connect(local_url(docs, component, variable, secrets))
            try:
                assert await client.set(f"auth-test:{component}", "ok") is True
                assert await client.get(f"auth-test:{component}") == b"ok"
            finally:
                await client.aclose()
        if role == "money":  # the router's own start-up check passes through it: noeviction, AOF
            await check_money_redis(local_url(docs, "router", "ROUTER_REDIS_URL", secrets), allow_eviction=False)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=15)[0]
    assert process.returncode == 0, output  # a clean shutdown on SIGTERM
    assert password not in output


@pytest.mark.parametrize("password", ["too-short", "long-enough-but@has:url/chars", "x" * 20 + "\nrequirepass other"])
def test_the_rendered_redis_refuses_a_password_its_callers_could_not_use(
    rendered: tuple[list[dict], dict[str, int]], password: str, tmp_path: Path
) -> None:
    """What `helm template` could not check: a Redis that would start with it locks out callers whose URL breaks."""
    docs, _ = rendered
    server = RenderedRedis(docs, "money", {AUTH_SECRET: {"money": password}}, tmp_path)
    process = server.run()
    output = process.communicate(timeout=10)[0]
    assert process.returncode == 1
    assert "must be at least 16 of A-Z a-z 0-9 . _ ~ -" in output
    assert password not in output
    assert not server.argv.exists()  # redis-server never ran
