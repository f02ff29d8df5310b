"""Native bit kernels: binary and ternary convolution on packed sign bits, built on first use.

The C++ sources next to this file are compiled once with PyTorch's extension tooling (ninja, the
system C++ compiler) into a cache folder (``$DEEPSHRINK_KERNELS_BUILD``, else
``~/.cache/deepshrink/kernels``); later imports load the cached library. One binary holds three code
paths: ``avx512`` (VPOPCNTDQ), ``avx2`` (vpshufb popcount) and ``portable``. The fastest one this CPU
runs is used unless ``DEEPSHRINK_BITS_PATH`` names another. Without a compiler `native()` returns
None, says why on one stderr line, and the package keeps running compressed layers on the float path.

Bit convention: bit 1 is -1, bit 0 is +1 (a value's IEEE sign bit, so -0.0 packs as -1 like
`deepshrink.quant.primitives.binary_sign`); 64 channels per int64 word, channels-last, zero bits in
the padding of the last word. Narrow layers (`lane_bits`) read pixel lanes instead: one int16/32/64 per
pixel holding all its channels, (N, H, W), the form the whole-network plan runs them in.

Example::

    from deepshrink import kernels
    if kernels.native() is not None:
        bits = kernels.pack_activations(x)              # (N, H, W, ceil(C / 64)) int64
        planes = kernels.pack_weights(codes, groups=1)  # from EncodedWeight 'binary' codes
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

from ..errors import UserError

PATHS = ("avx512", "avx2", "portable")
PATH_ENV = "DEEPSHRINK_BITS_PATH"
_SOURCES = ("bits_paths.cpp", "bits_lanes.cpp", "bits_lane_rows.cpp", "bits_float_rows.cpp", "bits_ops.cpp",
            "bits_lane_ops.cpp", "bits_rows.cpp", "bits_plan.cpp")
_HEADERS = ("bits.h", "bits_lanes.h", "bits_plan.h", "bits_rows512.h")
_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]  # no -march: the SIMD paths carry target attributes

_state: dict = {}


def _build_dir() -> Path:
    root = os.environ.get("DEEPSHRINK_KERNELS_BUILD") or Path.home() / ".cache" / "deepshrink" / "kernels"
    return Path(root)


def build():
    """Compile (or load the cached build of) the extension; raises on failure. `scripts/setup.sh` calls it."""
    from torch.utils import cpp_extension

    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _SOURCES + _HEADERS + tuple(_FLAGS):
        digest.update((here / name).read_bytes() if name.endswith((".cpp", ".h")) else name.encode())
    name = f"deepshrink_bits_{digest.hexdigest()[:12]}"  # a source or flag change is a new library
    folder = _build_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CXX", "c++")
    if not any(folder.glob("*.so")) and shutil.which(compiler) is None:  # a cached build needs no compiler
        raise RuntimeError(f"no C++ compiler ({compiler} not found)")
    return cpp_extension.load(name=name, sources=[str(here / s) for s in _SOURCES], extra_cflags=_FLAGS,
                              extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=False)


def native():
    """The compiled extension, or None (after one line on stderr saying why) when it cannot be built."""
    if "module" not in _state:
        try:
            _state["module"], _state["reason"] = build(), None
        except Exception as exc:  # no compiler, no ninja, no headers: any build failure means the float path
            _state["module"], _state["reason"] = None, f"native bit kernels unavailable ({_summary(exc)})"
            print(f"deepshrink: {_state['reason']}; binary layers run on the float path", file=sys.stderr)
    return _state["module"]


def _summary(exc: Exception) -> str:
    """The compiler's first error line when there is one (a build log's first line is its command)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    errors = [line for line in lines if "error:" in line]
    if errors:
        return errors[0][:200]
    return lines[0][:200] if "Error building extension" not in lines[0] else "the C++ build failed"


def unavailable_reason() -> str | None:
    """None when the extension is loaded; else the one-line reason."""
    native()
    return _state["reason"]


def supported_paths() -> list[str]:
    """The code paths this CPU can run, fastest first ([] without the extension)."""
    module = native()
    return list(module.supported_paths()) if module is not None else []


