"""The payload of a `.dsz` file: typed blobs that hold every tensor and every bit-packed code stream.

A model has hundreds of small tensors (BN statistics, per-filter scales); giving each its own
safetensors entry would cost ~80 header bytes apiece, more than a binary layer's codes. So tensors
of one dtype are concatenated into one blob ("float32", "int64", ...) and code streams into the
uint8 blob "codes"; the metadata points into them with a *ref*:

- tensor ref: ``{"b": blob, "o": element offset, "s": shape, "c": crc32}``
- stream ref: ``{"b": "codes", "o": byte offset, "n": bytes, "codec": "bits"|"base3"|"zstd"|"rans",
  "count": symbols, "w": bit width, "h": Shannon bound in bits, "c": crc32}``

Every ref carries the CRC-32 of its bytes, checked before anything is decoded, so a flipped bit
anywhere in a payload is reported with the name of the tensor it belongs to.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from ..encodings.bits import pack_base3, pack_bits, packed_nbytes, unpack_base3, unpack_bits
from ..encodings.checks import check_int as _int, check_shape, fail as _fail  # noqa: F401 (format, graph)
from ..errors import PackFormatError
from .entropy import rans_decode, rans_encode, shannon_bits, zstd_compress, zstd_decompress

CODES_BLOB = "codes"
DTYPES = {name: getattr(torch, name) for name in
          ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}


def crc(data: bytes | np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data)


def tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The raw bytes of a tensor (any dtype, bf16 included) as a uint8 array."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else np.zeros(0, np.uint8)


class PayloadWriter:
    """Collects tensors and code streams; `blobs()` gives the safetensors entries."""

    def __init__(self, entropy: bool = False, ternary_base3: bool = False):
        self.entropy = entropy
        self.ternary_base3 = ternary_base3
        self._parts: dict[str, list] = {}
        self._sizes: dict[str, int] = {}

    def _append(self, blob: str, part, size: int) -> int:
        offset = self._sizes.get(blob, 0)
        self._parts.setdefault(blob, []).append(part)
        self._sizes[blob] = offset + size
        return offset

    def tensor(self, tensor: torch.Tensor) -> dict:
        """Store a tensor as is; returns its ref."""
        tensor = tensor.detach().cpu().contiguous()
        blob = str(tensor.dtype).removeprefix("torch.")
        if blob not in DTYPES:
            raise PackFormatError(f"cannot store a tensor of dtype {tensor.dtype}")
        offset = self._append(blob, tensor.reshape(-1), tensor.numel())
        return {"b": blob, "o": offset, "s": list(tensor.shape), "c": crc(tensor_bytes(tensor))}

    def stream(self, symbols: np.ndarray, width: int, alphabet: int) -> dict:
        """Store unsigned symbols (< alphabet <= 2^width) in the smallest allowed codec; returns its ref."""
        symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
        raw = pack_bits(symbols, width).tobytes()
        options = {"bits": raw}
        if self.ternary_base3 and alphabet == 3:
            options["base3"] = pack_base3(symbols).tobytes()
        if self.entropy and symbols.size:
            options["zstd"] = zstd_compress(raw)
            if alphabet <= 1 << 15:
                options["rans"] = rans_encode(symbols, alphabet)
        codec = min(options, key=lambda name: len(options[name]))  # dicts keep order: ties go to "bits"
        data = np.frombuffer(options[codec], dtype=np.uint8)
        offset = self._append(CODES_BLOB, torch.from_numpy(data.copy()), data.size)
        return {"b": CODES_BLOB, "o": offset, "n": int(data.size), "codec": codec, "count": int(symbols.size),
                "w": int(width), "h": round(shannon_bits(symbols), 1), "c": crc(data)}

    def blobs(self) -> dict[str, torch.Tensor]:
        return {blob: torch.cat(parts) if parts else torch.zeros(0) for blob, parts in self._parts.items()}


class PayloadReader:
    """Resolves refs against the loaded blobs, checking bounds and checksums."""

    def __init__(self, blobs: dict[str, torch.Tensor]):
        self.blobs = blobs

    def _blob(self, ref, what: str, expected_blob: str | None = None) -> torch.Tensor:
        if not isinstance(ref, dict):
            _fail(what, f"reference must be an object, found {ref!r}")
        name = ref.get("b")
        if expected_blob is not None and name != expected_blob:
            _fail(what, f"expected blob {expected_blob!r}, found {name!r}")
        if name not in self.blobs or name not in DTYPES and name != CODES_BLOB:
            _fail(what, f"points into blob {name!r}, which the file does not hold")
        blob = self.blobs[name]
        if blob.dtype != DTYPES.get(name, torch.uint8) or blob.dim() != 1:
            _fail(what, f"blob {name!r} is stored as {blob.dtype} {list(blob.shape)}, expected a flat "
                        f"{DTYPES.get(name, torch.uint8)} tensor")
        return blob

    def tensor(self, ref, what: str) -> torch.Tensor:
        blob = self._blob(ref, what)
        shape = check_shape(ref.get("s"), what)
        numel = math.prod(shape)
        offset = _int(ref.get("o"), what + " offset", 0, blob.numel())
        if offset + numel > blob.numel():
            _fail(what, f"elements {offset}..{offset + numel} lie beyond its blob ({blob.numel()} elements)")
        tensor = blob[offset:offset + numel].reshape(shape).clone()
        if crc(tensor_bytes(tensor)) != ref.get("c"):
            _fail(what, "checksum mismatch: the payload is corrupted")
        return tensor

    def stream(self, ref, what: str, count: int, width: int, alphabet: int) -> np.ndarray:
        """The unsigned symbols of a code stream, each checked to be < alphabet."""
        blob = self._blob(ref, what, CODES_BLOB)
        if ref.get("count") != count:
            _fail(what, f"holds {ref.get('count')!r} codes, expected {count}")
        if ref.get("w") != width:
            _fail(what, f"code width {ref.get('w')!r} bits, expected {width}")
        offset = _int(ref.get("o"), what + " offset", 0, blob.numel())
        nbytes = _int(ref.get("n"), what + " byte count", 0, blob.numel() - offset)
        data = blob[offset:offset + nbytes].numpy()
        if crc(data) != ref.get("c"):
            _fail(what, "checksum mismatch: the code stream is corrupted")
        codec = ref.get("codec")
        try:
            if codec == "bits":
                symbols = unpack_bits(data, width, count)
            elif codec == "base3":
                symbols = unpack_base3(data, count)
            elif codec == "zstd":
                raw = zstd_decompress(data.tobytes(), packed_nbytes(count, width))
                symbols = unpack_bits(np.frombuffer(raw, np.uint8), width, count)
            elif codec == "rans":
                symbols = rans_decode(data.tobytes(), count)
            else:
                _fail(what, f"unknown codec {codec!r}")
        except (ValueError, RuntimeError) as exc:
            if isinstance(exc, PackFormatError):
                raise
            _fail(what, f"{codec} stream does not decode: {exc}")
        if symbols.size and (symbols.max() >= alphabet or symbols.min() < 0):
            _fail(what, f"code {int(symbols.max())} is beyond the {alphabet} allowed values")
        return symbols
