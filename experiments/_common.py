"""Helpers shared by the benchmark scripts in experiments/."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import resource

import jax

from mtssl.config import load_config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_config(spec: str):
    """'configs/pretrain.py:runlocal' (relative to the repository) -> its config."""
    return load_config_file(ROOT / spec)


def write_rows(rows: list[dict], out: str) -> None:
    """Writes benchmark rows as a JSON list (creating the folder)."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {out}")
