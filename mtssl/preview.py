"""Writes a PNG contact sheet of scenes: image | depth | normals | contours.

    python -m mtssl.preview --num 16 --out previews/
    python -m mtssl.preview --num 8 --resolution 227 --seed 3 --out previews/
    python -m mtssl.preview --config configs/scenes.py:paper --num 8 --out previews/
    python -m mtssl.preview --folder /data/my_synthetic --num 8 --out previews/

--resolution and --seed override the config's values when given.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image

from mtssl.config import load_config_file
from mtssl.data import on_disk, synthetic, visualize


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(prog="python -m mtssl.preview",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=16, help="number of scenes")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default=None,
                        help="scene config file, e.g. configs/scenes.py[:preset]")
    parser.add_argument("--resolution", type=int, default=None, help="default 128")
    parser.add_argument("--seed", type=int, default=None, help="default 0")
    parser.add_argument("--start", type=int, default=0, help="first record index")
    parser.add_argument("--per-row", type=int, default=2, help="scenes per row")
    parser.add_argument("--folder", default=None,
                        help="preview an on-disk synthetic dataset instead")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error("--num must be >= 1")

    indices = np.arange(args.start, args.start + args.num)
    if args.folder:
        source = on_disk.SyntheticFolder(root=args.folder,
                                         resolution=args.resolution or 128)
        samples = [source[int(i) % len(source)] for i in indices]
    else:
        config = load_config_file(args.config).to_dict() if args.config else {}
        for key in ("resolution", "seed"):
            if getattr(args, key) is not None:
                config[key] = getattr(args, key)
        source = synthetic.from_config(config)
        batch = source.render_batch(indices)
        samples = [{k: v[i] for k, v in batch.items()} for i in range(args.num)]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "contact_sheet.png"
    Image.fromarray(visualize.contact_sheet(samples, per_row=args.per_row)).save(path)
    print(f"wrote {path} ({args.num} scenes from {source!r})")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
