"""The edge's API keys in force, EDGE_API_KEYS_FILE re-read every EDGE_API_KEYS_RELOAD_S: a key taken out of the
file (revoked) is refused, and a key added served, without a restart. Kubelet updates a mounted Secret's files in place
(an atomic `..data` symlink swap) within about a minute of `kubectl edit secret`; read once at start, a revoked key
spent on until every edge pod was restarted.

The file's bytes are compared with the last read, so an unchanged file is never parsed again. A changed one is parsed
whole and swapped in at once (requests read the ring once, as they arrive: one in flight finishes on the ring it was
let in by); one that fails to parse (half-written, a key given to two tenants, unreadable, no regular file, past 8 MiB)
is refused, logged by the place of the entry refused (never a key or digest) and counted (llmrouter_edge_api_keys_valid
drops to 0, alert LLMRouterEdgeApiKeysInvalid) while the last good ring stays in force. EDGE_API_KEYS (inline) is
read once: its entries are in every ring.

Whether the edge has keys at all is fixed at start: an edge started keyed whose file loses every entry refuses every
key (it never falls back to serving anyone as the anonymous tenant), and one started without keys takes up none from
its file until restarted (its file refused meanwhile, so that an operator sees it)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from pathlib import Path

from prometheus_client import Counter, Gauge
from pydantic import SecretStr

from llmrouter.setting_entries import file_entries, setting_entries
from llmrouter.tasks import every
from llmrouter.tasks import stop as stop_task
from services.edge.keys import KeyRing, parse_key_entries

log = logging.getLogger("llmrouter.edge.keys")
VARIABLE = "EDGE_API_KEYS"
RELOADS = Counter(
    "llmrouter_edge_api_keys_reloads_total", "Changes of the API key file, by outcome (ok, invalid)", ["outcome"]
)
VALID = Gauge(
    "llmrouter_edge_api_keys_valid",
    "1 when the API key file in place is the one in force; 0 when it is refused and the last good keys are kept",
)
for _outcome in ("ok", "invalid"):  # each counted from 0, so that rate() sees the first
    RELOADS.labels(_outcome)
# Eight times the most a Secret holds (1 MiB): a file past it is no key file (a symlink led astray), and is refused
# before it is read whole into memory and parsed on the event loop.
MAX_FILE_BYTES = 8 << 20


def read_key_file(path: Path) -> bytes | None:
    """The file's bytes (at most MAX_FILE_BYTES + 1 of them); None when it cannot be read or is no regular file. Opened
    without blocking and looked at before it is read: a FIFO in its place held the event loop in open() until a writer
    came (every request waiting), then read as empty, revoking every key; a device (/dev/zero) was read for ever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:  # looked at before fdopen, which refuses a directory raising, the descriptor left open
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


class LiveKeys:
    """The key ring in force (`ring`, read once per request), reloaded from the key file when it changes."""

    def __init__(self, api_keys: SecretStr, path: Path | None, interval_s: float) -> None:
        self.path, self.interval_s = path, interval_s
        self._inline = setting_entries(VARIABLE, api_keys.get_secret_value(), None)
        text = path.read_bytes() if path is not None else b""
        self.ring = self._parse(text)
        self.keyed = bool(self.ring)
        self._seen = hashlib.sha256(text).digest()
        self._task: asyncio.Task[None] | None = None
        VALID.set(1)

    def check(self) -> bool:
        """Look at the file once: True when a new ring is now in force."""
        if self.path is None:
            return False
        text = read_key_file(self.path)
        digest = hashlib.sha256(text if text is not None else b"\0unreadable").digest()
        if digest == self._seen:
            return False
        self._seen = digest
        try:
            if text is None:
                raise ValueError(f"cannot read {VARIABLE}_FILE {self.path} as a regular file")
            if len(text) > MAX_FILE_BYTES:
                raise ValueError(f"{VARIABLE}_FILE {self.path} is larger than {MAX_FILE_BYTES >> 20} MiB")
            ring = self._parse(text)
            if ring and not self.keyed:
                raise ValueError("the edge started without API keys, serving one anonymous tenant: restart it")
        except ValueError as exc:  # its message names a place, never a key or digest (keys.parse_key_entries)
            RELOADS.labels("invalid").inc()
            VALID.set(0)
            log.error("new API key file refused; the keys in force stay", extra={"error": str(exc)})
            return False
        self.ring = ring
        RELOADS.labels("ok").inc()
        VALID.set(1)
        log.info("API keys reloaded", extra={"path": str(self.path), "keys": len(ring.entries)})
        return True

    def _parse(self, text: bytes) -> KeyRing:
        try:
            decoded = text.decode()
        except UnicodeDecodeError:
            raise ValueError(f"{VARIABLE}_FILE is not UTF-8") from None  # the error would quote the file's bytes
        return parse_key_entries(self._inline + file_entries(VARIABLE, decoded))

    def start(self) -> None:
        if self.path is not None:  # the keys in force keep serving when a round fails; the log says why
            watch = every(self.interval_s, self._round, log, "checking the API key file failed")
            self._task = asyncio.get_running_loop().create_task(watch)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _round(self) -> None:
        self.check()
