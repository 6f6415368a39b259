"""Stop signals (hpc_ncsn.preemption): SIGUSR2 asks for a requeue, SIGTERM and Ctrl-C for a stop."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_ncsn import preemption

ROOT = Path(__file__).resolve().parent.parent


STOPPER = """
import os, signal, sys, time
from hpc_ncsn import preemption
preemption.install()
os.kill(os.getpid(), getattr(signal, sys.argv[1]))
if len(sys.argv) > 2:
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
stop = preemption.Preempted("stopped")
print(stop.signal_name, stop.requeue, stop.exit_code)
"""


@pytest.mark.parametrize("signals, expected", [
    (["SIGUSR2"], "SIGUSR2 True 75"),
    (["SIGTERM"], "SIGTERM False 143"),
    (["SIGUSR2", "SIGTERM"], "SIGTERM False 143"),  # a cancel outranks a time-limit warning
    (["SIGTERM", "SIGUSR2"], "SIGTERM False 143"),
])
def test_usr2_asks_for_a_requeue_and_sigterm_for_a_stop(signals, expected):
    done = subprocess.run([sys.executable, "-c", STOPPER, *signals], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == expected, done.stderr
    assert preemption.EXIT_STOPPED == 128 + signal.SIGTERM


def test_ctrl_c_asks_to_stop_a_second_one_stops_at_once_and_the_handlers_come_back():
    import os
    import signal

    from hpc_ncsn import preemption

    before = signal.getsignal(signal.SIGINT)
    restore = preemption.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a stop request, like scancel's SIGTERM
        assert preemption.requested() == "SIGINT" and not preemption.requeue_wanted()
        assert preemption.Preempted("x").exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is before  # a notebook keeps its own Ctrl-C
    assert preemption.requested() is None  # and its next training does not stop at the first step


def test_a_nested_install_keeps_the_outer_stop_request():
    import os
    import signal

    from hpc_ncsn import preemption

    outer = preemption.install()  # a job's, before anything slow
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        inner = preemption.install()  # train()'s
        inner()
        assert preemption.requested() == "SIGTERM"
    finally:
        outer()
    assert preemption.requested() is None
