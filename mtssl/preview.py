"""Writes a PNG contact sheet of scenes: image | depth | normals | contours |
semantic classes.

    python -m mtssl.preview --config=configs/preview.py --workdir=previews
    python -m mtssl.preview --config=configs/preview.py:paper --workdir=previews \\
        --config.num=8 --config.scenes.seed=3
    python -m mtssl.preview --config=configs/preview.py --workdir=previews \\
        --config.folder=/data/my_synthetic

Scenes come from the scene engine (`config.scenes`, the fields of
configs/scenes.py) or, with `config.folder`, from an on-disk synthetic dataset.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from mtssl.cli import run_config_command
from mtssl.data import on_disk, synthetic, visualize


def validate(config) -> None:
    """Bad values fail before anything is rendered."""
    for key in ("num", "per_row"):
        if config[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    if config.start < 0:
        raise ValueError(f"start must be >= 0, got {config.start}")


def run(config, workdir: str) -> pathlib.Path:
    """Writes `<workdir>/contact_sheet.png` of `config.num` scenes from
    record `config.start` on; returns its path."""
    validate(config)
    indices = np.arange(config.start, config.start + config.num)
    if config.folder:
        source = on_disk.SyntheticFolder(root=config.folder,
                                         resolution=config.scenes.resolution)
        samples = [source[int(i) % len(source)] for i in indices]
    else:
        source = synthetic.from_config(config.scenes.to_dict())
        batch = source.render_batch(indices)
        samples = [{k: v[i] for k, v in batch.items()} for i in range(config.num)]
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "contact_sheet.png"
    Image.fromarray(visualize.contact_sheet(samples, per_row=config.per_row)).save(path)
    print(f"wrote {path} ({config.num} scenes from {source!r})", flush=True)
    return path


if __name__ == "__main__":
    run_config_command(run, "Preview config (configs/preview.py).",
                       "Output folder (gets contact_sheet.png).")
