"""Shared fixtures. Rendering compiles once per (config, batch size), so the
expensive renders are session-scoped and reused across test files.

The tests and the subprocesses they start share one persistent XLA
compilation cache (a temporary directory of this session): end-to-end tests
run the same small programs in several processes, and a cache hit runs the
very same executable, so results are unchanged.
"""

import atexit
import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="mtssl-test-xla-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)   # before jax is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mtssl.data import SyntheticScenes  # noqa: E402

RES = 64
SEED = 7


@pytest.fixture(scope="session")
def source() -> SyntheticScenes:
    return SyntheticScenes(resolution=RES, seed=SEED, num_records=1000)


@pytest.fixture(scope="session")
def batch(source) -> dict[str, np.ndarray]:
    """Twelve rendered scenes, records 0..11."""
    return source.render_batch(np.arange(12))
