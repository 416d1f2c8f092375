"""Helpers shared by the benchmark scripts in experiments/."""

from __future__ import annotations

import json
import os
import pathlib
import resource
import shlex
import subprocess
import sys
import time

import jax
import numpy as np
from _machine import cpu_machine, machine_label  # noqa: F401 (re-exported)

from mtssl.config import load_config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]


def machine() -> dict:
    return cpu_machine() | {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
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


def printable(command: list[str]) -> str:
    """A command as one shell line, with `python` for this interpreter."""
    return shlex.join(["python" if part == sys.executable else part for part in command])


def run_logged(command: list[str], log: pathlib.Path) -> float:
    """Runs `command` in the repository with its output in `log`; its
    seconds. A failure raises, naming the command and the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        result = subprocess.run(command, check=False, cwd=ROOT, stdout=f,
                                stderr=subprocess.STDOUT)
    if result.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}); see {log}")
    return time.perf_counter() - start


def result_of(command: list[str], workdir: pathlib.Path, name: str) -> dict:
    """`workdir/name` (a JSON result), running `command` first unless it
    exists; its log goes beside the workdir as `<workdir name>.log` (the name
    appended, not swapped: "lr0.001" keeps its ".001")."""
    if not (workdir / name).exists():
        run_logged(command, workdir.parent / f"{workdir.name}.log")
    return json.loads((workdir / name).read_text())


def spread_cell(values: list[float], scale: float, digits: int, signed: bool = False) -> str:
    """A table cell: the value, or mean +- half the max-min range over seeds."""
    if not values:
        return "–"
    v = np.asarray(values) * scale
    sign = "+" if signed else ""
    if len(v) == 1:
        return f"{v[0]:{sign}.{digits}f}"
    return f"{v.mean():{sign}.{digits}f} ± {(v.max() - v.min()) / 2:.{digits}f}"
