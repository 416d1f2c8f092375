"""Scale-out on JAX's own engine: two processes on this machine
(`jax.distributed` over localhost, gloo collectives on CPU) train one model
data-parallel and write one checkpoint that a single process can load, and
run the linear probes over both processes' devices."""

import json
import os
import socket
import subprocess

import jax
import numpy as np
import pytest
from helpers import ROOT, TINY, command, probe_config, tiny_config, write_toy_folder

from mtssl.eval import linear_probe
from mtssl.eval.dense import evaluate_checkpoint
from mtssl.pretrained import load_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(module: str, config: str, workdir, overrides: dict) -> list[str]:
    """`python -m module` in two processes on localhost; their outputs."""
    port = free_port()
    procs = [subprocess.Popen(
        [*command(workdir, overrides, module, config),
         f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i}:\n{out[-4000:]}"
        assert f"process {i} of 2, 1 local / 2 global devices" in out
    return outputs


def test_two_processes_train_and_checkpoint(tmp_path):
    overrides = {**TINY, "num_steps": 2, "log.every_steps": 1,
                 "log.images_every_steps": 0, "eval.every_steps": 2}
    outputs = run_two_processes("mtssl.main", "configs/pretrain.py:runlocal", tmp_path,
                                overrides)
    # Only process 0 logs; the evaluation ran on both processes' devices.
    assert "step 2/2 (100%)" in outputs[0] and "step 2/2" not in outputs[1]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert np.isfinite(rows[-1]["g_loss"]) and rows[0]["g_loss"] != rows[1]["g_loss"]
    # Each process saved its own data-iterator position.
    data = tmp_path / "checkpoints" / "2" / "data"
    assert sorted(p.name for p in data.glob("process_*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    # A single process with other devices loads it (pretrained.load_run).
    config, _, state, step = load_run(tmp_path)
    assert step == 2 and config.batch_size == tiny_config().batch_size
    assert int(state.step) == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.g_params)))
    # ...and it is the state both processes evaluated at step 2: the held-out
    # scores of the single process equal the logged ones.
    again = evaluate_checkpoint(str(tmp_path), num_images=TINY["eval.num_images"], step=2,
                                batch_size=TINY["batch_size"])
    for key in ("eval/depth/abs_rel", "eval/normals/mean_deg", "eval/contours/f"):
        assert again[key] == pytest.approx(rows[-1][key], rel=1e-5), key


def test_two_processes_run_the_linear_probes_as_one_does(tmp_path):
    write_toy_folder(tmp_path / "toy")
    overrides = {"dataset": f"imagefolder:{tmp_path / 'toy'}", "checkpoint": "",
                 "epochs": 2}
    single = linear_probe.run(probe_config(**overrides), str(tmp_path / "one"))
    flags = {"model.width": 0.125, "image_size": 64, "batch_size": 16,
             "learning_rate": 1e-2, "layers": ("conv1", "conv3", "conv5"), **overrides}
    outputs = run_two_processes("mtssl.eval.linear_probe", "configs/linear_probe.py",
                                tmp_path / "two", flags)
    # Both processes fetched every feature and trained the same probes;
    # process 0 wrote them, with the single process's scores.
    assert "| conv5 |" in outputs[0] and "| conv5 |" not in outputs[1]
    saved = json.loads((tmp_path / "two" / "probe.json").read_text())
    assert set(saved) == set(single) == {"conv1", "conv3", "conv5"}
    for layer, r in single.items():
        np.testing.assert_allclose(saved[layer]["accuracy"], r["accuracy"], atol=0.05)
        assert saved[layer]["dims"] == r["dims"]
