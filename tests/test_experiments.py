"""The experiment scripts' tables: numbers in, the right cells out."""

import json
import os
import subprocess
import sys
import types

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import _machine  # noqa: E402
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


def test_finetune_sweep_chooses_each_encoders_lr_on_val_and_reports_its_test():
    import finetune_sweep
    runs = [{"encoder": e, "seed": s, "lr": lr, "val_accuracy": v, "accuracy": t,
             "command": f"cmd {e} {s} {lr}", "selection_command": f"select {e} {s} {lr}"}
            for e, s, lr, v, t in [("random", 0, 0.001, 0.9, 0.8), ("random", 0, 0.01, 0.7, 0.95),
                                   ("pre", 0, 0.001, 0.6, 0.9), ("pre", 0, 0.01, 0.8, 0.85),
                                   ("pre", 1, 0.001, 0.5, 0.5), ("pre", 1, 0.01, 0.5, 0.6)]]
    chosen = finetune_sweep.select(runs)
    # By validation, never by test: random keeps 0.001 although 0.01 tests higher.
    assert chosen[("random", 0)]["lr"] == 0.001 and chosen[("pre", 0)]["lr"] == 0.01
    assert chosen[("pre", 1)]["lr"] == 0.001                  # a tie: the smaller lr
    info = {"date": "2026-12-03", "machine": {"processor": "cpu", "cpu_count": 2,
                                              "isa": [], "jax": "x"}}
    table = finetune_sweep.markdown(runs, info)
    assert "pre minus random init at the chosen lr (same seed): +5.0" in table
    assert "| pre | 55.0 ± 5.0 | 65.0 ± 15.0 |" in table        # the selection runs' val
    assert "select pre 0 0.01\ncmd pre 0 0.01" in table and "cmd pre 1" not in table
    assert finetune_sweep.parse_encoders("random,a=x{seed}") == {"random": "", "a": "x{seed}"}
    with pytest.raises(ValueError, match="name=checkpoint"):
        finetune_sweep.parse_encoders("runlocal")


def test_bench_torch_names_the_machine_without_jax():
    # bench_torch.py runs in a throwaway environment with torch and numpy only:
    # it must import, and describe the CPU, with JAX and mtssl unimportable.
    code = ("import sys, json; sys.modules['jax'] = None; sys.modules['mtssl'] = None; "
            f"sys.path.insert(0, {os.path.join(ROOT, 'experiments')!r}); "
            "import bench_torch, _machine; info = _machine.cpu_machine(); "
            "print(json.dumps([info, _machine.machine_label(info)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    info, label = json.loads(out)
    assert info["cpu_count"] == os.cpu_count() and info["processor"]
    assert set(info["isa"]) <= set(_machine.VECTOR_ISA)
    assert label == f"{info['processor']}, {os.cpu_count()} cores, " + (
        " ".join(info["isa"]) or "ISA unknown")


def test_machine_label_names_the_accelerator():
    # A GPU row must never read as a CPU figure: the label names the device kind.
    cpu = {"processor": "AMD EPYC", "cpu_count": 16, "isa": ["avx2"]}
    assert _machine.machine_label(cpu | {"backend": "cpu"}) == "AMD EPYC, 16 cores, avx2"
    gpu = cpu | {"backend": "gpu", "devices": ["cuda:0"], "device_kind": "NVIDIA H100 80GB HBM3"}
    assert _machine.machine_label(gpu) == "AMD EPYC, 16 cores, avx2, 1 x NVIDIA H100 80GB HBM3"


def test_seed_effects_splits_an_additive_table_exactly():
    import numpy as np
    import seed_effects
    recipe, seed = np.array([0.0, 1.0, -0.5]), np.array([2.0, -1.0, 0.5, -1.5])
    gaps = 0.8 + recipe[:, None] + seed[None, :]
    split = seed_effects.decompose(gaps)
    assert split["residual_sd"] < 1e-12
    np.testing.assert_allclose(split["seed_means"], 0.8 + recipe.mean() + seed)
    np.testing.assert_allclose(split["seed_sd"], np.std(seed, ddof=1))
    bumped = gaps.copy()
    bumped[0, 0] += 1.2        # one run off its recipe + seed prediction by d
    # One cell off by d in an R x S table leaves residuals whose squares sum to
    # d^2 (R-1)(S-1) / (RS), so over (R-1)(S-1) degrees of freedom sd = d / sqrt(RS).
    assert np.isclose(seed_effects.decompose(bumped)["residual_sd"], 1.2 / np.sqrt(12))
    with pytest.raises(ValueError, match="at least 2 recipes"):
        seed_effects.decompose(gaps[:1])
