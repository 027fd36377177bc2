"""--help of every command that README.md and docs/ name exits 0 and reads as prose: no gap left inside
a line by a joined line continuation."""

import os
import re
import subprocess
import sys

import pytest
from test_docs import documented_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", documented_commands())
def test_help_has_no_gaps(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "usage" in done.stdout.lower() or "flags:" in done.stdout
    for line in done.stdout.splitlines():
        if line in ("positional arguments:", "options:"):  # argparse: columns of reflowed help strings
            break
        assert not re.search(r"\S {3,}\S", line), line
