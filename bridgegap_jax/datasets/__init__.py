"""Datasets for bridgegap_jax (label observation, demo tfds builder). Kept import-light: no TensorFlow here."""