def resolve_path(path: str | None = None) -> str:
    """The path to run: `path` if given, else $DEEPSHRINK_BITS_PATH, else the fastest this CPU supports.

    Raises UserError naming the choices for an unknown path, or one this CPU cannot run.
    """
    chosen = path or os.environ.get(PATH_ENV) or None
    supported = supported_paths()
    if not supported:
        raise UserError(unavailable_reason() or "native bit kernels unavailable")
    if chosen is None:
        return supported[0]
    source = "" if path else f" (from ${PATH_ENV})"
    if chosen not in PATHS:
        raise UserError(f"unknown bit-kernel path {chosen!r}{source}; one of {', '.join(PATHS)}")
    if chosen not in supported:
        raise UserError(f"this CPU cannot run the {chosen} bit-kernel path{source}; it supports "
                        f"{', '.join(supported)}")
    return chosen


def active_path() -> str | None:
    """The path kernels run on now (honouring $DEEPSHRINK_BITS_PATH), or None without the extension."""
    return resolve_path() if native() is not None else None


def pack_activations(x: torch.Tensor, groups: int = 1, scale: torch.Tensor | None = None,
                     shift: torch.Tensor | None = None, path: str | None = None) -> torch.Tensor:
    """Sign bits of `x * scale + shift` (per channel; identity when None) as (N, H, W, groups * words).

    x is (N, C, H, W) (any memory format) or (N, C) (packed as a 1x1 image); each group of C / groups
    channels starts a new word, words = ceil(C / groups / 64).
    """
    return native().pack_activations(x, groups, scale, shift, resolve_path(path))


def pack_weights(codes: torch.Tensor, groups: int = 1, ternary: bool = False) -> tuple[torch.Tensor, ...]:
    """Bit planes of integer weight codes (O, C/groups, KH, KW) or (O, C/groups).

    Binary codes {0, 1} (1 = +1, as in EncodedWeight 'binary') give (sign, empty, empty); ternary codes
    {-1, 0, 1} give (sign, nonzero mask, non-zero count per (output channel, tap)).
    """
    return tuple(native().pack_weights(codes, groups, ternary))


def lane_bits(shape: list[int], ternary: bool = False, path: str | None = None) -> int:
    """The pixel-lane width (16, 32 or 64 bits) in which the engine runs a binary convolution of `shape`
    (C, O, KH, KW, SH, SW, PH, PW, DH, DW, G) on `path`, or 0 when it runs on 64-channel words.

    Lanes only on the avx512 path, for binary weights, one group, stride 1, at most 64 input channels and
    64 taps: elsewhere their popcounts are scalar, slower than the word kernel's vectors.
    """
    in_ch, _, kh, kw, sh, sw, *_, groups = shape
    if resolve_path(path) != "avx512" or ternary or groups != 1 or (sh, sw) != (1, 1) or in_ch > 64 or kh * kw > 64:
        return 0
    return 16 if in_ch <= 16 else 32 if in_ch <= 32 else 64


def pack_lanes(x: torch.Tensor, lane: int, scale: torch.Tensor | None = None,
               shift: torch.Tensor | None = None) -> torch.Tensor:
    """Sign bits of `x * scale + shift` (per channel; identity when None) as pixel lanes (N, H, W) of int16,
    int32 or int64 (`lane` 16, 32 or 64 bits, at least the channels): bit c of a pixel is channel c.

    x is (N, C, H, W) (any memory format; read as contiguous (N, C, H, W), the plan's layout).
    """
    return native().pack_lanes(x, lane, scale, shift)


def pack_lane_weights(codes: torch.Tensor, lane: int) -> torch.Tensor:
    """Binary codes {0, 1} (O, C, KH, KW) as the lane kernel's weights: (O, KH * KW), one lane of `lane` bits
    per tap, bit c for input channel c (1 for -1, as the activations)."""
    in_ch, out_ch, (kh, kw) = codes.shape[1], codes.shape[0], codes.shape[2:]
    return native().lane_weights(pack_weights(codes)[0], [in_ch, out_ch, kh, kw, 1, 1, 0, 0, 1, 1, 1], lane)
