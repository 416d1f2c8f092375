"""Checkpoints survive failed saves: a save killed or failing midway leaves
the previous checkpoint loadable, and resuming picks the newest complete one."""

import errno
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtssl.checkpointing import RunCheckpoints

CONFIG = ml_collections.ConfigDict({"seed": 0})


def state(scale: float):
    return {"w": jnp.arange(1000.0) * scale, "b": jnp.full((8, 8), scale)}


def assert_restores(directory, step, scale):
    with RunCheckpoints(directory) as ckpt:
        assert ckpt.latest_step() == step and ckpt.all_steps()[-1] == step
        restored = ckpt.restore(jax.eval_shape(lambda: state(1.0)))
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state(scale))):
        np.testing.assert_array_equal(got, want)


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path):
    # Step 1 is saved; step 2's save is SIGKILLed when all its files are
    # written and only its commit (the rename of the temporary directory) is
    # left: the latest moment a crash can hit. Hooked inside Orbax (private
    # API, test only) so the timing is exact.
    script = textwrap.dedent(f"""
        import os, signal
        from orbax.checkpoint._src.path import atomicity
        from test_checkpointing import CONFIG, state
        from mtssl.checkpointing import RunCheckpoints
        finalize = atomicity.AtomicRenameTemporaryPath.finalize
        async def finalize_or_die(self):
            if self.get_final().name == "2":
                os.kill(os.getpid(), signal.SIGKILL)
            await finalize(self)
        atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
        with RunCheckpoints({str(tmp_path)!r}) as ckpt:
            ckpt.save(1, state(1.0), None, CONFIG)
            ckpt.wait()
            ckpt.save(2, state(2.0), None, CONFIG)
            ckpt.wait()
    """)
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=tests),
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith("2.")]
    assert {p.name for p in partial.iterdir()} >= {"state", "config"}
    assert_restores(tmp_path, 1, 1.0)
    with RunCheckpoints(tmp_path) as ckpt:       # and the next save of step 2 works
        ckpt.save(2, state(2.0), None, CONFIG)
        ckpt.wait()
    assert_restores(tmp_path, 2, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def test_a_save_failing_with_a_full_disk_raises_and_keeps_the_previous_one(
        tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import atomicity

    with RunCheckpoints(tmp_path) as ckpt:
        ckpt.save(1, state(1.0), None, CONFIG)
        ckpt.wait()

    async def disk_full(self):          # as writing the commit marker would fail
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
    with pytest.raises(OSError, match="No space left"):
        with RunCheckpoints(tmp_path) as ckpt:
            ckpt.save(2, state(2.0), None, CONFIG)
            ckpt.wait()
    monkeypatch.undo()
    assert_restores(tmp_path, 1, 1.0)
