import os
import shutil
import tempfile

import pytest

# tests/multidevice needs 8 virtual CPU devices, which XLA_FLAGS must give before jax starts; the
# rest of the suite runs on one device. So that directory is collected only in the child pytest
# that tests/test_multidevice.py starts with the flag set.
EIGHT_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
DEMO_DATA_DIR_VAR = "BRIDGEGAP_TEST_DEMO_DATA_DIR"  # the parent's demo dataset, reused by the child
COMPILATION_CACHE_VAR = (
    "JAX_COMPILATION_CACHE_DIR"  # shared by the test processes: each program compiles once
)
if EIGHT_DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    collect_ignore = ["multidevice"]


_CREATED_CACHE = []


def pytest_configure(config):
    """One persistent XLA compilation cache for the whole session (child processes inherit it): many
    tests build the same tiny programs, and compiling them dominates the suite's time on 2 cores."""
    if COMPILATION_CACHE_VAR not in os.environ:
        _CREATED_CACHE.append(tempfile.mkdtemp(prefix="bridgegap_jax_test_cache_"))
        os.environ[COMPILATION_CACHE_VAR] = _CREATED_CACHE[0]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_unconfigure(config):
    for path in _CREATED_CACHE:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The demo dataset, built once per test session into a temporary data_dir."""
    from bridgegap_jax.data import catalog

    if DEMO_DATA_DIR_VAR in os.environ:
        return os.environ[DEMO_DATA_DIR_VAR]
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    catalog.open_dataset("demo", data_dir)
    return data_dir


@pytest.fixture
def tiny_config(demo_data_dir):
    """configs/demo.py:tiny (helpers.TINY_DEMO) on the session's demo dataset."""
    from helpers import tiny_demo

    return tiny_demo(demo_data_dir)
