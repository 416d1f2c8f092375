"""The shared command line of the entry points: --config FILE[:arg] with
--config.<field>=<value> overrides, --workdir, the multi-process flags and
absl's --verbosity (default: warnings only; our progress lines are printed),
and --compile_cache, the persistent XLA compilation cache every command
shares: a rerun, another seed or an evaluation of a program compiled before
loads the executable instead of compiling it (the very same program, so the
same bits), which also spares the compiler's transient memory.
A run stopped by SIGTERM/SIGINT after saving (`loop.Preempted`) exits with
status 128 + the signal, as a shell reports it.

Several processes (multi-host GPU, TPU pods, or several processes on one
machine) run one program over all their devices: the same command in every
process with --coordinator_address=HOST:PORT (process 0's address),
--num_processes=N and --process_id=i, or with --distributed where JAX
detects the cluster itself (TPU pods, SLURM, Open MPI).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mtssl.loop import Preempted


def define_distributed_flags() -> None:
    """--distributed, --coordinator_address, --num_processes, --process_id."""
    flags.DEFINE_bool("distributed", False,
                      "jax.distributed.initialize() with cluster auto-detection.")
    flags.DEFINE_string("coordinator_address", None,
                        "HOST:PORT of process 0 (multi-process runs).")
    flags.DEFINE_integer("num_processes", None, "Processes in the run.")
    flags.DEFINE_integer("process_id", None, "This process's index.")


def default_compile_cache() -> str:
    """JAX's own JAX_COMPILATION_CACHE_DIR where set, else mtssl/xla in the
    user's cache folder ($XDG_CACHE_HOME or ~/.cache)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mtssl", "xla")


# Least recently used entries go beyond this. Any limit also makes JAX lock the
# cache's files (with `filelock`), so that concurrent runs never read an entry
# another is still writing; runlocal's programs take about 1 MB each.
COMPILE_CACHE_MAX_BYTES = 2 << 30


def enable_compile_cache(path: str) -> None:
    """Persistent XLA compilation cache in `path` ("" = off)."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    if jax.config.jax_compilation_cache_max_size == -1:     # not set by the user
        jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)


def initialize_distributed() -> None:
    """Starts jax.distributed when the flags ask for several processes."""
    f = flags.FLAGS
    if f.coordinator_address is None and not f.distributed:
        return
    if jax.config.jax_platforms in ("cpu", None) or "cpu" in str(jax.config.jax_platforms):
        # Cross-process collectives on CPU need an implementation (no-op elsewhere).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes, process_id=f.process_id)
    print(f"process {jax.process_index()} of {jax.process_count()}, "
          f"{jax.local_device_count()} local / {jax.device_count()} global devices",
          flush=True)


def run_config_command(run: Callable[..., object], config_help: str,
                       workdir_help: str = "Output directory.") -> None:
    """Defines --config, --workdir and the multi-process flags (only when
    called: modules stay importable by tests) and runs `run(config, workdir)`
    under absl, in every process of a multi-process run."""
    config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.DEFINE_string("compile_cache", default_compile_cache(),
                        "Folder of the persistent XLA compilation cache shared by every "
                        "command ('' = off): programs compiled before are loaded, not "
                        "compiled again.")
    define_distributed_flags()
    flags.mark_flags_as_required(["config", "workdir"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        set_default_verbosity()
        enable_compile_cache(flags.FLAGS.compile_cache)
        initialize_distributed()
        try:
            run(flags.FLAGS.config, flags.FLAGS.workdir)
        except Preempted as e:
            logging.warning("%s", e)
            print(e, flush=True)
            sys.exit(128 + e.signum)      # what a shell reports for a signal

    app.run(main)


def set_default_verbosity() -> None:
    """Warnings and errors only, unless --verbosity (absl's flag) is given:
    the console then shows our own progress lines, not the libraries' INFO
    logging (Orbax writes hundreds of lines per run); --verbosity=0 brings
    it back."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
