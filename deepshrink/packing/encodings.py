"""EncodedWeight <-> (metadata, payload): every encoding kind written at its real bit width.

Per kind, the codes (minus the low end of `EncodedWeight.code_range`) are stored at:
binary 1 bit; ternary 2 bits (or base-3, 1.6 bits, with ``ternary_base3``); uniform `bits`;
pow2 ceil(log2 levels); pq ceil(log2 K) with an fp16 codebook (fp32 where fp16 would change it, so
the loaded model equals the packed one); float values in the chosen float dtype; sparse = the
kept positions (`bits.encode_positions`) + the inner encoding's codes at kept positions only
(all codes for an inner pq, whose codes are per block, not per weight).

`decode_weight` checks every field (kind, shape, bits, levels, layout, parameter shapes, code range)
and raises `PackFormatError` naming the tensor and the problem.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import PackFormatError, UserError
from ..nn.encoded import KINDS, EncodedWeight
from .bits import decode_positions, encode_positions
from .payload import DTYPES, PayloadReader, PayloadWriter, _fail, _int, check_shape

FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REQUIRED_PARAMS = {"binary": ("scale",), "ternary": ("pos_scale", "neg_scale"), "uniform": ("scale", "zero_point"),
                   "pow2": ("alpha",), "pq": ("codebook",), "float": ("values",), "sparse": ()}
CODE_DTYPES = ("uint8", "int8", "int16", "int32", "int64")


def code_width(kind: str, bits: int | None) -> int:
    """Bits per stored code for a kind (binary 1, ternary 2, others their `bits`)."""
    return {"binary": 1, "ternary": 2}.get(kind, bits)


def _store_param(name: str, value: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
    value = value.detach().cpu()
    if name == "values" and value.is_floating_point():
        return value.to(float_dtype)
    if name == "codebook" and value.is_floating_point():
        as_half = value.to(torch.float16)
        if float_dtype != torch.float32 or torch.equal(as_half.to(value.dtype), value):
            return as_half
    return value


def encode_weight(weight: EncodedWeight, writer: PayloadWriter, name: str, float_dtype: torch.dtype,
                  kept: np.ndarray | None = None) -> dict:
    """Write `weight` into `writer`; returns its metadata. `kept`: flat bool mask (inner of sparse)."""
    meta = {"kind": weight.kind, "shape": list(weight.shape)}
    if weight.kind == "sparse":
        if weight.inner.kind == "sparse":
            raise UserError(f"{name}: a sparse encoding inside a sparse encoding cannot be packed")
        mask = weight.mask.detach().cpu().reshape(-1).numpy() != 0
        method, width, symbols = encode_positions(mask)
        meta.update(index=method, mask=writer.stream(symbols, width, 2 if method == "bitmap" else 1 << width))
        meta["inner"] = encode_weight(weight.inner, writer, name, float_dtype,
                                      None if weight.inner.kind == "pq" else mask)
        return meta
    for key in ("bits", "levels", "layout"):
        if getattr(weight, key) is not None:
            meta[key] = getattr(weight, key)
    params = {}
    for key, value in weight.params.items():
        if key == "values" and kept is not None:
            value = value.reshape(-1)[torch.from_numpy(kept)]
        params[key] = writer.tensor(_store_param(key, value, float_dtype))
    meta["params"] = params
    if weight.kind != "float":
        low, high = weight.code_range()
        codes = weight.codes.detach().cpu()
        meta["codes_dtype"] = str(codes.dtype).removeprefix("torch.")
        meta["codes_shape"] = list(codes.shape)
        flat = codes.reshape(-1).to(torch.int64).numpy()
        if kept is not None:
            flat = flat[kept]
        if flat.size and (flat.min() < low or flat.max() > high):
            raise UserError(f"{name}: {weight.kind} codes span {flat.min()}..{flat.max()}, outside {low}..{high}")
        meta["codes"] = writer.stream(flat - low, code_width(weight.kind, weight.bits), high - low + 1)
    return meta


def _check_param(kind: str, key: str, value: torch.Tensor, shape, what: str) -> None:
    if not value.is_floating_point():
        _fail(what, f"parameter {key!r} must be floating point, found {value.dtype}")
    if key in ("scale", "zero_point", "alpha", "pos_scale", "neg_scale") and value.numel() not in (1, shape[0]):
        _fail(what, f"parameter {key!r} has {value.numel()} values; expected 1 or {shape[0]} (one per filter)")
    if not torch.isfinite(value.float()).all():
        _fail(what, f"parameter {key!r} holds non-finite values")


def _pq_codes_shape(params, shape, what) -> tuple[int, int]:
    codebook = params["codebook"]
    if codebook.dim() != 3 or min(codebook.shape) < 1:
        _fail(what, f"pq codebook must be (subspaces, K, block size), found {tuple(codebook.shape)}")
    n_sub, _, block = codebook.shape
    out = shape[0]
    per_row = math.prod(shape) // max(out, 1)
    if out < 1 or per_row % block or (per_row // block) % n_sub:
        _fail(what, f"pq codebook {tuple(codebook.shape)} does not tile a weight of shape {list(shape)}")
    return out, per_row // block


def decode_weight(meta, reader: PayloadReader, what: str, expected_shape=None,
                  kept: np.ndarray | None = None) -> EncodedWeight:
    """Rebuild an EncodedWeight from its metadata, checking every field."""
    if not isinstance(meta, dict):
        _fail(what, "encoding metadata must be an object")
    kind = meta.get("kind")
    if kind not in KINDS:
        _fail(what, f"unknown encoding {kind!r}; one of {KINDS}")
    shape = check_shape(meta.get("shape"), what)
    if not shape or min(shape) < 1:
        _fail(what, f"shape {list(shape)} must have at least one dimension and no empty ones")
    if expected_shape is not None and tuple(expected_shape) != shape:
        _fail(what, f"shape {list(shape)} does not match the architecture's {list(expected_shape)}")
    numel = math.prod(shape)
    if kind == "sparse":
        index, ref = meta.get("index"), meta.get("mask")
        if not isinstance(ref, dict) or index not in ("bitmap", "delta"):
            _fail(what, f"sparse index must be 'bitmap' or 'delta' with a stream, found {index!r}")
        if index == "bitmap":
            width, count, alphabet = 1, numel, 2
        else:
            width = _int(ref.get("w"), what + " index width", 2, 24)
            count, alphabet = _int(ref.get("count"), what + " index count", 0, 2 * numel), 1 << width
        symbols = reader.stream(ref, what + " (sparse index)", count, width, alphabet)
        try:
            mask = decode_positions(index, width, symbols, numel)
        except ValueError as exc:
            _fail(what, f"sparse index: {exc}")
        inner_meta = meta.get("inner")
        inner_kind = inner_meta.get("kind") if isinstance(inner_meta, dict) else None
        if inner_kind == "sparse":
            _fail(what, "a sparse encoding cannot nest another sparse encoding")
        inner = decode_weight(inner_meta, reader, what, shape, None if inner_kind == "pq" else mask)
        return EncodedWeight("sparse", shape, mask=torch.from_numpy(mask).reshape(shape), inner=inner)
    params_meta = meta.get("params")
    if not isinstance(params_meta, dict) or not set(REQUIRED_PARAMS[kind]) <= set(params_meta):
        _fail(what, f"{kind} encoding needs parameters {REQUIRED_PARAMS[kind]}")
    params = {key: reader.tensor(ref, f"{what} parameter {key!r}") for key, ref in params_meta.items()}
    for key, value in params.items():
        _check_param(kind, key, value, shape, what)
    if kind == "float":
        values = params["values"].reshape(-1)
        if values.numel() != (numel if kept is None else int(kept.sum())):
            _fail(what, f"holds {values.numel()} float values for {numel if kept is None else int(kept.sum())} weights")
        if kept is not None:
            full = torch.zeros(numel, dtype=values.dtype)
            full[torch.from_numpy(kept)] = values
            values = full
        return EncodedWeight("float", shape, params={"values": values.reshape(shape)})
    bits = levels = None
    layout = meta.get("layout")
    if kind == "uniform":
        bits = _int(meta.get("bits"), what + " bits", 1, 16)
    if kind == "pow2":
        levels = _int(meta.get("levels"), what + " levels", 3, (1 << 16) - 1)
        if levels % 2 == 0:
            _fail(what, f"pow2 levels must be odd, found {levels}")
    codes_shape = [numel]
    if kind == "pq":
        if layout not in ("row", "channel"):
            _fail(what, f"pq layout must be 'row' or 'channel', found {layout!r}")
        codes_shape = list(_pq_codes_shape(params, shape, what))
    try:
        weight = EncodedWeight(kind, shape, codes=torch.zeros(0), params=params, bits=bits, levels=levels,
                               layout=layout)
    except (ValueError, KeyError, IndexError) as exc:
        _fail(what, str(exc))
    low, high = weight.code_range()
    count = math.prod(codes_shape) if kept is None else int(kept.sum())
    symbols = reader.stream(meta.get("codes"), what + " codes", count, code_width(kind, weight.bits), high - low + 1)
    codes = symbols + low
    if kept is not None:
        full = np.full(numel, min(max(0, low), high), dtype=np.int64)
        full[kept] = codes
        codes = full
    dtype = meta.get("codes_dtype")
    if dtype not in CODE_DTYPES or meta.get("codes_shape") is None:
        _fail(what, f"codes dtype must be one of {CODE_DTYPES}, found {dtype!r}")
    stored_shape = check_shape(meta.get("codes_shape"), what + " codes")
    if math.prod(stored_shape) != codes.size or (kind == "pq" and list(stored_shape) != codes_shape):
        _fail(what, f"codes shape {list(stored_shape)} does not hold {codes.size} codes")
    info = torch.iinfo(DTYPES[dtype])
    if codes.size and (codes.min() < info.min or codes.max() > info.max):
        _fail(what, f"codes do not fit the recorded dtype {dtype}")
    weight.codes = torch.from_numpy(codes).to(DTYPES[dtype]).reshape(stored_shape)
    return weight
