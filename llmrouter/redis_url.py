"""Redis URLs as settings: they carry the store's password (`redis://:password@host`, `rediss://user:password@host`,
or `?password=` in the query), so a URL setting is a RedisUrl, shown with its password masked (repr, str, the
settings' repr) and revealed only where a client is built (llmrouter.redis_connect.connect).

A malformed URL is refused when the settings are read (and by connect()), by a message that never quotes it, where
urllib's and redis-py's errors would: a password holding an unescaped `/`, `?` or `#` ends the host part early, and
its first piece is then read, and quoted, as the port; after a user name and digits, the port parses and the rest,
password and all, is a query or fragment, so an @ past the host part is refused too (but in a password parameter's
value). The settings quote no secret's input in their errors either (llmrouter/settings.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import GetCoreSchemaHandler, SecretStr
from pydantic_core import core_schema

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
MASK = "***"
# Why a URL can be refused that was meant right: a password holding these ends the host part early, or is decoded.
_ESCAPE_HINT = " (a password holding / ? # or % must be percent-encoded: / is %2F, % is %25)"


def check(url: str) -> None:
    """Raise ValueError unless `url` is a Redis URL connect() can open. The message never quotes the URL."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()  # as urllib reads it
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"a Redis URL starts with {', '.join(f'{s}://' for s in SCHEMES)}")
    parts = urlsplit(url)
    if _user_info_cut(parts):
        raise ValueError(f"an @ follows the host part{_ESCAPE_HINT}")
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// Redis URL names the socket's path")
        return
    if scheme in CLUSTER_SCHEMES:
        cluster_addresses(parts.netloc.rpartition("@")[2])
    else:
        if not _port_parses(parts):
            raise ValueError(f"the port is not a number from 0 to 65535{_ESCAPE_HINT}")
        if not parts.hostname:
            raise ValueError(f"the URL names no host{_ESCAPE_HINT}")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError(f"the path is not a database number (/0){_ESCAPE_HINT}")


def _port_parses(parts: SplitResult) -> bool:
    """Whether urllib reads a port (or none): its error quotes what it read, so it is never raised, not even as the
    context of ours."""
    try:
        parts.port  # noqa: B018  # parsed on reading
    except ValueError:
        return False
    return True


def _user_info_cut(parts: SplitResult) -> bool:
    """Whether an @ follows the host part: the end of a user info that a password's unescaped / ? or # ended early.
    Past a user name and a password of digits up to its ? or #, the host and port parse (the user name and the
    digits) and the rest, password and all, is a query or fragment that nothing else refuses. An @ is a password's
    there only in its parameter's value, or in a socket's path after no user info or a whole one."""
    fields = [field for field in parts.query.split("&") if not _is_password(field)]
    cut_path = parts.scheme == "unix" and parts.netloc and "@" not in parts.netloc
    return "@" in parts.fragment or any("@" in field for field in fields) or bool(cut_path and "@" in parts.path)


def _is_password(parameter: str) -> bool:
    name, equals, _ = parameter.partition("=")
    return bool(equals) and "pass" in name.lower()


def cluster_addresses(addresses: str) -> list[tuple[str, int]]:
    """The nodes of a Redis Cluster URL's `host:port[,host:port...]` (after its `user:password@`)."""
    nodes = []
    for address in addresses.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a Redis Cluster URL lists host:port pairs{_ESCAPE_HINT}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def redacted(url: str) -> str:
    """`url` to show (a log line, a message, a repr): its password masked, the user name kept when it has one
    (`redis://user:***@host:6379/0`); an invalid URL, which could hold its password anywhere, is not shown."""
    try:
        check(url)
    except ValueError:
        return "(an invalid Redis URL)"
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if at:  # `secret@host` (redis-py's user name, or a password put there without its colon) is masked whole
        user, colon, _ = credentials.partition(":")
        parts = parts._replace(netloc=f"{user}:{MASK}@{hosts}" if colon else f"{MASK}@{hosts}")
    query = "&".join(_masked_parameter(parameter) for parameter in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(query=query))


def _masked_parameter(parameter: str) -> str:
    return f"{parameter.partition('=')[0]}={MASK}" if _is_password(parameter) else parameter


class RedisUrl(SecretStr):
    """A Redis URL setting: checked when read (check()), shown with its password masked (redacted()); the URL itself
    only by get_secret_value(), which connect() calls."""

    def _display(self) -> str:  # pydantic's hook for repr() and str() of a secret (JSON shows '**********')
        return redacted(self.get_secret_value()) if self.get_secret_value() else ""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: type[Any], handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            _checked, super().__get_pydantic_core_schema__(source, handler)
        )


def _checked(url: RedisUrl) -> RedisUrl:
    if url.get_secret_value():  # empty: unset, as before (an in-process store)
        check(url.get_secret_value())
    return url


def revealed(url: str | SecretStr) -> str:
    return url.get_secret_value() if isinstance(url, SecretStr) else url
