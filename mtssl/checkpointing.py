"""Checkpoints of a training run; every Orbax call of mtssl lives here.

A checkpoint is one step directory under `<workdir>/checkpoints/` with three
items: `state` (the TrainState pytree, restored onto the shardings of an
abstract target), `data` (the grain iterator position, per process) and
`config` (JSON, for humans and for evaluation scripts that rebuild the
network). Orbax writes into a temporary directory and renames it when the
save is complete, so an interrupted save never shadows the previous
checkpoint; `latest_step` only sees finished ones.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath


class RunCheckpoints:
    """Saves and restores (state, data iterator, config) under one directory."""

    def __init__(self, directory: str | epath.Path, *, keep: int = 3,
                 async_save: bool = True):
        # Orbax's tensorstore backend needs an absolute path.
        self.directory = epath.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True, enable_async_checkpointing=async_save,
                preservation_policy=ocp.checkpoint_managers.LatestN(keep)))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None,
             config: ml_collections.ConfigDict) -> None:
        """Starts writing checkpoint `step` (asynchronously by default)."""
        items = {"state": ocp.args.StandardSave(state),
                 "config": ocp.args.JsonSave(config.to_dict())}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, abstract_state: Any, data_iterator: Any | None = None,
                step: int | None = None) -> Any | None:
        """The state of checkpoint `step` (default: the latest), laid out as
        `abstract_state` (ShapeDtypeStructs with shardings); moves
        `data_iterator` to the saved position. None if there is none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def config(self, step: int | None = None) -> ml_collections.ConfigDict:
        """The config a checkpoint was written with."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return ml_collections.ConfigDict(restored["config"])

    def wait(self) -> None:
        """Blocks until pending saves are on disk (raises their errors)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def abstract_with_sharding(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings to restore onto."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, shardings)
