"""Test suite layout: fast in-process tests, and system tests marked `slow`.

`slow` tests start real processes (train.py, torchrun, accelerate launch, DeepSpeed,
the local Slurm cluster, the benchmark script). A developer's quick answer:

    python -m pytest -q -m "not slow" tests

The README's test command runs everything.
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts real processes (subprocess, gloo, DeepSpeed, Slurm); "
                                       "deselect with -m 'not slow'")


import os  # noqa: E402

import pytest  # noqa: E402

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture(autouse=True)
def no_thread_setting_leaks_out_of_a_test():
    """Tests run with the product's own thread setting: none may leave OMP_NUM_THREADS & co. behind for the next."""
    before = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    yield
    after = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    assert after == before, f"the test changed the thread variables of the test process: {before} → {after}"
