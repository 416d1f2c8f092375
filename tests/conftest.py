"""Shared fixtures. Rendering compiles once per (config, batch size), so the
expensive renders are session-scoped and reused across test files."""

import numpy as np
import pytest

from mtssl.data import SyntheticScenes

RES = 64
SEED = 7


@pytest.fixture(scope="session")
def source() -> SyntheticScenes:
    return SyntheticScenes(resolution=RES, seed=SEED, num_records=1000)


@pytest.fixture(scope="session")
def batch(source) -> dict[str, np.ndarray]:
    """Twelve rendered scenes, records 0..11."""
    return source.render_batch(np.arange(12))
