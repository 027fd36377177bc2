import sys

from bridgegap_jax.prepare.cli import main

sys.exit(main())
