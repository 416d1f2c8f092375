"""Shared fixtures. Rendering compiles once per (scene, render) config, so the
expensive renders are session-scoped and reused across test files, and so is
one tiny pretraining run (`tiny_run`), which the probe, fine-tuning,
evaluation, predictor and notebook tests read instead of training their own.

The tests and the subprocesses they start share one
persistent XLA compilation cache and one render cache (temporary directories
of this session): end-to-end tests run the same small programs on the same
scenes in several processes, a compilation cache hit runs the very same
executable and a render cache hit reads the very same bits
(tests/test_render.py), so results are unchanged.
"""

import atexit
import fcntl
import json
import os
import shutil
import socket
import tempfile

if "PYTEST_XDIST_WORKER" not in os.environ:     # the controller: workers inherit it
    _CACHE = tempfile.mkdtemp(prefix="mtssl-test-xla-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)   # before jax is imported
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    # A size limit turns on JAX's file lock around cache reads and writes:
    # without it one process can read an entry another is still writing.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
    # helpers.TINY's scenes: rendered once per session, not once per run.
    _RENDERS = tempfile.mkdtemp(prefix="mtssl-test-render-cache-")
    atexit.register(shutil.rmtree, _RENDERS, ignore_errors=True)
    os.environ["MTSSL_TEST_RENDER_CACHE"] = _RENDERS
    # LLVM at -O0 for the test programs: the same XLA programs, compiled
    # faster; the tests' programs are small, so compiling, not running, is
    # their cost (whole suite on 2 AMD EPYC cores, 2026-12-08: 8 min 42 s at
    # -O1 without the render cache, 6 min 12 s at -O0 with it). Users' runs
    # keep XLA's default.
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import ROOT, TINY, command, loopback_only, run_command  # noqa: E402

from mtssl.data import SyntheticScenes  # noqa: E402

RES = 64
SEED = 7


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing may reach the network at run time (only the loopback, which
    the distributed and notebook tests use): any other connection fails the
    test before it is attempted."""
    monkeypatch.setattr(socket.socket, "connect", loopback_only(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", loopback_only(socket.socket.connect_ex))


@pytest.fixture(scope="session")
def source() -> SyntheticScenes:
    return SyntheticScenes(resolution=RES, seed=SEED, num_records=1000)


@pytest.fixture(scope="session")
def batch(source) -> dict[str, np.ndarray]:
    """Twelve rendered scenes, records 0..11."""
    return source.render_batch(np.arange(12))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(workdir, stdout) of `python -m mtssl.main` on the runlocal preset
    with helpers.TINY: 2 steps, a checkpoint, metrics, events, a prediction
    grid. Made once per test session (under pytest-xdist, the first worker
    to ask makes it and the others wait for it). Read-only: copy it to
    change it."""
    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent
    workdir, done = shared / "tiny_run", shared / "tiny_run.json"
    with open(shared / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            # A relative workdir must work.
            proc = run_command(command(os.path.relpath(workdir, ROOT), TINY))
            done.write_text(json.dumps({"stdout": proc.stdout}))
    return workdir, json.loads(done.read_text())["stdout"]
