"""The experiment scripts' tables: numbers in, the right cells out."""

import os
import sys
import types

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import scale_curve  # noqa: E402
from _common import spread_cell  # noqa: E402


def test_spread_cell_is_mean_and_half_range():
    assert spread_cell([], 100, 1) == "–"
    assert spread_cell([0.781], 100, 1) == "78.1"
    assert spread_cell([0.70, 0.80], 100, 1) == "75.0 ± 5.0"
    assert spread_cell([1.25, -0.25], 1, 1, signed=True) == "+0.5 ± 0.8"


def test_scale_curve_table_gives_best_layers_and_the_gap_to_random():
    def row(seed, step, dataset, acc):
        return {"seed": seed, "step": step, "dataset": dataset, "commands": [f"cmd {step}"],
                "accuracy": dict(zip(scale_curve.LAYERS, acc))}
    rows = [row(0, 0, "photos", [0.5, 0.7, 0.6, 0.6, 0.6]),
            row(1, 0, "photos", [0.5, 0.6, 0.8, 0.6, 0.6]),
            row(0, 300, "photos", [0.5, 0.6, 0.6, 0.9, 0.6]),
            row(1, 300, "photos", [0.5, 0.6, 0.6, 0.6, 0.8])]
    assert scale_curve.best(rows, 300, "photos") == [0.9, 0.8]
    args = types.SimpleNamespace(preset="runlocal", pretrain_override=[])
    info = {"date": "2026-12-02", "machine": {"processor": "cpu", "cpu_count": 2,
                                              "jax": "0"}}
    table = scale_curve.markdown(rows, args, info)
    # Best layers 0.9 / 0.8 against random 0.7 / 0.8, seed by seed: +20 and 0.
    assert "| 0 | 75.0 ± 5.0 | – |" in table
    assert "| 300 | 85.0 ± 5.0 | +10.0 ± 10.0 |" in table
    assert "| 300 | 50.0 ± 0.0 | 60.0 ± 0.0 | 60.0 ± 0.0 | 75.0 ± 15.0 | 70.0 ± 10.0 |" in table
    assert "cmd 300" in table
