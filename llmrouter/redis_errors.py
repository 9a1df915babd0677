"""Which Redis errors are the store's own state rather than a command's, for every Redis client of the product, on
one server or a Redis Cluster alike: the store out of reach, or refusing commands for a reason of its own (the same
for every call, none of them the caller's fault). The rest (WRONGTYPE, a script's own error reply, a command whose
keys span two slots) are errors of the call itself."""

from __future__ import annotations

import enum
import re

import redis.exceptions as errors


class StoreFailure(enum.Enum):
    UNREACHABLE = "out of reach"  # no connection, a timeout, a password changed, loading its data, a cluster lost
    READ_ONLY = "read-only"  # a demoted primary (READONLY)
    DENIED = "denying this client's user (ACL)"  # NOPERM: an ACL change
    FULL = "full (OOM under noeviction)"
    REFUSING = "refusing commands"  # unable to persist, short of replicas, or busy with a long script


# A store refusing commands for a reason of its own, as redis-py words it: the reply itself, or a pipeline's
# "Command # 1 (...) of pipeline caused error: ('MISCONF ...',)" (the reply's args in the text; redis-py 8.2 and later
# give the reply bare, "caused error: MISCONF ..."). redis-py raises
# these as bare ResponseErrors (the replies it knows, READONLY, OOM, LOADING, MASTERDOWN, TRYAGAIN, CLUSTERDOWN,
# have classes of their own).
_REFUSING = re.compile(r"(?:^|caused error: (?:\(['\"])?)(?:MISCONF|NOREPLICAS|BUSY) ")
# An ACL denying a command a script runs, as Redis 7.0 words it: a bare ERR, where 7.2 and later reply NOPERM (a
# NoPermissionError). The scripts ask before their writes (services/router/store/lua.py, _PERMITTED), not before their
# reads: a read denied (say PEXPIRETIME, which CHARGE reads of a marker it meets) is the store denying this user too.
_SCRIPT_DENIED = re.compile(r"(?:^|caused error: (?:\(['\"])?)The user executing the script can't run this command")
# A Redis Cluster whose layout the client cannot learn, as redis-py words it: no node answers (its retry of a command
# that met a dropped connection rediscovers the layout first, outside the errors it maps), or the nodes that do leave
# slots uncovered or disagree. A bare RedisClusterException, as are the client's refusals of a command it cannot route
# (keys of two slots: a bug, the call's own fault), which these are told from.
_CLUSTER_LOST = re.compile(
    r"^(?:Redis Cluster cannot be connected|All slots are not covered|startup_nodes could not agree)"
)
_UNREACHABLE = (
    errors.ConnectionError,  # AuthenticationError and BusyLoadingError (LOADING) among them
    errors.TimeoutError,
    errors.ClusterError,  # ClusterDownError, MasterDownError, and "TTL exhausted" (redirected too many times)
    errors.TryAgainError,
    errors.SlotNotCoveredError,
    OSError,
)


def store_failure(exc: BaseException) -> StoreFailure | None:
    """What `exc`, raised by a Redis client's call, says of the store; None when it is the call's own error."""
    if isinstance(exc, _UNREACHABLE):
        return StoreFailure.UNREACHABLE
    if isinstance(exc, errors.ReadOnlyError):
        return StoreFailure.READ_ONLY
    if isinstance(exc, errors.NoPermissionError) or (
        isinstance(exc, errors.ResponseError) and _SCRIPT_DENIED.search(str(exc))
    ):
        return StoreFailure.DENIED
    if isinstance(exc, errors.OutOfMemoryError):
        return StoreFailure.FULL
    if isinstance(exc, errors.RedisClusterException):
        return StoreFailure.UNREACHABLE if _CLUSTER_LOST.search(str(exc)) else None
    if isinstance(exc, errors.ResponseError) and _REFUSING.search(str(exc)):
        return StoreFailure.REFUSING
    return None
