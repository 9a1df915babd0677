"""The classifier's answers kept in the router, so a prompt seen again is routed without a classifier call.
Keyed by a digest of the tenant and the exact text the classifier reads, and the version of the model that scored
it: per tenant, as the response cache is, or how fast a free Decide answers would tell one tenant whether another
sent a prompt word for word in the last few thousand (a hit skips the classifier, whose answer takes ms). Within the
tenant, scoped as its response cache is (ROUTER_TENANT_CACHE_SCOPE, else ROUTER_CACHE_SCOPE): per API key where
that is `key`, so a key learns no more of its colleagues' prompts from the scores than from the answers. Bounded
(least recently used out first). A classifier answering with a new model version empties the cache, so no
score of an older model outlives the first answer of a new one by more than the requests already in flight."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

Scores = dict[str, float]


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def prompt_key(tenant: str, prompt: str, key: str | None = None) -> bytes:
    """The tenant's own key for a prompt (a tenant holds no NUL: admission refuses one); with an API key's id, that
    key's own, its parts JSON-encoded (which writes a NUL as an escape: never the text of a tenant-wide key)."""
    if key is None:
        return digest(f"{tenant}\0{prompt}")
    return digest(json.dumps([tenant, key, prompt]))


class ScoreCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.version = ""  # of the classifier's latest answer
        self._entries: OrderedDict[tuple[str, bytes], tuple[tuple[str, ...], tuple[float, ...]]] = OrderedDict()
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}  # one copy of each model list, shared

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> tuple[Scores, str] | None:
        """(scores, version) of the current model for this digest, if kept."""
        entry = self._entries.get((self.version, key))
        if entry is None:
            return None
        self._entries.move_to_end((self.version, key))
        names, values = entry
        return dict(zip(names, values, strict=True)), self.version

    def put(self, key: bytes, scores: Scores, version: str) -> None:
        if version != self.version:
            self._entries.clear()
            self._names.clear()
            self.version = version
        if self.max_entries <= 0:
            return
        names = tuple(scores)
        self._entries[(version, key)] = (self._names.setdefault(names, names), tuple(scores.values()))
        self._entries.move_to_end((version, key))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
