"""The conftest guard that makes every in-process test fail on network access.

No packet can leave here: the guard is checked around a stand-in for the
real `connect`, and the real one is only used on the loopback."""

import socket

import pytest
from helpers import loopback_only


def test_the_guard_refuses_other_addresses_before_connecting():
    calls = []
    guarded = loopback_only(lambda sock, address: calls.append(address) or 0)
    with socket.socket() as sock, socket.socket(socket.AF_INET6) as sock6:
        for address in (("192.0.2.1", 80), ("10.0.0.1", 443), ("example.org", 80)):
            with pytest.raises(AssertionError, match="network access"):
                guarded(sock, address)
        with pytest.raises(AssertionError, match="network access"):
            guarded(sock6, ("2001:db8::1", 80, 0, 0))
        assert calls == []                    # refused before the call
        for address in (("127.0.0.1", 80), ("localhost", 80), ("127.8.9.1", 1)):
            assert guarded(sock, address) == 0
        assert guarded(sock6, ("::1", 80, 0, 0)) == 0
    assert calls == [("127.0.0.1", 80), ("localhost", 80), ("127.8.9.1", 1),
                     ("::1", 80, 0, 0)]


def test_the_guard_is_installed_and_the_loopback_works():
    for name in ("connect", "connect_ex"):
        method = getattr(socket.socket, name)
        # The guard, around the C implementation of the socket type.
        assert method.__wrapped__ is getattr(socket.socket.__mro__[1], name)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        socket.create_connection(server.getsockname(), timeout=1).close()
