"""The router's charge outbox and SQLite ledger hold money and every tenant's charges. By default they were in the
shared temp directory (/tmp/llmrouter-router, /tmp/llmrouter-ledger.sqlite3), where any local user could have made
them first: a directory of theirs (outbox lines of theirs replayed as charges against any tenant), a symbolic link
(the router writing wherever it points), a file anyone may read or write. Now the defaults are in
<tempdir>/llmrouter-<uid>/, made 0700, and a router refuses to start on a path another user could have made or could
change, saying which and why. Paths an operator configured outside the temp directory (the chart's volumes, group
owned by fsGroup) keep working. Each case has its own temp directory, made as /tmp is: anyone may create entries in
it. The start-up's checks refusing a path run in-process, as the router's start runs them; what needs a real
`python -m services.router` (the defaults made and taken again, volumes, no /proc, the refusal ending the process) runs
one."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmrouter.private_paths import default_path
from services.ledger.service import ledger_for
from services.router import outbox_for
from services.router.outbox import Outbox
from services.router.settings import RouterSettings
from services.router.store import MemoryStore
from tests.ci import missing
from tests.conftest import ROOT

pytestmark = pytest.mark.heavy  # make test-heavy: router processes started

NOBODY = 65534
OUTBOX = "router/charges-outbox.jsonl"  # in this user's own directory
as_root = pytest.mark.skipif(os.getuid() != 0, reason="making a file of another user's takes root")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def shared_tmp(tmp_path: Path) -> Path:
    """The processes' temp directory, as /tmp is: every user may create entries in it (sticky)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    return tmp


def private(tmp: Path) -> Path:
    """This user's own directory in the temp directory, where the defaults are."""
    return tmp / f"llmrouter-{os.getuid()}"


def router_env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("ROUTER_")}
    return {
        **env,
        "TMPDIR": str(tmp),
        "ROUTER_AUTH": "none",
        "ROUTER_PORT": "0",
        "ROUTER_METRICS_PORT": "0",
        **settings,
    }


