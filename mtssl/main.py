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

from mtssl import cli, train

if __name__ == "__main__":
    cli.run_config_command(
        train.train_and_evaluate,
        "Training config file (e.g. configs/pretrain.py[:runlocal]).",
        "Directory for checkpoints, metrics, TensorBoard and images.")
