"""Helpers shared by the test files (configs, commands, toy data, checks).

Test files import from here, never from each other. Everything is small:
the configs are the smallest networks and images that still exercise every
code path, and they are the same across files so that compiled programs are
shared (in-process and, through the persistent XLA cache, across processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from PIL import Image

from mtssl import checkpointing, steps
from mtssl.config import defaults, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Pretraining: the runlocal preset shrunk to a 2-step run of 4 + 4 images.
TINY = {
    "image_size": 64, "batch_size": 4, "num_steps": 2,
    "synthetic.render.resolution": 72, "synthetic.render.num_records": 64,
    "synthetic.render.aa_samples": 0, "synthetic.render.shadows": False,
    "model.width": 0.125, "model.head_channels": 8, "model.disc_width": 0.0625,
    "optim.lr_decay_epochs": (), "optim.lr_decay_fractions": (), "da.pool_size": 4,
    "log.every_steps": 2, "log.images_every_steps": 4, "log.num_images": 2,
    "eval.every_steps": 2, "eval.num_images": 6,
    "checkpoint.every_steps": 2, "checkpoint.keep": 5,
    "data.grayscale": False,           # as runlocal; the grayscale path: test_pipeline
    "synthetic.reuse": 2,              # as runlocal
    # conftest's session render cache; the uncached path: test_render, test_pipeline
    "synthetic.render.cache_dir": os.environ.get("MTSSL_TEST_RENDER_CACHE", ""),
}


def set_path(config: ml_collections.ConfigDict, path: str, value) -> None:
    """config["a"]["b"] = value for path "a.b"."""
    *sections, key = path.split(".")
    node = config
    for s in sections:
        node = node[s]
    node[key] = value


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """The pretraining defaults with TINY and `overrides` ({"a.b": value})."""
    c = defaults()
    for path, value in {**TINY, **overrides}.items():
        set_path(c, path, value)
    return c


def step_config(**overrides) -> ml_collections.ConfigDict:
    """The paper's config with the tiny network, for the train step alone."""
    c = defaults()
    c.model.update(width=0.125, head_channels=8, disc_width=0.0625)
    c.optim.lr_decay_epochs = ()
    c.da.pool_size = 8
    for path, value in overrides.items():
        set_path(c, path, value)
    return c


def probe_config(**overrides) -> ml_collections.ConfigDict:
    """configs/linear_probe.py for the tiny network at 64 px."""
    c = load_config_file(os.path.join(ROOT, "configs/linear_probe.py"))
    c.model.width = 0.125
    c.image_size, c.batch_size, c.epochs = 64, 16, 8
    c.learning_rate = 1e-2
    c.layers = ("conv1", "conv3", "conv5")
    for key, value in overrides.items():
        set_path(c, key, value)
    return c


def command(workdir, overrides: dict, module: str = "mtssl.main",
            config: str = "configs/pretrain.py:runlocal") -> list[str]:
    """`python -m module --config=... --workdir=...` with config overrides
    (default: pretraining on the runlocal preset)."""
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
             for k, v in overrides.items()]
    return [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}",
            *flags]


def run_command(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `args` from the repository root on the CPU; fails the test with
    the output's tail if it exits non-zero."""
    proc = subprocess.run(args, check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def wait_for_row(proc, metrics, done, timeout=300):
    """Polls metrics.jsonl until done(last logged step) while `proc` runs."""
    deadline = time.monotonic() + timeout
    while True:
        rows = metrics.read_text().splitlines() if metrics.exists() else []
        if rows and rows[-1].endswith("}") and done(json.loads(rows[-1])["step"]):
            return json.loads(rows[-1])["step"]
        assert proc.poll() is None and time.monotonic() < deadline, rows[-1:]
        time.sleep(0.05)


def tensorboard_events(path) -> list[dict]:
    """An event file read by TensorBoard's own loader (the tensorboard
    package, a test dependency): one dict per event with `step`,
    `file_version`, `scalars` {tag: float} and `images` {tag: png bytes}.
    The loader checks every record's CRCs and stops at a corrupt one."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util
    events = []
    for event in EventFileLoader(str(path)).Load():
        out = {"step": event.step, "file_version": event.file_version, "scalars": {},
               "images": {}}
        for value in event.summary.value:
            array = tensor_util.make_ndarray(value.tensor)
            if value.metadata.plugin_data.plugin_name == "images":
                out["images"][value.tag] = array[2]      # [width, height, png]
            else:
                out["scalars"][value.tag] = float(array)
        events.append(out)
    return events


def restored_state(workdir, config, step):
    """The TrainState of checkpoint `step` of a run with `config`."""
    _, init = steps.create(config, config.image_size, jax.random.key(0), 16)
    abstract = jax.eval_shape(init, jax.random.key(0))
    with checkpointing.RunCheckpoints(workdir / "checkpoints") as ckpt:
        return ckpt.restore(abstract, step=step)


def assert_bit_identical(a, b):
    """Every leaf of two states equal, PRNG keys by their bits."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(x, y)


TOY_COLOURS = {"blue": (30, 60, 200), "red": (200, 50, 40)}


def write_toy_folder(root, n_per_class=24, size=40):
    """Two colour classes with noise and random brightness: linearly separable."""
    rng = np.random.default_rng(0)
    for label, colour in TOY_COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.clip(np.array(colour) * rng.uniform(0.6, 1.2)
                          + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / label / f"{i:03d}.png")


def loopback_only(connect):
    """`socket.connect`/`connect_ex` that raises AssertionError, before
    calling `connect`, for any internet address outside the loopback."""
    import functools
    import ipaddress
    import socket

    @functools.wraps(connect)
    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                local = ipaddress.ip_address(address[0]).is_loopback
            except ValueError:                  # a host name: never resolved here
                local = address[0] == "localhost"
            if not local:
                raise AssertionError(f"network access during a test: {address}")
        return connect(sock, address)
    return guarded