def refused(env: dict[str, str]) -> str:
    """What a router refusing to start said."""
    started = subprocess.run(
        [sys.executable, "-m", "services.router"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode != 0 and "READY" not in started.stdout, started.stderr
    return started.stderr


def refused_at_start(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path | None = None, ledger_sql_path: Path | None = None
) -> str:
    """What the router's start-up checks of its outbox and then its ledger (as its start runs them) said refusing, with
    `tmp` the temp directory (TMPDIR) and the paths not given at their defaults under it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    settings = RouterSettings(
        auth="none",
        data_dir=data_dir or default_path("router"),
        ledger_sql_path=ledger_sql_path or default_path("ledger.sqlite3"),
    )
    with pytest.raises(SystemExit) as refusal:
        outbox_for(settings)
        ledger_for(settings).close()
    return str(refusal.value)


@contextmanager
def running(env: dict[str, str]) -> Iterator[None]:
    """A router started (with a umask leaving new files readable by anyone) and serving; stopped after the block."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.router"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        umask=0o002,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line.startswith("READY router "):
            proc.kill()
            pytest.fail(f"the router did not start: {proc.stderr.read()}")
        with grpc.insecure_channel(f"127.0.0.1:{line.split()[-1]}") as channel:  # serving, its signals handled
            checking = health_pb2_grpc.HealthStub(channel)
            health = checking.Check(health_pb2.HealthCheckRequest(), timeout=30)  # type: ignore[attr-defined]  # stubs list no methods
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        yield
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_defaults_are_made_private_and_taken_again_at_the_next_start(shared_tmp: Path) -> None:
    mine = private(shared_tmp)
    with running(router_env(shared_tmp)):
        made = {path.relative_to(mine).as_posix(): mode(path) for path in (mine, *mine.rglob("*"))}
    assert made == {
        ".": 0o700,
        "router": 0o700,
        "router/charges-outbox.jsonl": 0o600,
        "ledger.sqlite3": 0o600,
        "ledger.sqlite3-wal": 0o600,  # SQLite's, while the router runs
        "ledger.sqlite3-shm": 0o600,
    }
    assert {os.lstat(path).st_uid for path in (mine, *mine.rglob("*"))} == {os.getuid()}
    with running(router_env(shared_tmp)):  # what it made is this user's, private: taken
        pass


def _symlinked_private_dir(tmp: Path, elsewhere: Path) -> None:
    private(tmp).symlink_to(elsewhere, target_is_directory=True)


def _private_dir_others_may_write(tmp: Path, elsewhere: Path) -> None:
    private(tmp).mkdir()
    private(tmp).chmod(0o777)


def _private_dir_its_group_may_write(tmp: Path, elsewhere: Path) -> None:
    private(tmp).mkdir()
    private(tmp).chmod(0o770)


def _planted_outbox(tmp: Path, elsewhere: Path) -> None:
    (private(tmp) / "router").mkdir(parents=True, mode=0o700)
    private(tmp).chmod(0o700)
    outbox = private(tmp) / "router" / "charges-outbox.jsonl"
    outbox.write_text('{"account": {"tenant": "acme"}}\n')
    outbox.chmod(0o666)


def _symlinked_outbox(tmp: Path, elsewhere: Path) -> None:
    (private(tmp) / "router").mkdir(parents=True, mode=0o700)
    private(tmp).chmod(0o700)
    (private(tmp) / "router" / "charges-outbox.jsonl").symlink_to(elsewhere / "theirs.jsonl")


def _symlinked_ledger(tmp: Path, elsewhere: Path) -> None:
    private(tmp).mkdir(mode=0o700)
    (private(tmp) / "ledger.sqlite3").symlink_to(elsewhere / "theirs.sqlite3")


def _planted_write_ahead_log(tmp: Path, elsewhere: Path) -> None:
    private(tmp).mkdir(mode=0o700)
    (private(tmp) / "ledger.sqlite3-wal").write_bytes(b"")
    (private(tmp) / "ledger.sqlite3-wal").chmod(0o666)


def _private_dir_of_another_user(tmp: Path, elsewhere: Path) -> None:
    private(tmp).mkdir(mode=0o700)
    os.chown(private(tmp), NOBODY, NOBODY)


def _outbox_of_another_user(tmp: Path, elsewhere: Path) -> None:
    (private(tmp) / "router").mkdir(parents=True, mode=0o700)
    private(tmp).chmod(0o700)
    outbox = private(tmp) / "router" / "charges-outbox.jsonl"
    outbox.write_text("")
    outbox.chmod(0o600)
    os.chown(outbox, NOBODY, NOBODY)


@pytest.mark.parametrize(
    ("plant", "setting", "culprit", "problem"),
    [
        (_symlinked_private_dir, "ROUTER_DATA_DIR", "", "is a symbolic link"),
        (_private_dir_others_may_write, "ROUTER_DATA_DIR", "", "is writable by its group or others (mode 0777)"),
        (_private_dir_its_group_may_write, "ROUTER_DATA_DIR", "", "is writable by its group or others (mode 0770)"),
        (_planted_outbox, "ROUTER_DATA_DIR", OUTBOX, "is writable by its group or others (mode 0666)"),
        (_symlinked_outbox, "ROUTER_DATA_DIR", OUTBOX, "is a symbolic link"),
        (_symlinked_ledger, "ROUTER_LEDGER_SQL_PATH", "ledger.sqlite3", "is a symbolic link"),
        (_planted_write_ahead_log, "ROUTER_LEDGER_SQL_PATH", "ledger.sqlite3-wal", "is writable by its group"),
        pytest.param(
            _private_dir_of_another_user,
            "ROUTER_DATA_DIR",
            "",
            f"belongs to uid {NOBODY}, not to this user",
            marks=as_root,
        ),
        pytest.param(
            _outbox_of_another_user,
            "ROUTER_DATA_DIR",
            OUTBOX,
            f"belongs to uid {NOBODY}, not to this user",
            marks=as_root,
        ),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_a_default_path_another_user_could_have_made_is_refused_at_start(
    shared_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plant: Callable[[Path, Path], None],
    setting: str,
    culprit: str,
    problem: str,
) -> None:
    elsewhere = tmp_path / "theirs"  # where another user's link points
    elsewhere.mkdir()
    plant(shared_tmp, elsewhere)
    said = refused_at_start(shared_tmp, monkeypatch)
    assert f"{setting}=" in said, said
    assert f"{private(shared_tmp) / culprit if culprit else private(shared_tmp)} {problem}" in said, said
    assert list(elsewhere.iterdir()) == []  # nothing written through a link


def test_a_router_refusing_a_path_ends_saying_why(shared_tmp: Path, tmp_path: Path) -> None:
    """The checks above are the router process's: refusing, it exits at start, saying which path and why."""
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    _symlinked_private_dir(shared_tmp, elsewhere)
    said = refused(router_env(shared_tmp))
    data_dir = private(shared_tmp) / "router"
    assert f"ROUTER_DATA_DIR={data_dir} refused for the charge outbox: {private(shared_tmp)} is a symbolic link" in said
    assert "remove it, or name a real path" in said and "Traceback" not in said, said
    assert list(elsewhere.iterdir()) == []


def test_volumes_as_the_chart_mounts_them_are_taken(shared_tmp: Path, tmp_path: Path) -> None:
    """The chart's pods run as uid 10001 with fsGroup 10001: an emptyDir's mount point (the ledger's, /tmp) is root's,
    mode 0777 plus setgid; a persistent volume gives the group read and write on every file at each mount. What the
    router made there is its own; the rest is the operator's choice."""
    shared_tmp.chmod(0o2777)  # the pod's /tmp: an emptyDir, the data dir's default under it
    ledger_volume = tmp_path / "ledger-volume"
    ledger_volume.mkdir()
    ledger_volume.chmod(0o2777)
    env = router_env(shared_tmp, ROUTER_LEDGER_SQL_PATH=str(ledger_volume / "ledger.sqlite3"))
    with running(env):
        pass
    assert mode(ledger_volume / "ledger.sqlite3") == 0o600
    # A persistent volume for the outbox and the ledger, mounted again: the group may read and write each file.
    volume = tmp_path / "volume"
    (volume / "outbox").mkdir(parents=True)
    volume.chmod(0o2775)
    (volume / "outbox").chmod(0o2770)
    (volume / "outbox" / "charges-outbox.jsonl").write_text("")
    (ledger_volume / "ledger.sqlite3").rename(volume / "ledger.sqlite3")
    for path in (volume / "outbox" / "charges-outbox.jsonl", volume / "ledger.sqlite3"):
        path.chmod(0o660)
    settings = {"ROUTER_DATA_DIR": str(volume / "outbox"), "ROUTER_LEDGER_SQL_PATH": str(volume / "ledger.sqlite3")}
    with running(router_env(shared_tmp, **settings)):
        pass


def test_files_a_version_before_left_on_a_volume_are_made_private_not_refused(shared_tmp: Path, tmp_path: Path) -> None:
    """A version before made the outbox, its rewrites and its dead letters as the umask had it (0644), and the SQLite
    ledger before that too: an operator's volume holding them must not keep every router of the upgrade from starting.
    They are this user's and nobody else could write them: taken, and no longer readable by others."""
    volume = tmp_path / "volume"
    (volume / "outbox").mkdir(parents=True)
    before = os.umask(0o022)
    try:  # as the version before made them
        (volume / "outbox" / "charges-outbox.jsonl").touch()
        (volume / "outbox" / "charges-outbox.dead.jsonl").write_text("a line cut short by a crash\n")
        sqlite3.connect(volume / "ledger.sqlite3").close()
    finally:
        os.umask(before)
    made = [volume / "outbox" / "charges-outbox.jsonl", volume / "outbox" / "charges-outbox.dead.jsonl"]
    made.append(volume / "ledger.sqlite3")
    assert {mode(path) for path in made} == {0o644}
    settings = {"ROUTER_DATA_DIR": str(volume / "outbox"), "ROUTER_LEDGER_SQL_PATH": str(volume / "ledger.sqlite3")}
    with running(router_env(shared_tmp, **settings)):
        pass
    assert {mode(path) for path in made} == {0o640}  # the group is the operator's (fsGroup)


def without_proc() -> list[str]:
    """A command prefix running a process where /proc is an empty directory, as in a chroot or a sandbox without it
    (a mount namespace of its own: root's, or an unprivileged user namespace's); where neither may be made, a skip
    (a failure in CI)."""
    for unshare in (["unshare", "--mount", "--propagation", "private"], ["unshare", "--map-root-user", "--mount"]):
        prefix = [*unshare, "sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "sh"]
        try:
            made = subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
        except FileNotFoundError:  # no unshare
            break
        if made:
            return prefix
    missing("hiding /proc takes a mount namespace: root, or unprivileged user namespaces")


@pytest.mark.parametrize(
    ("setting", "command", "refusal"),
    [
        ("ROUTER_DATA_DIR", "services.router", "refused for the charge outbox"),
        ("ROUTER_LEDGER_SQL_PATH", "services.ledger", "refused for the ledger"),
    ],
)
def test_without_proc_a_file_others_may_read_is_refused_saying_how_to_mend_it(
    shared_tmp: Path, tmp_path: Path, setting: str, command: str, refusal: str
) -> None:
    """It is made private through its checked descriptor's link in /proc; with no /proc the start refuses it, as before
    files others may read were taken, naming the remedy, rather than fail on a path in /proc."""
    volume = tmp_path / "volume"
    volume.mkdir()
    path = volume / ("charges-outbox.jsonl" if command == "services.router" else "ledger.sqlite3")
    path.touch()
    path.chmod(0o644)  # as a version before left it
    configured = volume if command == "services.router" else path
    args = ["trim", "--days", "1"] if command == "services.ledger" else []
    started = subprocess.run(
        [*without_proc(), sys.executable, "-m", command, *args],
        cwd=ROOT,
        env=router_env(shared_tmp, **{setting: str(configured)}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0 and "READY" not in started.stdout, started.stderr
    said = f"{setting}={configured} {refusal}: {path} is readable by others (mode 0644), and without /proc it cannot"
    assert said in started.stderr and "chmod o-rwx it" in started.stderr, started.stderr
    assert "Traceback" not in started.stderr and mode(path) == 0o644, started.stderr


@pytest.mark.parametrize(
    ("setting", "made", "problem"),
    [
        ("ROUTER_DATA_DIR", "directory", "is writable by others (mode 0777)"),
        ("ROUTER_LEDGER_SQL_PATH", "file", "is writable by others (mode 0646)"),
    ],
)
def test_a_configured_path_others_may_use_is_refused_at_start(
    shared_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, made: str, problem: str
) -> None:
    path = tmp_path / "volume" / "router"
    if made == "directory":
        path.mkdir(parents=True)
        path.chmod(0o777)
    else:
        path.parent.mkdir()
        path.write_bytes(b"")
        path.chmod(0o646)  # others may write it: they could have made it what they like
    said = refused_at_start(shared_tmp, monkeypatch, **{setting.removeprefix("ROUTER_").lower(): path})
    assert f"{setting}={path}" in said and f"{path} {problem}" in said, said


async def test_the_outbox_files_a_replay_rewrites_stay_private(tmp_path: Path) -> None:
    """A replay replaces the outbox file and appends to the dead-letter file: both made readable by their owner only,
    whatever the umask, or the next start would refuse them."""
    data = tmp_path / "data"
    outbox = Outbox(data)
    with outbox.path.open("a", encoding="utf-8") as file:
        file.write("a line cut short by a crash\n")  # dead-lettered at once
    store = MemoryStore()
    before = os.umask(0o022)
    try:
        await outbox.replay(store)
    finally:
        os.umask(before)
        await store.close()
    assert outbox.dead_letters() == ["a line cut short by a crash"]
    assert (mode(outbox.path), mode(outbox.dead_path)) == (0o600, 0o600)
    Outbox(data)  # taken at the next start
