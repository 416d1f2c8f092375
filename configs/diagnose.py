"""Checkpoint diagnostics (`python -m mtssl.eval.diagnose`).

    python -m mtssl.eval.diagnose --config=configs/diagnose.py --workdir=runs/local

`--workdir` is the run to diagnose; the report goes to
`<workdir>/diagnose_<step>.json` and a summary to the console.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"unknown preset {arg!r}; configs/diagnose.py has none")
    c = ml_collections.ConfigDict()
    c.num_images = 64           # held-out scenes and real images to measure on
    c.num_photo_crops = 240     # photos-probe training crops for the features section
    c.step = -1                 # checkpoint step; -1: the latest
    return c
