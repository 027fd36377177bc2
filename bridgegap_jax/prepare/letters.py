"""`bridgegap_letters`: mosaics of the 26 Latin letters, the source task of a stand-in pretrained trunk.

No ImageNet weights can be downloaded everywhere, so the project makes its own pretrained trunk:
a ResNet trained with full labels on this task (configs/letters.py), then fine-tuned on the
digit demo. Images and classes are disjoint from the demo's: letters, not digits, drawn by the
same mosaic builder (prepare/mosaics.py) in the demo's 96x96 format, 1-4 letters per mosaic.

Each class is a letter in either case, so a class holds two shapes. Its glyphs are rendered with
Pillow's bundled fonts (nothing is downloaded): the scalable Aileron of ImageFont.load_default
(smooth outlines) or the bitmap font of load_default_imagefont (blocky pixels, like the demo's
upscaled 8x8 digits); then (the outlines) thickened, sheared, rotated and fitted into the 24x24
glyph at a random height. Each split renders its own glyph bank from its own seed, so train and
evaluation share no glyph. Every split carries the full labels (labels_obs = labels): the source
task is supervised.
"""

import functools
import string

import numpy as np

from bridgegap_jax.prepare import mosaics

CLASS_NAMES = tuple(string.ascii_lowercase)
GLYPHS_PER_CLASS = {"train": 256, "validation": 64, "test": 96}
SIZES = {"train": 25600, "validation": 2560, "test": 2560}
_BANK_SEEDS = {"train": 10, "validation": 11, "test": 12}
_CANVAS = 96  # rendered at 4x the glyph, then fitted into 24x24
_BITMAP_FRACTION = 0.3

_DESCRIPTION = (
    "Source task: 96x96 RGB mosaics of 1-4 distinct letters (26 classes a-z, either case; Pillow's "
    "bundled fonts, thickened, sheared, rotated and scaled) on a 3x3 grid, with random dark "
    "background, per-letter colour and Gaussian noise. `labels` and `labels_obs` are the full labels "
    "on every split."
)


@functools.lru_cache(maxsize=1)
def _fonts():
    from PIL import ImageFont

    return ImageFont.load_default(size=_CANVAS * 2 // 3), ImageFont.load_default_imagefont()


def render_glyph(char: str, rng: np.random.Generator) -> np.ndarray:
    """One (24, 24) float alpha mask of `char` in a random style drawn from `rng`."""
    from PIL import Image, ImageDraw, ImageFilter

    outline, bitmap = _fonts()
    blocky = rng.random() < _BITMAP_FRACTION
    if blocky:
        small = Image.new("L", (_CANVAS // 6, _CANVAS // 6), 0)
        ImageDraw.Draw(small).text((_CANVAS // 12, _CANVAS // 12), char, fill=255, font=bitmap, anchor="mm")
        image = small.resize((_CANVAS, _CANVAS), Image.NEAREST)
    else:
        image = Image.new("L", (_CANVAS, _CANVAS), 0)
        ImageDraw.Draw(image).text((_CANVAS / 2, _CANVAS / 2), char, fill=255, font=outline, anchor="mm")
    thickness = int(rng.integers(0, 4))  # 0..3: a max filter of 1, 3, 5 or 7 px at 4x
    if thickness and not blocky:  # the bitmap's strokes are thick already (6 px at 4x)
        image = image.filter(ImageFilter.MaxFilter(2 * thickness + 1))
    shear, angle = rng.uniform(-0.3, 0.3), rng.uniform(-20, 20)
    half = _CANVAS / 2
    image = image.transform(
        image.size, Image.AFFINE, (1, shear, -shear * half, 0, 1, 0), resample=Image.BILINEAR
    ).rotate(angle, resample=Image.BILINEAR)
    left, top, right, bottom = image.getbbox()
    height = rng.uniform(14, mosaics.GLYPH)  # px of the 24x24 glyph
    scale = min(height / (bottom - top), mosaics.GLYPH / (right - left))
    w, h = max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale))
    fitted = image.crop((left, top, right, bottom)).resize((w, h), Image.BOX)
    glyph = Image.new("L", (mosaics.GLYPH, mosaics.GLYPH), 0)
    glyph.paste(fitted, ((mosaics.GLYPH - w) // 2, (mosaics.GLYPH - h) // 2))
    return np.asarray(glyph, np.float64) / 255.0


@functools.lru_cache(maxsize=3)
def letter_glyphs(split: str) -> list[np.ndarray]:
    """Per class, the split's bank of rendered letters: (GLYPHS_PER_CLASS[split], 24, 24) alpha in [0, 1]."""
    rng = np.random.default_rng([_BANK_SEEDS[split], 2023])
    bank = []
    for letter in CLASS_NAMES:
        cases = [letter.upper() if rng.random() < 0.5 else letter for _ in range(GLYPHS_PER_CLASS[split])]
        bank.append(np.stack([render_glyph(char, rng) for char in cases]))
    return bank


LETTERS = mosaics.MosaicSet("letters", CLASS_NAMES, letter_glyphs, SIZES, False, _DESCRIPTION)
