"""A listener on port 0 across a name's addresses (localhost: 127.0.0.1 and ::1) takes the port the first address
drew for every other: when another process holds that port on a later address, the draw is reported as such (and
listening_sockets draws again) with nothing left bound, rather than ending the process as a taken port it was told."""

from __future__ import annotations

import socket

import pytest

from llmrouter.ports import PortTaken, bound_on_a_free_port, bound_on_one_port, host_addresses, listening_sockets
from tests.loopback import has_ipv6_loopback


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_port_taken_on_a_later_address_is_told_as_such_and_nothing_stays_bound() -> None:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as other:
        port = other.getsockname()[1]
        with pytest.raises(PortTaken) as taken:
            bound_on_one_port("localhost", host_addresses("localhost"), port)
        assert taken.value.later and taken.value.address == "::1" and taken.value.port == port
        with socket.create_server(("127.0.0.1", port)):  # the IPv4 socket bound before it was closed
            pass


def test_a_port_taken_on_the_first_address_is_no_draw_to_repeat() -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        with pytest.raises(PortTaken) as taken:
            bound_on_one_port("localhost", host_addresses("localhost"), port)
        assert not taken.value.later and taken.value.address == "127.0.0.1"


def test_localhost_on_port_0_listens_on_one_port_for_both_families() -> None:
    sockets = listening_sockets("test", "localhost", 0, "TEST_PORT")
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1
        assert {s.family for s in sockets} == (
            {socket.AF_INET, socket.AF_INET6} if has_ipv6_loopback() else {socket.AF_INET}
        )
    finally:
        for s in sockets:
            s.close()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_drawn_port_taken_on_a_later_address_is_drawn_again() -> None:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as other:
        port = other.getsockname()[1]
        sockets = bound_on_a_free_port("localhost", host_addresses("localhost"), (port, 0))
        try:
            assert {s.family for s in sockets} == {socket.AF_INET, socket.AF_INET6}
            assert len({s.getsockname()[1] for s in sockets}) == 1 and sockets[0].getsockname()[1] != port
        finally:
            for s in sockets:
                s.close()
        with pytest.raises(PortTaken) as taken:  # the last draw taken too: told as such
            bound_on_a_free_port("localhost", host_addresses("localhost"), (port, port))
        assert taken.value.later
