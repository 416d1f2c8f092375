"""The shared command line of the evaluation scripts: --config FILE[:arg] and --workdir."""

from __future__ import annotations

from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags


def run_config_command(run: Callable[..., object], config_help: str,
                       workdir_help: str = "Output directory.") -> None:
    """Defines --config and --workdir (only when called: modules stay importable
    by tests) and runs `run(config, workdir)` under absl."""
    config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.INFO)
        run(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(main)
