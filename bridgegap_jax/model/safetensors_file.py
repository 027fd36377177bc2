"""The .safetensors format, read and written with numpy alone (no torch, no safetensors package).

A file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} with an optional "__metadata__" {str: str}, then the tensors' raw little-endian
bytes, back to back. `pretrained` reads torchvision / timm weights with `read_safetensors`;
`export` writes a trained model with `write_safetensors`, which the `safetensors` package (and so
PyTorch's `safetensors.torch.load_file`) reads: offsets contiguous from 0, the header padded with
spaces to 8 bytes.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from bridgegap_jax.base.errors import UserError
from bridgegap_jax.base.files import atomic_output

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": None,  # read only: widened to float32
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_DTYPE_NAMES = {np.dtype(dtype): name for name, dtype in _DTYPES.items() if dtype is not None}
METADATA_KEY = "__metadata__"


class SafetensorsError(UserError, ValueError):
    """A file that is not a readable .safetensors file; the message names it."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A .safetensors file as {name: array}. BF16 is widened to float32."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise SafetensorsError(f"{path} is not a safetensors file (only {len(raw)} bytes)")
    header_len = int.from_bytes(raw[:8], "little")
    if header_len > len(raw) - 8:
        raise SafetensorsError(
            f"{path} is not a safetensors file (header length {header_len} exceeds the file size)"
        )
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path} is not a safetensors file (header is not JSON: {e})") from None
    data = memoryview(raw)[8 + header_len :]
    tensors = {}
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        try:
            dtype_name, shape, (start, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(
                f"{path} is not a safetensors file (tensor {name!r} lacks a dtype, shape or "
                "data_offsets); download it again"
            ) from None
        if dtype_name not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {dtype_name}")
        if end > len(data):
            raise SafetensorsError(
                f"{path}: tensor {name} runs past the end of the file (truncated download?)"
            )
        if dtype_name == "BF16":
            bits = np.frombuffer(data[start:end], dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(data[start:end], dtype=np.dtype(_DTYPES[dtype_name]).newbyteorder("<"))
        tensors[name] = array.reshape(shape).astype(array.dtype.newbyteorder("="))
    return tensors


def read_metadata(path: str) -> dict[str, str]:
    """The file's "__metadata__" ({} if it has none)."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        try:
            return dict(json.loads(f.read(header_len)).get(METADATA_KEY) or {})
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise SafetensorsError(f"{path} is not a safetensors file (header is not JSON: {e})") from None


def write_safetensors(
    path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str], *, overwrite: bool = False
) -> None:
    """Write `tensors` (in the given order) and `metadata` (str -> str) to `path`.

    Atomic (files.atomic_output): a crash never leaves half a file, and an existing file is never
    replaced unless `overwrite` (FileExistsError otherwise, also when another writer got there first).
    """
    if METADATA_KEY in tensors:
        raise ValueError(f"a tensor may not be named {METADATA_KEY!r}")
    bad = [key for key, value in metadata.items() if not (isinstance(key, str) and isinstance(value, str))]
    if bad:
        raise ValueError(f"safetensors metadata must map str to str; not so for {bad}")
    header: dict = {METADATA_KEY: dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no safetensors name")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _DTYPE_NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as the safetensors package writes it
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for chunk in chunks:
            f.write(chunk)
