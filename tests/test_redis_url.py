"""What shows of a Redis URL (llmrouter/redis_url.py): its password never, where it points always; a URL that could
not be opened as meant is refused, by connect() too, without quoting it (urllib's and redis-py's errors do)."""

from __future__ import annotations

import pytest

from llmrouter.redis_connect import connect, node_url
from llmrouter.redis_url import check, redacted

SHOWN = {
    "redis://:s3cret@money:6379/0": "redis://:***@money:6379/0",
    "rediss://router:s3cret@money.example:6380/2": "rediss://router:***@money.example:6380/2",
    "redis://s3cret@money:6379": "redis://***@money:6379",  # a password without its colon: masked whole
    "redis://:s3:cr@et@money:6379": "redis://:***@money:6379",  # ":" and "@" need no escaping: the last @ ends it
    "redis+cluster://:s3cret@node-a:6379,node-b:6379": "redis+cluster://:***@node-a:6379,node-b:6379",
    "rediss+cluster://u:s3cret@[::1]:7000": "rediss+cluster://u:***@[::1]:7000",
    "redis://money:6379/0?password=s3cret&socket_timeout=5": "redis://money:6379/0?password=***&socket_timeout=5",
    "unix://:s3cret@/run/redis.sock?db=1": "unix://:***@/run/redis.sock?db=1",
    "redis://money:6379/0": "redis://money:6379/0",
    # An "@" after the host part is a password's only where a password is: in its parameter, or in a socket's path.
    "redis://money:6379/0?password=s3@cret": "redis://money:6379/0?password=***",
    "unix:///run/redis@1/redis.sock": "unix:/run/redis@1/redis.sock",
    "unix://:s3cret@/run/redis@1/redis.sock": "unix://:***@/run/redis@1/redis.sock",
}
# Each cut where its user did not mean it to, by a password holding an unescaped / ? or #, or left without a host.
BROKEN = [
    "redis://:s3/cret@money:6379/0",
    "redis://:s3?cret@money:6379/0",
    "redis://:s3#cret@money:6379/0",
    "redis://u:12/34@money",  # host "u", port 12, and "34@money" as the database
    # A user name and a password of digits up to its ? or #: host "default", port 12, and the rest a query or fragment
    "redis://default:12?s3cret@money:6379/0",
    "redis://default:12#s3cret@money:6379/0",
    "redis://default:12?s3=cret@money:6379/0",
    "redis+cluster://default:12#s3cret@node-a:6379",
    "unix://:s3/cret@/run/redis.sock",  # "s3" as the host, the socket's path "/cret@/run/redis.sock"
    "redis://:s3cret",
    "redis+cluster://:s3/cret@node-a:6379",
    "http://:s3cret@money:6379",
]


@pytest.mark.parametrize(("url", "shown"), SHOWN.items())
def test_the_password_is_masked_and_the_rest_shown(url: str, shown: str) -> None:
    check(url)
    assert redacted(url) == shown


@pytest.mark.parametrize("url", BROKEN)
def test_a_url_its_password_broke_is_refused_and_shown_by_no_piece(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        check(url)
    assert "s3" not in str(refused.value) and "cret" not in str(refused.value)
    assert redacted(url) == "(an invalid Redis URL)"
    with pytest.raises(ValueError) as refused:
        connect(url)
    assert "s3" not in str(refused.value) and "cret" not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__context__ is None  # no chained error quoting it


@pytest.mark.parametrize(
    ("url", "host", "node"),
    [
        ("redis+cluster://a:1,b:2", "10.0.0.7", "redis://10.0.0.7:7000/0"),
        ("rediss+cluster://router:p%2Fss@a:1,b:2", "10.0.0.7", "rediss://router:p%2Fss@10.0.0.7:7000/0"),
        ("redis+cluster://:secret@[::1]:1", "::1", "redis://:secret@[::1]:7000/0"),
    ],
)
def test_a_cluster_nodes_url_keeps_its_credentials_and_tls(url: str, host: str, node: str) -> None:
    """key_move's wait for replicas (services/router/store/replicated.py) connects to each master by such a URL."""
    assert node_url(url, host, 7000) == node
    check(node)
