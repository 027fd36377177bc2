"""One image file -> the bytes we store, or the reason it cannot be stored.

Runs in the prepare worker processes (PIL, OpenCV and numpy only). Every stored image is decoded
here by each decoder that training may use (`bridgegap_jax.data.images.verify`), because a file that one
decoder accepts and another rejects would otherwise reach the dataset and crash training mid-epoch,
at the same step on every resume.
"""

from __future__ import annotations

import io

from bridgegap_jax.data import images

# Stored as they are: both training decoders read these exactly as PIL does.
_KEEP_MODES = ("RGB", "L")
JPEG_QUALITY = 90


def process(path: str | bytes, max_short_side: int | None) -> tuple[str, bytes | str]:
    """('ok', stored bytes) or ('missing' | 'unreadable', reason) for the image at `path`.

    `path` may also be the encoded bytes themselves (the demo's PNGs): they are only verified.
    max_short_side: None keeps every readable RGB/grey JPEG byte for byte (the single-positive
    datasets: the reference decodes those very bytes), its EXIF orientation tag included, which both
    decoders apply. An int re-encodes images whose shorter side
    is larger down to that side (OpenImages originals run to several megapixels: 512 px keeps the
    448 px training input and cuts the stream ~10x). Other formats and modes (CMYK, palette PNG,
    ...) are re-encoded as RGB JPEG, so that every stored image is an RGB or grey JPEG.
    """
    if isinstance(path, bytes):
        data = path
    else:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return "missing", "no such file"
        except OSError as e:
            return "unreadable", f"{type(e).__name__}: {e}"
    if not data:
        return "unreadable", "empty file"
    stored = data if isinstance(path, bytes) else _jpeg_to_store(data, max_short_side)
    if isinstance(stored, str):
        return "unreadable", stored
    problem = images.verify(stored)
    return ("unreadable", problem[:200]) if problem else ("ok", stored)


def _jpeg_to_store(data: bytes, max_short_side: int | None) -> bytes | str:
    """The JPEG bytes to store for `data`, or the reason PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, (w, h) = img.format, img.mode, img.size
            shrink = max_short_side is not None and min(w, h) > max_short_side
            if fmt == "JPEG" and mode in _KEEP_MODES and not shrink:
                return data
            if shrink and fmt == "JPEG":
                # DCT-domain downscale by 1/2, 1/4 or 1/8 while decoding, never below the target.
                scale = max_short_side / min(w, h)
                img.draft("RGB", (int(w * scale) + 1, int(h * scale) + 1))
            # Turned upright first: the JPEG written below carries no EXIF, so no orientation tag either.
            img = images.upright(img).convert("RGB")  # decodes
            if shrink:
                scale = max_short_side / min(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                if min(size) != max_short_side:  # rounding: make the shorter side exact
                    size = tuple(max_short_side if s == min(size) else s for s in size)
                img = img.resize(size, Image.BICUBIC)
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=JPEG_QUALITY)
            return out.getvalue()
    except Exception as e:  # PIL raises many types for bad data; all mean "cannot use this file"
        return f"{type(e).__name__}: {e}"[:200]


def process_task(task: tuple[str | bytes, int | None]) -> tuple[str, bytes | str]:
    """Pool.imap entry point: task = (path, max_short_side)."""
    return process(*task)
