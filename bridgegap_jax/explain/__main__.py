from absl import app

from bridgegap_jax.explain.cli import define_flags, main

define_flags()
app.run(main)
