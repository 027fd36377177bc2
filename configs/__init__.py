"""Experiment configs: `get_config()` of each file returns an ml_collections.ConfigDict."""
