import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

try:
    # torchvision segfaults on import (inside torch._dynamo) once TensorFlow is loaded in the same
    # process; the TF tests and the torch parity tests share one pytest process, so torch goes first.
    import torchvision.models  # noqa: F401
except ImportError:  # torch is an optional extra: its tests skip themselves
    pass


# tests/multidevice needs 8 virtual CPU devices, which XLA_FLAGS must give before jax starts; the
# rest of the suite runs on one device. So that directory is collected only in the child pytest
# that tests/test_multidevice.py starts with the flag set.
EIGHT_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
DEMO_DATA_DIR_VAR = "BRIDGEGAP_TEST_DEMO_DATA_DIR"  # the parent's demo dataset, reused by the child
if EIGHT_DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    collect_ignore = ["multidevice"]


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The demo dataset, built once per test session into a temporary tfds data_dir."""
    from bridgegap_jax.datasets import demo

    if DEMO_DATA_DIR_VAR in os.environ:
        return os.environ[DEMO_DATA_DIR_VAR]
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    demo.load_builder(data_dir)
    return data_dir


@pytest.fixture
def tiny_config(demo_data_dir):
    """The demo config shrunk to seconds: 32x32 inputs, a width-8 ResNet-18, 2 epochs."""
    from configs import demo

    config = demo.get_config()
    config.data.data_dir = demo_data_dir
    config.data.image_size = 32
    config.model.width = 8
    config.train.num_epochs = 2
    config.train.log_every_steps = 1000
    config.train.checkpoint_every_steps = 25
    return config
