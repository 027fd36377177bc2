"""Encoded image bytes -> RGB uint8 arrays: the one decoder that training, evaluation and `prepare` use.

Two resize methods (config.data.resize):
  'bilinear'  OpenCV: libjpeg-turbo decode (bit-identical to PIL's) and plain bilinear resize;
              about 0.6 grey levels (mean abs) from PIL's antialiased bilinear at 448, and ~3x
              cheaper per core than the reference transform (scripts/input_throughput.py).
  'pil'       PIL's decode and `resize(BILINEAR)`: exactly what the reference's torchvision
              `Resize((S, S))` computes on PIL images.
`prepare` decodes every image with both, so nothing it keeps can fail here at training time.
Both apply the EXIF orientation (a phone's portrait photo is stored landscape with a tag that says
"rotate"), so an image is upright, the same size and the same pixels in either: OpenCV's imdecode
does so itself, PIL through ImageOps.exif_transpose (in place: no copy when there is nothing to turn).
Imports only numpy, OpenCV and PIL: it runs in the input pipeline's worker processes.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from bridgegap_jax.base.errors import UserError

RESIZE_METHODS = ("bilinear", "pil")
cv2.setNumThreads(1)  # one image per call per process: the workers are the parallelism
# OpenCV would also print its own lines on stderr for a file it cannot decode; DecodeError says it.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.11 decodes straight to RGB


class DecodeError(UserError, ValueError):
    """The bytes are not an image this decoder can read."""


def check_method(method: str) -> None:
    if method not in RESIZE_METHODS:
        raise ValueError(f"config.data.resize={method!r} is not one of {', '.join(RESIZE_METHODS)}")


def decode(data: bytes, method: str = "bilinear") -> np.ndarray:
    """(H, W, 3) uint8 RGB, by the decoder of `method`; DecodeError if it cannot."""
    check_method(method)
    if method == "pil":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(upright(image).convert("RGB"))
        except Exception as error:  # PIL raises many types for bad data; all mean "cannot decode"
            raise DecodeError(f"PIL: {type(error).__name__}: {error}") from None
    buffer = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR if _RGB is None else _RGB) if len(buffer) else None
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise DecodeError("OpenCV could not decode the bytes")
    return image[..., ::-1] if _RGB is None else image


def upright(image):
    """The opened PIL `image` turned as its EXIF orientation says, as OpenCV's imdecode turns it."""
    from PIL import ImageOps

    ImageOps.exif_transpose(image, in_place=True)
    return image


def decode_and_resize(data: bytes, size: int, method: str = "bilinear") -> np.ndarray:
    """(size, size, 3) uint8 RGB: the image resized without keeping its aspect ratio, as the reference."""
    if method == "pil":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(upright(image).convert("RGB").resize((size, size), Image.BILINEAR))
        except Exception as error:  # noqa: BLE001 - see decode()
            raise DecodeError(f"PIL: {type(error).__name__}: {error}") from None
    image = decode(data, method)
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def verify(data: bytes) -> str | None:
    """None if every decoder of RESIZE_METHODS reads `data` to the same shape, else the reason."""
    shapes = set()
    for method in RESIZE_METHODS:
        try:
            shapes.add(decode(data, method).shape)
        except DecodeError as error:
            return str(error)
    return None if len(shapes) == 1 else f"the decoders disagree on the image size: {sorted(shapes)}"
