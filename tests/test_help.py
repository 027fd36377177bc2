"""--help of every command reads as prose: no gap left inside a line by a joined line continuation."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "module", ["main", "explain", "prepare", "model.pretrained", "report", "predict", "export"]
)
def test_help_has_no_gaps(module):
    done = subprocess.run(
        [sys.executable, "-m", f"bridgegap_jax.{module}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1) and done.stderr == "", done.stderr  # absl's own --help exits with 1
    if module == "main":
        assert done.returncode == 0
    assert "usage" in done.stdout.lower() or "flags:" in done.stdout
    for line in done.stdout.splitlines():
        if line in ("positional arguments:", "options:"):  # argparse: columns of reflowed help strings
            break
        assert not re.search(r"\S {3,}\S", line), line
