"""The run's clock on a fake time source: compilation and evaluation left out of the pace, images/s,
the ETA, and what a resumed session takes over."""

import pytest

from bridgegap_jax.run.clock import Clock, hms


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_pace_leaves_out_compilation_and_evaluation():
    time = FakeTime()
    clock = Clock(now=time)
    assert clock.eta(10, 1) is None  # no pace yet
    time.now += 30  # the first call of the step: tracing and compilation, before it returns
    clock.count(16)
    for _ in range(3):
        time.now += 2
        clock.count(16)
    time.now += 2  # the device finishes the window's last step
    assert clock.tick() == 4 * 16 / 8  # 4 steps in 8 s; the 30 s of compilation are not in it
    with clock.paused():
        time.now += 5  # a validation
    assert clock.eval_s == 5
    time.now += 1  # a step after the validation: the window does not count the 5 s
    clock.count(16)
    assert clock.tick() == 16.0
    assert (clock.train_s, clock.train_steps) == (9.0, 5)
    assert clock.eta(10, 2) == pytest.approx(10 * 9 / 5 + 2 * 5)
    assert clock.elapsed() == 30 + 8 + 5 + 1


def test_a_resumed_session_goes_on_from_the_saved_state():
    time = FakeTime()
    first = Clock(now=time)
    first.count(8)
    time.now += 4
    first.tick()
    with first.paused():
        time.now += 3
    saved = first.state()
    assert saved == {"elapsed_s": 7.0, "train_s": 4.0, "train_steps": 1, "eval_s": 3.0}

    time.now += 1000  # between the sessions: not the run's time
    resumed = Clock(saved, now=time)
    assert resumed.elapsed() == 7.0
    assert resumed.eta(2, 1) == 2 * 4.0 + 3.0  # the saved pace, until this session has measured its own
    time.now += 60  # compiling again
    resumed.count(8)
    time.now += 1  # a faster machine
    resumed.tick()
    assert resumed.eta(2, 1) == 2 * 1.0 + 3.0
    assert resumed.state()["elapsed_s"] == 7.0 + 61
    assert Clock({"elapsed_s": 12.5}, now=time).state() == {  # a checkpoint that saved only elapsed_s
        "elapsed_s": 12.5,
        "train_s": 0.0,
        "train_steps": 0,
        "eval_s": None,
    }


@pytest.mark.parametrize(
    "seconds,text", [(0, "0:00:00"), (59.5, "0:01:00"), (3725.4, "1:02:05"), (90000, "25:00:00")]
)
def test_durations_are_hours_minutes_seconds(seconds, text):
    assert hms(seconds) == text
