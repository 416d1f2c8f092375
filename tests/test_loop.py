"""The loop toolkit both training loops share (mtssl.loop): the save and
preemption bookkeeping, exercised with a real signal and a recording
checkpoint store (the full runs are in test_train_resume/test_finetune)."""

import os
import signal

import pytest

from mtssl.loop import Preempted, SavingLoop, check_finite, itstime


class RecordingCheckpoints:
    """The RunCheckpoints interface, recording calls."""

    def __init__(self, latest=None):
        self.latest, self.saved, self.calls = latest, [], []

    def latest_step(self):
        return self.latest

    def save(self, step, state, data_iterator, config):
        self.saved.append(step)

    def wait(self):
        self.calls.append("wait")

    def close(self):
        self.calls.append("close")


def run_loop(checkpoints, steps, save_every, signal_at=None):
    """A loop written as train.py writes it; returns the steps it ran."""
    ran = []
    with SavingLoop(checkpoints) as saving:
        for step in range(1, steps + 1):
            ran.append(step)
            if step == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            stop = saving.stop_requested(step)
            check_finite({"loss": 1.0}, step, saving.last_good)
            if itstime(step, save_every, steps) or stop:
                saving.save(step, None, None, None)
            if stop:
                break
        saving.finish()
    return ran


def test_a_full_loop_saves_on_cadence_waits_and_closes():
    checkpoints = RecordingCheckpoints()
    before = signal.getsignal(signal.SIGTERM)
    assert run_loop(checkpoints, steps=7, save_every=3) == list(range(1, 8))
    assert checkpoints.saved == [3, 6, 7]               # the final step always saves
    assert checkpoints.calls == ["wait", "close"]
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_sigterm_saves_at_the_step_boundary_and_raises_preempted():
    checkpoints = RecordingCheckpoints(latest=2)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match="SIGTERM; checkpoint 5 saved") as info:
        run_loop(checkpoints, steps=100, save_every=50, signal_at=5)
    assert info.value.signum == signal.SIGTERM and info.value.step == 5
    assert checkpoints.saved == [5]
    assert checkpoints.calls == ["wait", "close"]       # the save finished first
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_error_in_the_loop_still_closes_and_names_the_last_good_checkpoint():
    checkpoints = RecordingCheckpoints(latest=40)
    with pytest.raises(FloatingPointError, match=r"non-finite loss.*step 40\) is kept"):
        with SavingLoop(checkpoints) as saving:
            check_finite({"loss": float("nan"), "depth": 0.1}, 45, saving.last_good)
    assert checkpoints.calls == ["close"]               # nothing half-saved is waited on


def test_itstime_cadence():
    assert [s for s in range(1, 11) if itstime(s, 4, 10)] == [4, 8, 10]
    assert not any(itstime(s, 0, 10) for s in range(1, 11))
