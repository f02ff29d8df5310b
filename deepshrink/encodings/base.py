"""What every encoding kind owns, and the behaviour the kinds that store integer codes share.

An `Encoding` (one registered instance per kind, see `registry`) holds every rule about its kind:

- `validate` (what `EncodedWeight(...)` checks), `code_range`, `code_width` (bits per stored code),
  `bits_per_weight` (the arithmetic precision, for BOPs), `dequantize`;
- its forms for the run-time engines: `integer_form` (and `no_integer_form`, why there is none) for
  the integer engine, `float_values` (a weight that engine may round itself, as an uncompressed
  layer's), `sign_planes` for the bit kernels;
- its file form: `encode` writes the weight into the packer's payload and returns its metadata,
  `decode` rebuilds it from metadata, checking every field (`PackFormatError` naming the tensor);
- `packed_bits`: the bits the packer writes for a weight, computed by running `encode` against a
  `ByteCounter` instead of the payload, so the estimate and the file cannot disagree;
- `describe`: its text in `deepshrink inspect`; `onnx_weight`: how ONNX export builds it.

`CodedEncoding` is the shared behaviour of the kinds whose codes are integers in `code_range` stored
as `code - low` at `code_width` bits (binary, ternary, uniform, pow2, pq). A new kind is one module:
a class with `@register_encoding`, listed in `deepshrink.encodings.__init__`; the conformance tests
(tests/encodings) run over every registered kind.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from .bits import base3_nbytes, packed_nbytes
from .checks import check_shape, fail
from .onnx_forms import integer_weight
from .registry import encoding_named, kinds
from .weight import EncodedWeight, IntegerForm, SignPlane

CODE_DTYPES = ("uint8", "int8", "int16", "int32", "int64")


class ByteCounter:
    """Stands in for the packer's `PayloadWriter`: counts the bytes it would append, stores nothing.

    Tensors cost their bytes; a code stream costs its fixed-width packing, or base 3 where the writer
    would choose it (`ternary_base3` and a 3-symbol alphabet). Entropy coding (`entropy=True` when
    packing) is data-dependent and only ever shrinks a stream, so a count is then an upper bound."""

    def __init__(self, ternary_base3: bool = False):
        self.ternary_base3 = ternary_base3
        self.nbytes = 0

    def tensor(self, tensor: torch.Tensor) -> dict:
        self.nbytes += tensor.numel() * tensor.element_size()
        return {}

    def stream(self, symbols: np.ndarray, width: int, alphabet: int) -> dict:
        count = np.asarray(symbols).size
        nbytes = packed_nbytes(count, width)
        if self.ternary_base3 and alphabet == 3:
            nbytes = min(nbytes, base3_nbytes(count))
        self.nbytes += nbytes
        return {}


class Encoding:
    """The rules of one encoding kind (see the module doc). Subclasses set `name` and override."""

    name: str = ""
    param_names: tuple[str, ...] = ()  # float parameters a file must hold
    per_filter_params: tuple[str, ...] = ()  # each holds 1 value or one per output filter
    per_weight_params: tuple[str, ...] = ()  # one value per weight: inside a sparse weight, the kept ones only
    codes_per_weight: bool = True  # False where a code stands for a block (pq): a sparse mask keeps them all
    has_codes: bool = False  # integer codes in `weight.codes` (see CodedEncoding)
    float_values: bool = False  # the weight is its float values (no codes): an engine may round it itself

    def validate(self, weight: EncodedWeight) -> None:
        """Raise ValueError where `weight`'s fields break the kind's rules; derive fields (e.g. `bits`)."""

    def code_range(self, weight: EncodedWeight) -> tuple[int, int]:
        """Inclusive (low, high) that every code must lie in."""
        raise ValueError(f"{self.name} encoding has no codes")

    def code_width(self, weight: EncodedWeight) -> int:
        """Bits per stored code."""
        return weight.bits

    def bits_per_weight(self, weight: EncodedWeight) -> float:
        """Code bits per weight element: the precision the weight computes at (BOPs), not its storage."""
        return float(self.code_width(weight))

    def dequantize(self, weight: EncodedWeight) -> torch.Tensor:
        """The float32 weight, of shape `weight.shape`."""
        raise NotImplementedError

    def integer_form(self, weight: EncodedWeight) -> IntegerForm | None:
        """W = scale * (q - zero_point) exactly (see `IntegerForm`); None where no such form exists."""
        return None

    def no_integer_form(self, weight: EncodedWeight) -> str:
        """One line saying why `integer_form(weight)` is None (the integer engine's refusal)."""
        return f"{self.name} weights are not integer codes times a scale"

    def sign_planes(self, weight: EncodedWeight) -> list[SignPlane] | None:
        """`weight` as +-1 (or +-1 / 0) planes times per-channel scales, the form the bit kernels pack
        (see `SignPlane`); None where the weight takes other values."""
        return None

    def onnx_weight(self, weight: EncodedWeight) -> tuple[str, Callable[[], torch.Tensor]] | None:
        """(form, build) for ONNX export: `build()` makes the weight from ops ONNX stores compactly
        ("integer": DequantizeLinear of the integer form within 8 bits); None: export it as float."""
        build = integer_weight(weight)
        return None if build is None else ("integer", build)

    def packed_bits(self, weight: EncodedWeight, float_dtype: torch.dtype = torch.float32,
                    ternary_base3: bool = False) -> int:
        """Bits the packer writes for `weight` (8 x its payload bytes: codes, masks, parameters), with the
        packer's options; the `.dsz` container's header and metadata are the file's, not the weight's."""
        counter = ByteCounter(ternary_base3)
        self.encode(weight, counter, self.name, float_dtype)
        return 8 * counter.nbytes

    # -- the file form ------------------------------------------------------------------------------------

    def store_param(self, key: str, value: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
        """Parameter `key` as the file stores it (by default as it is)."""
        return value

    def stored_params(self, weight: EncodedWeight, float_dtype: torch.dtype,
                      kept: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Every parameter as the file stores it; `kept` (flat bool) thins the per-weight ones."""
        stored = {}
        for key, value in weight.params.items():
            value = value.detach().cpu()
            if key in self.per_weight_params and kept is not None:
                value = value.reshape(-1)[torch.from_numpy(kept)]
            stored[key] = self.store_param(key, value, float_dtype)
        return stored

    def encode(self, weight: EncodedWeight, sink, name: str, float_dtype: torch.dtype,
               kept: np.ndarray | None = None) -> dict:
        """Write `weight` into `sink` (a `PayloadWriter` or `ByteCounter`); returns its metadata.
        `kept`: the flat bool mask of the sparse weight this one sits in (only those entries are stored)."""
        meta = {"kind": self.name, "shape": list(weight.shape)}
        for key in ("bits", "levels", "layout"):
            if getattr(weight, key) is not None:
                meta[key] = getattr(weight, key)
        stored = self.stored_params(weight, float_dtype, kept)
        meta["params"] = {key: sink.tensor(value) for key, value in stored.items()}
        return meta

    def decode(self, meta: dict, reader, what: str, shape: tuple[int, ...], kept: np.ndarray | None = None):
        """Rebuild the EncodedWeight of `shape` from its metadata and `reader` (a `PayloadReader`), checking
        every field; `kept` as in `encode`."""
        params_meta = meta.get("params")
        if not isinstance(params_meta, dict) or not set(self.param_names) <= set(params_meta):
            fail(what, f"{self.name} encoding needs parameters {self.param_names}")
        params = {key: reader.tensor(ref, f"{what} parameter {key!r}") for key, ref in params_meta.items()}
        for key, value in params.items():
            self.check_param(key, value, shape, what)
        return self.decode_values(meta, reader, what, shape, params, kept)

    def check_param(self, key: str, value: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        """Refuse a parameter that is not float, has the wrong count or holds non-finite values."""
        if not value.is_floating_point():
            fail(what, f"parameter {key!r} must be floating point, found {value.dtype}")
        if key in self.per_filter_params and value.numel() not in (1, shape[0]):
            fail(what, f"parameter {key!r} has {value.numel()} values; expected 1 or {shape[0]} (one per filter)")
        if not torch.isfinite(value.float()).all():
            fail(what, f"parameter {key!r} holds non-finite values")

    def decode_values(self, meta, reader, what, shape, params, kept) -> EncodedWeight:
        """The rest of `decode` once the parameters are read and checked."""
        raise NotImplementedError

    def describe(self, meta: dict) -> str:
        """The encoding column of `deepshrink inspect` for this metadata ('uniform 4b', ...)."""
        return self.name


class CodedEncoding(Encoding):
    """A kind whose codes are integers in `code_range`, stored as `code - low` at `code_width` bits."""

    has_codes = True

    def read_fields(self, meta: dict, what: str) -> dict:
        """The EncodedWeight fields the metadata records beside the codes (checked)."""
        return {"layout": meta.get("layout")}

    def codes_shape(self, params: dict, shape: tuple[int, ...], what: str) -> list[int] | None:
        """The exact shape the codes must have, or None: one code per weight, stored in any shape."""
        return None

    def encode(self, weight, sink, name, float_dtype, kept=None) -> dict:
        meta = super().encode(weight, sink, name, float_dtype, kept)
        low, high = weight.code_range()
        codes = weight.codes.detach().cpu()
        meta["codes_dtype"] = str(codes.dtype).removeprefix("torch.")
        meta["codes_shape"] = list(codes.shape)
        flat = codes.reshape(-1).to(torch.int64).numpy()
        if kept is not None:
            flat = flat[kept]
        if flat.size and (flat.min() < low or flat.max() > high):
            raise UserError(f"{name}: {self.name} codes span {flat.min()}..{flat.max()}, outside {low}..{high}")
        meta["codes"] = sink.stream(flat - low, self.code_width(weight), high - low + 1)
        return meta

    def decode_values(self, meta, reader, what, shape, params, kept) -> EncodedWeight:
        numel = math.prod(shape)
        fields = self.read_fields(meta, what)
        codes_shape = self.codes_shape(params, shape, what)
        try:
            weight = EncodedWeight(self.name, shape, codes=torch.zeros(0), params=params, **fields)
        except (ValueError, KeyError, IndexError) as exc:
            fail(what, str(exc))
        low, high = weight.code_range()
        count = (numel if codes_shape is None else math.prod(codes_shape)) if kept is None else int(kept.sum())
        symbols = reader.stream(meta.get("codes"), what + " codes", count, self.code_width(weight), high - low + 1)
        codes = symbols + low
        if kept is not None:  # pruned positions hold the code nearest 0
            full = np.full(numel, min(max(0, low), high), dtype=np.int64)
            full[kept] = codes
            codes = full
        dtype = meta.get("codes_dtype")
        if dtype not in CODE_DTYPES or meta.get("codes_shape") is None:
            fail(what, f"codes dtype must be one of {CODE_DTYPES}, found {dtype!r}")
        stored_shape = check_shape(meta.get("codes_shape"), what + " codes")
        if math.prod(stored_shape) != codes.size or (codes_shape is not None and list(stored_shape) != codes_shape):
            fail(what, f"codes shape {list(stored_shape)} does not hold {codes.size} codes")
        info = torch.iinfo(getattr(torch, dtype))
        if codes.size and (codes.min() < info.min or codes.max() > info.max):
            fail(what, f"codes do not fit the recorded dtype {dtype}")
        weight.codes = torch.from_numpy(codes).to(getattr(torch, dtype)).reshape(stored_shape)
        return weight

    def describe(self, meta: dict) -> str:
        codec = meta["codes"]["codec"]
        return f"{self.name} {meta['codes']['w']}b" + ("" if codec == "bits" else f" {codec}")


def encode_weight(weight: EncodedWeight, sink, name: str, float_dtype: torch.dtype,
                  kept: np.ndarray | None = None) -> dict:
    """Write `weight` into `sink` through its encoding; returns its metadata (see `Encoding.encode`)."""
    return weight.encoding.encode(weight, sink, name, float_dtype, kept)


def decode_weight(meta, reader, what: str, expected_shape=None, kept: np.ndarray | None = None) -> EncodedWeight:
    """Rebuild an EncodedWeight from its metadata, checking every field (see `Encoding.decode`)."""
    if not isinstance(meta, dict):
        fail(what, "encoding metadata must be an object")
    kind = meta.get("kind")
    if kind not in kinds():
        fail(what, f"unknown encoding {kind!r}; one of {kinds()}")
    shape = check_shape(meta.get("shape"), what)
    if not shape or min(shape) < 1:
        fail(what, f"shape {list(shape)} must have at least one dimension and no empty ones")
    if expected_shape is not None and tuple(expected_shape) != shape:
        fail(what, f"shape {list(shape)} does not match the architecture's {list(expected_shape)}")
    return encoding_named(kind).decode(meta, reader, what, shape, kept)


def describe(meta: dict) -> str:
    """'ternary 2b', 'uniform 4b', 'sparse(pow2 3b, delta index)', ... (b = bits per code)."""
    return encoding_named(meta["kind"]).describe(meta)
