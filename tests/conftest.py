"""Shared fixtures. Rendering compiles once per (config, batch size), so the
expensive renders are session-scoped and reused across test files.

The tests and the subprocesses they start share one persistent XLA
compilation cache (a temporary directory of this session): end-to-end tests
run the same small programs in several processes, and a cache hit runs the
very same executable, so results are unchanged.
"""

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile

_CACHE = tempfile.mkdtemp(prefix="mtssl-test-xla-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)   # before jax is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mtssl.data import SyntheticScenes  # noqa: E402

RES = 64
SEED = 7


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing may reach the network at run time (only the loopback, which
    the distributed and notebook tests use): any other connection fails the test."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def checked(method):
        def guarded(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    local = ipaddress.ip_address(address[0]).is_loopback
                except ValueError:                  # a host name: never resolved here
                    local = address[0] == "localhost"
                if not local:
                    raise AssertionError(f"network access during a test: {address}")
            return method(sock, address)
        return guarded

    monkeypatch.setattr(socket.socket, "connect", checked(connect))
    monkeypatch.setattr(socket.socket, "connect_ex", checked(connect_ex))


@pytest.fixture(scope="session")
def source() -> SyntheticScenes:
    return SyntheticScenes(resolution=RES, seed=SEED, num_records=1000)


@pytest.fixture(scope="session")
def batch(source) -> dict[str, np.ndarray]:
    """Twelve rendered scenes, records 0..11."""
    return source.render_batch(np.arange(12))
