"""The XLA presets (bridgegap_jax/model/xla_options.py): known to this XLA, unknown names refused."""

import os
import subprocess
import sys

import pytest

from bridgegap_jax.model import xla_options


def test_xla_option_flags_are_known_to_this_xla():
    """XLA aborts on an unknown flag when its backend starts: every preset's flags must parse."""
    env = dict(
        os.environ, XLA_FLAGS=xla_options.with_flags("", list(xla_options.PRESETS)), JAX_PLATFORMS="cpu"
    )
    subprocess.run(
        [sys.executable, "-c", "import jax; jax.numpy.ones(1).block_until_ready()"], env=env, check=True
    )
    with pytest.raises(ValueError, match="unknown XLA option"):
        xla_options.flags("conv-fusion,fastest")
