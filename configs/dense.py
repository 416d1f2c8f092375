"""Dense evaluation of a pretraining run (`python -m mtssl.eval.dense`).

    python -m mtssl.eval.dense --config=configs/dense.py --workdir=runs/local
    python -m mtssl.eval.dense --config=configs/dense.py --workdir=runs/paper \\
        --config.num_images=654 --config.nyu=True      # all 654 NYUv2 validation images

`--workdir` is the run to evaluate; the result goes to
`<workdir>/eval_<step>.json`. The evaluation sets are the run's own
(`mtssl.eval.dense.eval_sets`).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"unknown preset {arg!r}; configs/dense.py has none")
    c = ml_collections.ConfigDict()
    c.num_images = 256          # held-out scenes (and NYU images) per set
    c.step = -1                 # checkpoint step; -1: the latest
    c.nyu = False               # also NYU Depth v2 (TFDS nyu_depth_v2), whatever eval.nyu says
    c.batch_size = 16           # rounded up to a multiple of the device count
    return c
