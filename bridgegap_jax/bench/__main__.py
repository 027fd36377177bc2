"""`python -m bridgegap_jax.bench`: the command of cli.py."""

import sys

from bridgegap_jax.bench.cli import main

sys.exit(main())
