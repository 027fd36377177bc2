"""bridgegap_jax: JAX/Flax reimplementation of BoostLU single-positive multi-label classification."""
