"""A router's code from an earlier commit, run beside this one's against one money store, as in a rolling upgrade."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.ci import missing


def checkout(commit: str, into: Path) -> Path:
    """The commit's services and llmrouter packages, extracted into `into`."""
    repo = Path(__file__).resolve().parents[2]
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "services", "llmrouter"], capture_output=True)
    if archive.returncode:
        missing(f"commit {commit} is not in this checkout (a shallow clone?): the upgrade test runs its code")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


async def run(tree: Path, script: str, *args: str) -> str:
    """A Python script run on the old code alone (none of this checkout's on its path); its output."""
    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, *args],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr[-600:]
    return ran.stdout.strip()


@asynccontextmanager
async def serving(tree: Path, script: str, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[str]:
    """A Python script run on the old code alone, kept running while the block runs (a server of the version before):
    its first line of output (its port, say). Its stdin closes at the block's end: the script's cue to stop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().strip()
        if not first:
            raise AssertionError((await process.stderr.read())[-600:].decode())
        yield first
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
