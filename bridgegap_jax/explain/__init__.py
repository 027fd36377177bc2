"""Explanations: the CAMs of trained runs, their statistics and figures (python -m bridgegap_jax.explain)."""
