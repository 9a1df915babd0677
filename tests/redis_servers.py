"""Real redis-server processes on free ports, started by a test: the money store and the cache with the
eviction policies a deployment gives them, stopped and restarted mid-test to play an outage."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis


class RedisServer:
    def __init__(self, workdir: Path, *args: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        self.process = subprocess.Popen([*command, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def info(self, section: str) -> dict:
        client = redis.Redis(port=self.port)
        try:
            return client.info(section)
        finally:
            client.close()


def money_redis(workdir: Path) -> RedisServer:
    """As the money store must be: never evicting, persisted with AOF (so a restart keeps every counter)."""
    return RedisServer(workdir, "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction")


def cache_redis(workdir: Path, maxmemory: str = "2mb") -> RedisServer:
    return RedisServer(workdir, "--save", "", "--maxmemory", maxmemory, "--maxmemory-policy", "allkeys-lru")
