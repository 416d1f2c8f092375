"""Pretraining entry point.

    python -m mtssl.main --config=configs/pretrain.py:runlocal --workdir=runs/local
    python -m mtssl.main --config=configs/pretrain.py --workdir=runs/paper \\
        --config.real.source=tfds:places365_small

Running the same command again resumes from the newest checkpoint in
--workdir. SIGTERM or SIGINT (preemption, Ctrl-C) saves a checkpoint at the
next step boundary and exits with status 128 + the signal number. Any config field can be overridden with --config.<field>=<value>.

Several processes (multi-host GPU, TPU pods, or several processes on one
machine) train one model data-parallel over all their devices: run the same
command in every process with --coordinator_address=HOST:PORT (process 0's
address), --num_processes=N and --process_id=i, or with --distributed where
JAX detects the cluster itself (TPU pods, SLURM, Open MPI). The workdir must
be a path every process sees (shared file system or GCS).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mtssl import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (e.g. configs/pretrain.py[:runlocal]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, TensorBoard and images.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "jax.distributed.initialize() with cluster auto-detection.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize_distributed() -> None:
    """Starts jax.distributed when the flags ask for several processes."""
    if _COORDINATOR.value is None and not _DISTRIBUTED.value:
        return
    if jax.config.jax_platforms in ("cpu", None) or "cpu" in str(jax.config.jax_platforms):
        # Cross-process collectives on CPU need an implementation (no-op elsewhere).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    initialize_distributed()
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.Preempted as e:
        logging.warning("%s", e)
        print(e, flush=True)
        sys.exit(128 + e.signum)      # what a shell reports for a signal


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
