"""Offline preparation: official downloads (or the built-in demo) -> tfds ArrayRecord folders.

    python -m bridgegap_jax.prepare <demo|voc|coco|cub|nuswide|openimages> --data_dir=DIR [--source=...]
    python -m bridgegap_jax.prepare.fake <voc|coco|cub|nuswide|openimages> --out DIR   (tiny fakes)

Nothing here runs during training, except the demo's builder when the demo is not there yet.
"""
