"""The built-in datasets: drawn by the mosaic builder on first use (or by `prepare`), nothing to download."""

from bridgegap_jax.prepare import demo, letters, mosaics

SETS = {s.name: s for s in (demo.DEMO, demo.DEMO_LARGE, demo.DEMO_XL, letters.LETTERS)}


def build(data_dir: str, name: str, overwrite: bool = False) -> str:
    """Writes the built-in dataset `name` into <data_dir>/bridgegap_<name>/1.0.0; returns the folder."""
    return mosaics.build(SETS[name], data_dir, overwrite)
