"""Pieces every training loop here shares (pretraining in `mtssl.train`,
fine-tuning in `mtssl.eval.finetune`): step counts and the "is it time"
cadence, metric means fetched once per log step, the finite check that
keeps the last good checkpoint, the preemption guard with the save
bookkeeping around it (`SavingLoop`) and the console line.
"""

from __future__ import annotations

import ctypes
import math
import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def say(line: str) -> None:
    """A progress line on the console (process 0 only)."""
    if jax.process_index() == 0:
        print(line, flush=True)


def itstime(step: int, every: int, total: int | None = None) -> bool:
    """Whether something done every `every` steps is due at `step`, or at
    the final step `total` (as big_vision's `itstime`); never when `every`
    <= 0."""
    if every <= 0:
        return False
    return step % every == 0 or step == total


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def console_line(step: int, total: int, metrics: dict[str, float], images_per_s: float,
                 eta_s: float) -> str:
    parts = [f"step {step:>{len(str(total))}}/{total} ({100 * step / total:3.0f}%)",
             f"loss {metrics['g_loss']:.4f}"]
    parts += [f"{k.removeprefix('loss/')} {v:.4f}" for k, v in metrics.items()
              if k.startswith("loss/")]
    if "d_loss" in metrics:
        parts.append(f"D {metrics['d_loss']:.3f} acc {metrics['d_accuracy']:.2f}")
    parts += [f"{images_per_s:.1f} img/s", f"ETA {_format_duration(eta_s)}"]
    return " | ".join(parts)


def mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    fetched = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in fetched])) for k in fetched[0]}


def release_free_host_memory() -> None:
    """Returns freed heap memory to the operating system (glibc's
    malloc_trim; elsewhere nothing happens). Compiling the paper network's
    step leaves ~400 MB of freed compiler memory in the process, which would
    otherwise stay in its peak resident memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def check_finite(metrics: dict[str, float], step: int, last_good: int | None) -> None:
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        where = (f"the last good checkpoint (step {last_good}) is kept"
                 if last_good is not None else "no checkpoint was written")
        raise FloatingPointError(
            f"non-finite {', '.join(bad)} in the steps up to {step}; stopping; {where}")


def num_train_steps(config, synthetic_len: int) -> tuple[int, int]:
    """(total steps, steps per epoch); an epoch is one pass over the
    synthetic source."""
    steps_per_epoch = max(1, synthetic_len // config.batch_size)
    if config.num_steps > 0:
        return int(config.num_steps), steps_per_epoch
    return max(1, math.ceil(config.num_epochs * steps_per_epoch)), steps_per_epoch


class Preempted(Exception):
    """The run stopped on a signal after saving checkpoint `step`."""

    def __init__(self, signum: int, step: int | None):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {step} "
                         "saved; run the same command to resume")
        self.signum, self.step = signum, step


class PreemptionGuard:
    """SIGTERM / SIGINT (preemption, Ctrl-C) -> save a checkpoint at the next
    step boundary and stop. In one process through our own handlers; across
    processes through JAX's preemption sync point, so every process stops at
    the same step (its own handlers catch the signal)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:     # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning("%s received: saving a checkpoint after this step",
                        signal.Signals(signum).name)

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = signal.SIGTERM
        return self.signum is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class SavingLoop:
    """The checkpoint bookkeeping of a preemptible training loop.

    Inside `with SavingLoop(checkpoints) as saving:` SIGTERM/SIGINT only ask
    for a stop (`saving.stop_requested(step)`: save at this step boundary and
    leave the loop); `saving.save(...)` writes a checkpoint and records it as
    `last_good` (where a non-finite loss points the user; the newest restored
    checkpoint at first); `saving.finish()` after the loop waits for pending
    saves and raises `Preempted` if a signal stopped the run. Leaving the
    block, however, restores the signal handlers and closes `checkpoints`.
    """

    def __init__(self, checkpoints):
        self.checkpoints = checkpoints
        self.last_good = checkpoints.latest_step()
        self._guard: PreemptionGuard | None = None

    def __enter__(self) -> "SavingLoop":
        self._guard = PreemptionGuard()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._guard.close()
        finally:
            self.checkpoints.close()

    def stop_requested(self, step: int) -> bool:
        return self._guard.requested(step)

    def save(self, step: int, state: Any, data_iterator: Any, config: Any) -> None:
        self.checkpoints.save(step, state, data_iterator, config)
        self.last_good = step

    def finish(self) -> None:
        self.checkpoints.wait()
        if self._guard.signum is not None:
            raise Preempted(self._guard.signum, self.last_good)
