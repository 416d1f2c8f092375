"""Pretraining entry point.

    python -m mtssl.main --config=configs/pretrain.py:runlocal --workdir=runs/local
    python -m mtssl.main --config=configs/pretrain.py --workdir=runs/paper \\
        --config.real.source=tfds:places365_small

Running the same command again resumes from the newest checkpoint in
--workdir. SIGTERM or SIGINT (preemption, Ctrl-C) saves a checkpoint at the
next step boundary and exits with status 128 + the signal number. Any config field can be overridden with --config.<field>=<value>.

Several processes train one model data-parallel over all their devices
(the multi-process flags of `mtssl.cli`: --coordinator_address=HOST:PORT
--num_processes=N --process_id=i, or --distributed). The workdir must be a
path every process sees (shared file system or GCS).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtssl import cli, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (e.g. configs/pretrain.py[:runlocal]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, TensorBoard and images.")
cli.define_distributed_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    cli.initialize_distributed()
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.Preempted as e:
        logging.warning("%s", e)
        print(e, flush=True)
        sys.exit(128 + e.signum)      # what a shell reports for a signal


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
