"""Test suite layout: fast in-process tests, and system tests marked `slow`.

`slow` tests start real processes (train.py, torchrun, accelerate launch, DeepSpeed,
the local Slurm cluster, the benchmark script). A developer's quick answer:

    python -m pytest -q -m "not slow" tests

The README's test command runs everything.
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts real processes (subprocess, gloo, DeepSpeed, Slurm); "
                                       "deselect with -m 'not slow'")
