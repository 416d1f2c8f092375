"""Contact-sheet configs (`python -m mtssl.preview`): image | depth | normals |
contours | semantic classes.

    python -m mtssl.preview --config=configs/preview.py --workdir=previews
    python -m mtssl.preview --config=configs/preview.py:paper --workdir=previews --config.num=8
    python -m mtssl.preview --config=configs/preview.py --workdir=previews \\
        --config.scenes.resolution=227 --config.scenes.seed=3
    python -m mtssl.preview --config=configs/preview.py --workdir=previews \\
        --config.folder=/data/my_synthetic

`--workdir` is the output folder (it gets `contact_sheet.png`). The argument
after ':' is a `configs/scenes.py` preset (paper, fast, target); `scenes` holds
that file's fields, so every scene setting is an override.
"""

import pathlib

import ml_collections

from mtssl.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num = 16              # scenes on the sheet
    c.start = 0             # first record index
    c.per_row = 2           # scenes per row
    c.folder = ""           # an on-disk synthetic dataset instead of the scene engine
                            # (its frames are read at scenes.resolution)
    scenes = pathlib.Path(__file__).with_name("scenes.py")
    c.scenes = load_config_file(f"{scenes}:{arg}" if arg else scenes)
    return c
