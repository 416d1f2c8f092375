"""Pretraining entry point.

    python -m mtssl.main --config=configs/pretrain.py:runlocal --workdir=runs/local
    python -m mtssl.main --config=configs/pretrain.py --workdir=runs/paper \\
        --config.real.source=tfds:places365_small

Running the same command again resumes from the newest checkpoint in
--workdir. Any config field can be overridden with --config.<field>=<value>.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from mtssl import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (e.g. configs/pretrain.py[:runlocal]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, TensorBoard and images.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
