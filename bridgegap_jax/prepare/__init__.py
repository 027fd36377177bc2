"""Offline preparation: official downloads (or the built-in demo) -> tfds ArrayRecord folders.

    python -m bridgegap_jax.prepare <demo|voc|coco|cub|nuswide|openimages> --data_dir=DIR [--source=...]
    python -m bridgegap_jax.prepare.fake <voc|coco|cub|nuswide|openimages> --out DIR   (tiny fakes)

Nothing here is imported during training: a built-in dataset that is not there yet is built by
running `python -m bridgegap_jax.prepare NAME` (datasets/catalog.py, build_built_in).
"""
