"""Encoder export (`python -m mtssl.export`): BatchNorm folded, plain .npz.

    python -m mtssl.export --config=configs/export.py --workdir=runs/local
    python -m mtssl.export --config=configs/export.py --workdir=runs/local \\
        --config.out=/tmp/encoder.npz

`--workdir` is the run (or checkpoint folder) to export.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"unknown preset {arg!r}; configs/export.py has none")
    c = ml_collections.ConfigDict()
    c.out = ""                  # output .npz path; "": <workdir>/encoder.npz
    return c
