"""The conftest guard that makes every in-process test fail on network access."""

import socket

import pytest


def test_connections_outside_the_loopback_fail_the_test():
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)   # TEST-NET-1
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        socket.create_connection(server.getsockname(), timeout=1).close()
