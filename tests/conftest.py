import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The demo dataset, built once per test session into a temporary tfds data_dir."""
    from bridgegap_jax.datasets import demo

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
