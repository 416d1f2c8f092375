"""A render cache: each scene-engine record rendered once, stored, and read
back with the same bits.

Record i of a `SyntheticScenes` is a pure function of its configs, seed and i
(and of the renderer's code), so a render can be kept and reused by every
later run, seed and ablation variant that draws it. Layout:

    <root>/<fingerprint>/<i // 4096>/<i>.npz      uncompressed: the exact arrays

The fingerprint hashes the source's description (resolution, seed,
num_records, scene and render configs), the source code of the modules that
render, and the JAX version and backend (rounding may differ between them), so
another config, an edited renderer or another platform is another cache,
never a stale read. A record is written to a temporary name and renamed into place,
so concurrent readers and writers (grain threads, several processes) see a
whole file or none; a file that cannot be read is rendered again.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
import uuid
import zipfile

import jax
import numpy as np

from mtssl.data import geometry, render, scenes

_SHARD = 4096
# np.load parses each array header with ast.literal_eval, which is not thread
# safe in CPython 3.11 ("AST constructor recursion depth mismatch" under grain's
# reader threads, seen in an ablation run): one read at a time.
_READ_LOCK = threading.Lock()
# What turns (configs, seed, index) into a record; synthetic.py (which imports
# this module) by path.
_RENDER_CODE = tuple(pathlib.Path(m.__file__) for m in (geometry, render, scenes)) + (
    pathlib.Path(__file__).with_name("synthetic.py"),)


def fingerprint(description: str) -> str:
    """A short hash of a source description and the renderer's code."""
    digest = hashlib.sha256(f"{description}|jax {jax.__version__}|"
                            f"{jax.default_backend()}".encode())
    for path in _RENDER_CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class RenderCache:
    """get(index) -> the stored record or None; put(index, record)."""

    def __init__(self, root: str | os.PathLike, description: str):
        self.root = pathlib.Path(root) / fingerprint(description)

    def _path(self, index: int) -> pathlib.Path:
        return self.root / str(index // _SHARD) / f"{index}.npz"

    def get(self, index: int) -> dict[str, np.ndarray] | None:
        path = self._path(index)
        try:
            with _READ_LOCK, np.load(path, allow_pickle=False) as stored:
                return {k: stored[k] for k in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None     # absent, or half-written by a process that died

    def put(self, index: int, record: dict[str, np.ndarray]) -> None:
        path = self._path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
        np.savez(temporary, **record)
        os.replace(temporary, path)
