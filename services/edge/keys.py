"""Client API keys: which tenant a bearer key belongs to.

The edge stores SHA-256 digests, never keys: one entry per line (or comma-separated in EDGE_API_KEYS),
`<tenant> <sha256 hex of the key>`, `#` starts a comment. Neither part can contain a separator, so the
format holds for any key (base64 padding `=`, commas, spaces). A third word `admin` makes an admin key: it sees
every tenant's stats and budgets and sets budget overrides. `python -m services.edge.keys TENANT` reads a key
on stdin and prints its line (`--help` says how); it refuses a key past ASCII, which the edge reads (as UTF-8) but
OpenAI's Python SDK cannot send."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import sys

from llmrouter.setting_entries import bare_entry

TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"[0-9a-fA-F]{64}")
# What an HTTP header's value cannot hold (RFC 9110: controls but the tab), so no Authorization header carries it.
UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
EMPTY_KEY_DIGEST = hashlib.sha256(b"").hexdigest()
ADMIN_ROLE = "admin"
TENANT_RULE = "a tenant is 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Tenants by key digest. Lookups compare the presented key's digest with every entry in constant time."""

    def __init__(self, entries: list[tuple[bytes, str]], admins: frozenset[bytes] = frozenset()) -> None:
        self.entries = entries
        self.admins = admins
        # Asked for every active batch at each adoption pass, and before each line a batch sends: a lookup, not a pass
        # over the entries. A ring is never changed (a reload of the key file builds a new one), so this never goes
        # stale.
        self.key_ids = frozenset((known.hex()[:16], tenant) for known, tenant in entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def tenant_for(self, key: str) -> str | None:
        if not key:
            return None
        presented = digest(key)
        found = None
        for known, tenant in self.entries:  # no early exit: the time does not depend on which entry matched
            if hmac.compare_digest(presented, known):
                found = tenant
        return found

    def serves(self, tenant: str, key_id: str) -> bool:
        """Whether a key of `tenant` whose id (the router's: its digest's first 16 hex digits) is `key_id` is here."""
        return (key_id, tenant) in self.key_ids

    def is_admin(self, key: str) -> bool:
        presented = digest(key) if key else b""
        return any([hmac.compare_digest(presented, known) for known in self.admins])  # a list: no early exit


def parse_keys(text: str) -> KeyRing:
    """One entry per line; raises ValueError naming the line (1-based) that is not `<tenant> <sha256 hex>`."""
    return parse_key_entries([(f"line {number}", line) for number, line in enumerate(text.splitlines(), 1)])


def parse_key_entries(entries: list[tuple[str, str]]) -> KeyRing:
    """(where, entry) pairs, each placed as an operator finds it (`EDGE_API_KEYS_FILE line 3`); a ValueError names the
    place of an entry refused, never its digest."""
    by_digest: dict[bytes, tuple[str, str]] = {}
    admins = set()
    for place, entry in entries:
        line = bare_entry(entry)
        if not line:
            continue
        parts = line.split()
        role = parts.pop() if len(parts) == 3 and parts[2] == ADMIN_ROLE else ""
        if len(parts) == 2 and DIGEST.fullmatch(parts[1]) and not TENANT.fullmatch(parts[0]):
            raise ValueError(f"{place}'s tenant is refused: {TENANT_RULE}")  # the shape is right: say what is not
        if len(parts) != 2 or not TENANT.fullmatch(parts[0]) or not DIGEST.fullmatch(parts[1]):
            raise ValueError(f"{place} is not '<tenant> <sha256 hex of the key> [admin]'")
        tenant, hex_digest = parts[0], parts[1].lower()
        if hex_digest == EMPTY_KEY_DIGEST:
            raise ValueError(f"{place} is the digest of the empty key")
        known = bytes.fromhex(hex_digest)
        first, first_place = by_digest.setdefault(known, (tenant, place))
        if first != tenant:
            raise ValueError(f"{place} gives a key already given to another tenant, {first!r} ({first_place})")
        if role:
            admins.add(known)
    return KeyRing([(known, tenant) for known, (tenant, _) in by_digest.items()], frozenset(admins))


def key_line(tenant: str, key: str) -> str:
    if not TENANT.fullmatch(tenant):
        raise ValueError(TENANT_RULE)
    if not key:
        raise ValueError("the key is empty")
    return f"{tenant} {digest(key).hex()}"


def tenant_argument(text: str) -> str:
    if not TENANT.fullmatch(text):
        raise argparse.ArgumentTypeError(TENANT_RULE)
    return text


def main(argv: list[str] | None = None) -> int:
    """Bad arguments, or no usable key on stdin, are a usage error (status 2), never a traceback."""
    parser = argparse.ArgumentParser(
        prog="python -m services.edge.keys",
        description="Print the key file line (<tenant> <sha256 hex of the key>) for the API key read on stdin; "
        "add the word admin after it for an admin key.",
        epilog="example: python -m services.edge.keys acme < key-file >> api-keys.txt",
    )
    parser.add_argument("tenant", type=tenant_argument, help="the tenant the key belongs to")
    args = parser.parse_args(argv)
    try:  # utf-8-sig: a byte order mark an editor began the key file with is the file's, not the key's
        # Blanks a key file's line may end with, no more: any other character at either end is the key's, refused below.
        key = sys.stdin.buffer.read().decode("utf-8-sig").strip(" \t\r\n")
    except UnicodeDecodeError:
        parser.error("the key on stdin is not UTF-8")
    if not key:
        parser.error("the key on stdin is empty")
    if UNSENDABLE.search(key):  # the edge's HTTP server refuses such a header (400): its line would open nothing
        parser.error("the key on stdin has a control character (a line break, NUL...): no client can send it")
    if not key.isascii():  # the edge reads such a key (as UTF-8), but OpenAI's Python SDK fails before sending it
        parser.error(
            "the key on stdin has a character past ASCII: OpenAI's Python SDK (httpx), and other clients that send"
            " headers as ASCII, cannot send it; issue a key of ASCII characters"
        )
    print(key_line(args.tenant, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
