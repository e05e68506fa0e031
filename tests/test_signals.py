"""A Ctrl-C the interpreter drops (raised inside a finaliser) still stops a search, a study or a command.

Python raises ``KeyboardInterrupt`` wherever the main thread is; inside a
``__del__``, a weakref or a garbage-collector callback it is printed and dropped.
A search's collection between two trials runs many of them, so a Ctrl-C there
was lost once on CI (test_hpo's Ctrl-C test: the search ran on and exited 0).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from nnlab._signals import interrupts_latched, raise_if_interrupted


class _Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(2)  # the handler runs here, inside the finaliser, and its exception is dropped


def _drop_a_ctrl_c(unraisable: list) -> None:
    _Finalised()  # no reference left: __del__ runs at once
    assert [type(u.exc_value) for u in unraisable] == [KeyboardInterrupt], "the Ctrl-C was not dropped"


@pytest.fixture
def unraisable(monkeypatch):
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def test_a_dropped_ctrl_c_is_raised_again_inside_the_latch(unraisable):
    with interrupts_latched():
        _drop_a_ctrl_c(unraisable)
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        raise_if_interrupted()  # raised once, not again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Cyclic:
    def __init__(self):
        self.me = self  # freed only by a collection

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here, during the collection


def test_a_ctrl_c_during_a_collection_waits_for_its_end_instead_of_printing_a_traceback(unraisable):
    import gc

    with interrupts_latched():
        _Cyclic()
        gc.collect()  # no KeyboardInterrupt inside the collection's finalisers
        assert unraisable == []
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    assert not [c for c in gc.callbacks if c.__module__ == "nnlab._signals"]  # the collection hook is gone


def test_only_the_main_thread_raises_a_recorded_ctrl_c(unraisable):
    import threading

    raised = []

    def check():
        try:
            raise_if_interrupted()
        except KeyboardInterrupt:
            raised.append("worker thread")

    with interrupts_latched():
        _drop_a_ctrl_c(unraisable)
        thread = threading.Thread(target=check)
        thread.start()
        thread.join()
        assert raised == []
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()


def test_without_the_latch_a_dropped_ctrl_c_is_lost(unraisable):
    _drop_a_ctrl_c(unraisable)
    raise_if_interrupted()  # nothing recorded: what the latch is for


def test_the_latch_leaves_someone_elses_handler_alone():
    def own(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, own)
    try:
        with interrupts_latched():
            assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_dropped_during_a_unit_ends_the_claim_loop_before_the_next(unraisable):
    from nnlab.orchestration._loop import run_claim_loop

    units, trained = iter([1, 2, 3]), []

    def train(unit):
        trained.append(unit)
        if unit == 1:
            _drop_a_ctrl_c(unraisable)  # e.g. in the collection after the unit's network
        return unit

    with pytest.raises(KeyboardInterrupt):
        run_claim_loop(None, claim=lambda owner: next(units, None), run_one=train, on_done=lambda _: None,
                       label="test")
    assert trained == [1]


def test_a_ctrl_c_dropped_before_training_stops_the_run_before_its_first_epoch(unraisable):
    from nnlab.runs import InterruptRequest

    with interrupts_latched():
        _drop_a_ctrl_c(unraisable)
        with pytest.raises(KeyboardInterrupt), InterruptRequest():
            pytest.fail("training started")


def test_a_ctrl_c_dropped_during_a_command_ends_it_with_130(unraisable, monkeypatch, capsys):
    import nnlab.config
    from nnlab.cli import main

    real = nnlab.config.list_presets

    def list_presets(config_dir):
        _drop_a_ctrl_c(unraisable)  # the fault: Ctrl-C while the command runs, dropped by the interpreter
        return real(config_dir)

    monkeypatch.setattr(nnlab.config, "list_presets", list_presets)
    assert main(["config", "presets"]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")
